/**
 * `kms serve --workers N`: N worker processes on one port, each a node of the one database, so
 * they behave as one KMS exactly as several `kms serve` processes do (shared-database.test.ts). On
 * SQLite and on PostgreSQL: with --workers 2 the node-kms@0.4.1 flow passes, requests land on both
 * workers (the audit records name two nodes, the two of the nodes table), "listening on" is
 * printed once; SIGHUP reaches every worker (a log level change applies, none stops); a worker
 * SIGKILLed is replaced and the KMS serves on; SIGTERM exits 0 and leaves no process behind.
 * Without a backend of its own: bad counts are refused with one line (exit 2), `auto` is taken,
 * SIGINT stops it, without --config the primary makes ./.kms once, SIGHUP gives every worker the
 * new TLS certificate, a worker that cannot start fails the command with its one line, and a crash
 * loop ends it with exit 1.
 *
 * PostgreSQL: 127.0.0.1:5432, database `test` (KMS_TEST_POSTGRES_URL overrides it), a fresh schema
 * per run, dropped afterwards; skipped without a server, except under CI=true.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { nodeKmsFlow, nodeKmsSession } from '../support/node-kms.js';
import { oneClearLine, runKms, serve, servedCertificate, type Served } from '../support/cli.js';
import { onEachBackend, within } from '../support/nodes.js';

const TEST = { timeout: 120_000 };
const RELOADED = /SIGHUP: reloaded kms\.json/;
const REQUEST = /"msg":"request"/;

/** The worker processes of a `kms serve --workers` (the primary's children). */
function workerPids(primary: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=', '--ppid', String(primary)], { encoding: 'utf8' })
      .split('\n')
      .map((l) => Number(l.trim()))
      .filter((n) => n > 0)
      .sort((a, b) => a - b);
  } catch {
    return []; // ps exits 1 when there is none
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const logLines = (server: Served, pattern: RegExp) =>
  server.stdout
    .join('')
    .split('\n')
    .filter((l) => pattern.test(l))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

/** A KMS folder for a.example (the node-kms flow's users). */
function kmsFolder(prefix: string): { dir: string; config: string; token: (user: string) => string } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const init = runKms(['init', '--dir', dir, '--authority', 'kms.a.example', '--domain', 'a.example']);
  assert.equal(init.code, 0, init.stderr);
  const config = join(dir, 'kms.json');
  const token = (user: string) => {
    const r = runKms(['token', '--config', config, '--user', user]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  };
  return { dir, config, token };
}

/** Several node-kms users at once, on connections of their own: the cluster deals them to the workers. */
async function concurrentPings(url: string, token: (user: string) => string, users = 8): Promise<void> {
  const bearer = token('alice@a.example');
  await Promise.all(
    Array.from({ length: users }, async (_, i) => {
      const s = await nodeKmsSession(url, bearer, `w-${i}`);
      for (let j = 0; j < 3; j++) assert.equal((await s.call({ method: 'update', uri: '/ping' })).status, 200);
    }),
  );
}

onEachBackend('kms serve --workers', (backend) => {
  describe(`kms serve --workers 2 on ${backend.name}`, () => {
    let folder: ReturnType<typeof kmsFolder>;
    before(() => (folder = kmsFolder('kms-workers-')));
    after(() => rmSync(folder.dir, { recursive: true, force: true }));

    test('the node-kms flow passes, requests land on both workers, a SIGKILLed worker is replaced, SIGTERM leaves nothing behind', TEST, async () => {
      const server = await serve(['--config', folder.config, '--port', '0', '--workers', '2', ...backend.dbArgs]);
      const seen = new Set<number>();
      let killed = 0;
      try {
        assert.equal(server.stderr.join('').match(/listening on/g)?.length, 1, `one listening line: ${server.stderr.join('')}`);
        assert.match(server.url, /^http:\/\/127\.0\.0\.1:[1-9]\d*$/, 'the real port, not 0');
        // --port 0: every worker got the one socket cluster bound, so they all listen where the KMS says.
        assert.deepEqual(logLines(server, /"msg":"KMS listening"/).map((l) => l.url), [server.url, server.url]);
        const pids = workerPids(server.pid);
        pids.forEach((p) => seen.add(p));
        assert.equal(pids.length, 2, `two workers: ${pids.join(', ')}`);
        // Each worker is its own node of the database.
        const nodes = await backend.sql<{ id: string; pid: number }>(folder.dir, 'SELECT id, pid FROM nodes ORDER BY pid');
        assert.deepEqual(nodes.map((n) => Number(n.pid)), pids);
        assert.equal(new Set(nodes.map((n) => n.id)).size, 2);

        await nodeKmsFlow(server.url, folder.token);
        await concurrentPings(server.url, folder.token);
        const writers = await backend.sql<{ node: string }>(folder.dir, 'SELECT DISTINCT node FROM audit WHERE node IS NOT NULL ORDER BY node');
        assert.deepEqual(
          writers.map((w) => w.node),
          nodes.map((n) => n.id).sort(),
          'the audit records name both workers',
        );

        // One worker dies: another takes its place on the same port, and the KMS serves on.
        killed = pids[0]!;
        process.kill(killed, 'SIGKILL');
        await within(60_000, 'a worker replaces the killed one', async () => {
          const now = workerPids(server.pid);
          return now.length === 2 && !now.includes(killed) && logLines(server, /"msg":"worker serving"/).length === 1;
        });
        workerPids(server.pid).forEach((p) => seen.add(p));
        assert.equal(logLines(server, /"msg":"worker exited unexpectedly"/)[0]?.signal, 'SIGKILL');
        await nodeKmsFlow(server.url, folder.token);
        await concurrentPings(server.url, folder.token);
      } finally {
        assert.equal(await server.stop(), 0, 'SIGTERM: every worker drained and closed');
      }
      assert.equal(seen.size, 3);
      assert.deepEqual([...seen].filter(alive), [], 'no worker left behind');
      // A worker that stops removes its row; the killed one's stays until it is forgotten.
      const left = await backend.sql<{ pid: number }>(folder.dir, 'SELECT pid FROM nodes');
      assert.deepEqual(left.map((n) => Number(n.pid)), [killed]);
    });

    test('SIGHUP: every worker takes the new log level, and none stops', TEST, async () => {
      const original = readFileSync(folder.config, 'utf8');
      const server = await serve(['--config', folder.config, '--port', '0', '--workers', '2', ...backend.dbArgs]);
      try {
        const pids = workerPids(server.pid);
        assert.equal(pids.length, 2);
        await concurrentPings(server.url, folder.token);
        assert.ok(logLines(server, REQUEST).length > 0, 'at info, requests are logged');

        writeFileSync(folder.config, JSON.stringify({ ...JSON.parse(original), log: { level: 'warn' } }, null, 2));
        server.signal('SIGHUP');
        await within(30_000, 'both workers reload', async () => logLines(server, RELOADED).length === 2);
        const reloads = logLines(server, RELOADED);
        assert.deepEqual(reloads.map((l) => l.logLevel), ['warn', 'warn']);
        assert.deepEqual(reloads.map((l) => Number(l.pid)).sort((a, b) => a - b), pids, 'each worker, named in its lines, reloaded once');
        const requests = logLines(server, REQUEST).length;
        await concurrentPings(server.url, folder.token);
        assert.equal(logLines(server, REQUEST).length, requests, 'at warn, no worker logs requests');
        assert.deepEqual(workerPids(server.pid), pids, 'the same workers serve on');
      } finally {
        writeFileSync(folder.config, original);
        assert.equal(await server.stop(), 0);
      }
    });
  });
});

describe('kms serve --workers: counts, start failures, signals', () => {
  let folder: ReturnType<typeof kmsFolder>;
  before(() => (folder = kmsFolder('kms-workers-cli-')));
  after(() => rmSync(folder.dir, { recursive: true, force: true }));

  test('a count that is not 1 to 256 or auto is refused with one line, exit 2', TEST, () => {
    for (const bad of ['0', '-1', 'abc', '100000', '1.5', '257']) {
      const r = runKms(['serve', '--config', folder.config, '--port', '0', '--workers', bad]);
      assert.equal(r.code, 2, `--workers ${bad}: ${r.stderr}`);
      oneClearLine(r.stderr);
      assert.match(r.stderr, new RegExp(`--workers must be auto or a whole number from 1 to 256, got ${bad.replace('.', '\\.')}\n`));
    }
    const env = runKms(['serve', '--config', folder.config, '--port', '0'], { KMS_WORKERS: 'many' });
    assert.equal(env.code, 2, env.stderr);
    oneClearLine(env.stderr);
    assert.match(env.stderr, /got many/);
  });

  test('auto: one worker per core; SIGINT stops them all, exit 0', TEST, async () => {
    const server = await serve(['--config', folder.config, '--port', '0', '--workers', 'auto']);
    const pids = workerPids(server.pid);
    const cores = availableParallelism();
    // One core: one worker, which is this process serving (no cluster).
    assert.equal(pids.length, cores > 1 ? cores : 0);
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
    const exited = server.stop;
    server.signal('SIGINT');
    assert.equal(await exited(), 0);
    assert.deepEqual(pids.filter(alive), []);
  });

  test('without --config, the primary makes ./.kms once, before the workers start', TEST, async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'kms-workers-fresh-'));
    try {
      const server = await serve(['--port', '0', '--workers', '2'], {}, { cwd });
      try {
        const stderr = server.stderr.join('');
        assert.equal(stderr.match(/no \.kms\/kms\.json yet: creating a development KMS/g)?.length, 1, stderr);
        assert.equal(stderr.match(/listening on/g)?.length, 1, stderr);
        assert.equal(stderr.match(/get a development token: TOKEN=\$\(npx kms token --config \.kms\/kms\.json --user alice@localhost\)\n/g)?.length, 1, stderr);
        assert.equal(workerPids(server.pid).length, 2);
        assert.equal((await fetch(`${server.url}/readyz`)).status, 200);
      } finally {
        assert.equal(await server.stop(), 0);
      }
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  });

  test('SIGHUP: every worker takes the new TLS certificate for new connections', TEST, async () => {
    const tls = kmsFolder('kms-workers-tls-');
    try {
      for (const name of ['one', 'two']) {
        execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '2', '-keyout', join(tls.dir, `${name}.key`), '-out', join(tls.dir, `${name}.crt`)], { stdio: 'ignore' });
      }
      const use = (name: string) => {
        writeFileSync(join(tls.dir, 'tls.crt'), readFileSync(join(tls.dir, `${name}.crt`)));
        writeFileSync(join(tls.dir, 'tls.key'), readFileSync(join(tls.dir, `${name}.key`)));
        return new X509Certificate(readFileSync(join(tls.dir, `${name}.crt`))).fingerprint256;
      };
      const one = use('one');
      writeFileSync(tls.config, JSON.stringify({ ...JSON.parse(readFileSync(tls.config, 'utf8')), tls: { cert: 'tls.crt', key: 'tls.key' } }, null, 2));
      const server = await serve(['--config', tls.config, '--port', '0', '--workers', '2']);
      try {
        assert.match(server.url, /^https:/);
        // Connections are dealt to the workers in turn: six new ones meet both.
        const certificates = async () => Promise.all(Array.from({ length: 6 }, () => servedCertificate(server.url)));
        assert.deepEqual(new Set(await certificates()), new Set([one]));
        const two = use('two');
        server.signal('SIGHUP');
        await within(30_000, 'both workers reload', async () => logLines(server, RELOADED).length === 2);
        assert.deepEqual(logLines(server, RELOADED).map((l) => l.applied), [['peers', 'tls', 'log.level'], ['peers', 'tls', 'log.level']]);
        assert.deepEqual(new Set(await certificates()), new Set([two]));
      } finally {
        assert.equal(await server.stop(), 0);
      }
    } finally {
      rmSync(tls.dir, { recursive: true, force: true });
    }
  });

  test('a worker that cannot start fails the command with its one line', TEST, async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      const inUse = runKms(['serve', '--config', folder.config, '--port', String(port), '--workers', '2']);
      assert.equal(inUse.code, 1, inUse.stderr);
      oneClearLine(inUse.stderr);
      assert.match(inUse.stderr, new RegExp(`^kms: port ${port} on 127\\.0\\.0\\.1 is in use\n$`));
    } finally {
      blocker.close();
    }
    const unreachable = runKms(['serve', '--config', folder.config, '--port', '0', '--workers', '2', '--db', 'postgres://kms@127.0.0.1:1/kms']);
    assert.equal(unreachable.code, 1, unreachable.stderr);
    oneClearLine(unreachable.stderr);
    assert.match(unreachable.stderr, /^kms: cannot reach PostgreSQL at 127\.0\.0\.1:1: /);
  });

  test('workers that keep dying end the command: one line, exit 1, nothing left behind', TEST, async () => {
    const server = await serve(['--config', folder.config, '--port', '0', '--workers', '2']);
    const killed = new Set<number>();
    const exited = server.stop; // SIGTERM once it is over, or its exit code if it already ended
    const over = new Promise<void>((resolve) => {
      const kill = setInterval(() => {
        if (!alive(server.pid)) {
          clearInterval(kill);
          return resolve();
        }
        for (const pid of workerPids(server.pid)) {
          killed.add(pid);
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone already
          }
        }
      }, 100);
    });
    await over;
    assert.equal(await exited(), 1);
    // 2 workers × 3 deaths per minute are tolerated; the 7th ends it.
    assert.ok(killed.size >= 7, `killed ${killed.size}`);
    const lines = server.stderr.join('').trim().split('\n');
    assert.match(lines.at(-1)!, /^kms: \d+ workers died within 60 s \(the last: SIGKILL\); stopping the KMS$/);
    assert.equal(lines.filter((l) => l.startsWith('kms:')).length, 1, lines.join('\n'));
    assert.deepEqual([...killed].filter(alive), []);
  });
});
