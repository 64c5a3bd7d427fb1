/**
 * One storage deadline per request (store/deadline.ts): a request whose storage stops answering
 * gets its 503 after about one `storage.timeoutSeconds`, not one per storage call — before, its
 * operation's call and then its audit write each waited the whole deadline (2×).
 *
 * `kms serve` on the shared PostgreSQL (a fresh schema) through a TCP relay this test plays: the
 * relay can freeze (hold every byte both ways, as a stalled network or database does) and thaw.
 * Timing assertions are loose on purpose (the machine is shared): the median of three frozen
 * requests must stay clearly below two deadlines; the measured times are reported.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, describe, test } from 'node:test';
import pg from 'pg';
import { KmsClient, KmsError } from '@openkms/client';
import { postgresProblem, TEST_POSTGRES_URL } from '@openkms/server/testing';
import { runKms, serve, type Served } from '../support/cli.js';

const AUTHORITY = 'kms.deadline.example';
const DEADLINE_S = 3;

/** A TCP relay to `target` that can hold all traffic (frozen) and let it go again (thawed). */
class Relay {
  private frozen = false;
  private readonly held: (() => void)[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly server: Server;
  port = 0;

  constructor(target: { host: string; port: number }) {
    this.server = createServer((client) => {
      const upstream = connect(target.port, target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {});
      }
      const pass = (from: Socket, to: Socket) =>
        from.on('data', (chunk) => {
          if (this.frozen) this.held.push(() => to.write(chunk));
          else to.write(chunk);
        });
      pass(client, upstream);
      pass(upstream, client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as { port: number }).port;
  }

  freeze(): void {
    this.frozen = true;
  }

  thaw(): void {
    this.frozen = false;
    for (const release of this.held.splice(0)) release();
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

const problem = await postgresProblem(TEST_POSTGRES_URL);
if (problem !== undefined) {
  if (process.env.CI === 'true') test('one deadline per request', () => assert.fail(`${problem} (required under CI=true)`));
  else test('one deadline per request', { skip: `skipped: ${problem}` }, () => {});
} else {
  describe('one deadline per request (storage frozen behind a relay)', () => {
    const schema = `kms_deadline_${randomBytes(6).toString('hex')}`;
    const dir = mkdtempSync(join(tmpdir(), 'kms-deadline-'));
    let relay: Relay | undefined;
    let server: Served | undefined;
    let client: KmsClient | undefined;

    after(async () => {
      relay?.thaw();
      await client?.close().catch(() => {});
      await server?.stop();
      await relay?.close();
      rmSync(dir, { recursive: true, force: true });
      const c = new pg.Client({ connectionString: TEST_POSTGRES_URL });
      await c.connect();
      await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await c.end();
    });

    test(`a request whose storage freezes is a 503 after about one deadline (${DEADLINE_S} s), not two`, { timeout: 120_000 }, async (t) => {
      const init = runKms(['init', '--dir', dir, '--authority', AUTHORITY, '--domain', 'deadline.example']);
      assert.equal(init.code, 0, init.stderr);
      const configPath = join(dir, 'kms.json');
      const config = JSON.parse(readFileSync(configPath, 'utf8')) as { storage?: Record<string, unknown> };
      config.storage = { ...config.storage, timeoutSeconds: DEADLINE_S };
      writeFileSync(configPath, JSON.stringify(config, null, 2));

      const target = new URL(TEST_POSTGRES_URL);
      relay = new Relay({ host: target.hostname, port: Number(target.port || 5432) });
      await relay.listen();
      const relayed = new URL(TEST_POSTGRES_URL);
      relayed.host = `127.0.0.1:${relay.port}`;
      relayed.searchParams.set('schema', schema);
      server = await serve(['--config', configPath, '--port', '0', '--db', relayed.toString()]);
      const token = runKms(['token', '--config', configPath, '--user', 'alice@deadline.example']);
      assert.equal(token.code, 0, token.stderr);
      client = new KmsClient({ url: server.url, authority: AUTHORITY, token: token.stdout.trim(), trustAnchors: [readFileSync(join(dir, 'ca.pem'), 'utf8')] });
      await client.createKeys(1); // the channel, and every connection of the pool warm

      const times: number[] = [];
      relay.freeze();
      try {
        for (let i = 0; i < 3; i++) {
          const started = performance.now();
          const err = await client.createKeys(1).then(
            () => undefined,
            (e: unknown) => e,
          );
          const ms = performance.now() - started;
          times.push(ms);
          assert.ok(err instanceof KmsError && err.code === 'STORAGE_UNAVAILABLE', `frozen: expected a 503, got ${String(err)}`);
        }
      } finally {
        relay.thaw();
      }
      const median = [...times].sort((a, b) => a - b)[1]!;
      t.diagnostic(`503 after ${times.map((ms) => Math.round(ms)).join(', ')} ms (deadline ${DEADLINE_S * 1000} ms; two deadlines would be ${2 * DEADLINE_S * 1000})`);
      assert.ok(median >= DEADLINE_S * 1000 * 0.9, `not before the deadline: median ${Math.round(median)} ms`);
      assert.ok(median < DEADLINE_S * 1000 * 1.6, `about one deadline, not two: median ${Math.round(median)} ms`);

      // Thawed: served again by itself.
      const started = performance.now();
      for (;;) {
        try {
          await client.createKeys(1);
          break;
        } catch (err) {
          assert.ok(err instanceof KmsError && err.code === 'STORAGE_UNAVAILABLE', String(err));
          assert.ok(performance.now() - started < 30_000, 'served again within 30 s of the thaw');
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    });
  });
}
