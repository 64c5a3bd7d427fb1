/**
 * Of several `kms serve` processes on one database, one leads the background work (the sweeper,
 * the delivery of the push outbox), on SQLite (a lease row) and on PostgreSQL (a session advisory
 * lock): exactly one leads; SIGKILL it and the other takes over (PostgreSQL: as soon as the killed
 * session ends; SQLite: once the lease expires, LEADER_LEASE_MS); an outbox row the killed leader
 * left (a push waiting for its retry) is delivered by the survivor to a real peer KMS, B, which
 * records the invalidation. Both processes record themselves in the nodes table.
 *
 * Both backends through test/support/nodes.ts (PostgreSQL: a fresh schema, skipped without a
 * server except under CI=true).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, describe, test } from 'node:test';
import { startDevKms, type DevKms } from '@openkms/server/testing';
import { runKms, serve, type Served } from '../support/cli.js';
import { onEachBackend, type Backend } from '../support/nodes.js';
import { audit, caPem, peerEntry, waitFor } from '../support/federation.js';

const A_AUTH = 'kms.elected.example';
const B_AUTH = 'kms.b.example';
const TEST = { timeout: 120_000 };
const LEADS = 'this node leads the background work';

/** The node id in the log line where a process says it leads, if it did. */
function ledAs(node: Served): string | undefined {
  for (const line of node.stdout.join('').split('\n')) {
    if (line.includes(LEADS)) return (JSON.parse(line) as { node: string }).node;
  }
  return undefined;
}

async function waitUntil(cond: () => Promise<boolean>, what: string, ms: number): Promise<number> {
  const started = performance.now();
  while (!(await cond())) {
    if (performance.now() - started > ms) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return performance.now() - started;
}

function elected(backend: Backend): void {
  describe(`one elected node among two kms serve processes on one ${backend.name} database`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'kms-elected-'));
    const config = join(dir, 'kms.json');
    after(() => rmSync(dir, { recursive: true, force: true }));

    test('exactly one leads; SIGKILLed, the other takes over and delivers the push it left in the outbox to the peer', TEST, async (t) => {
      const { dbArgs } = backend;
      const query = <T>(sql: string, params?: unknown[]) => backend.sql<T>(dir, sql, params);
      const init = runKms(['init', '--dir', dir, '--authority', A_AUTH, '--domain', 'elected.example']);
      assert.equal(init.code, 0, init.stderr);
      // B, a real peer (in this process), that accepts A's invalidations.
      const caA = readFileSync(join(dir, 'ca.pem'), 'utf8');
      const b: DevKms = await startDevKms({ authority: B_AUTH, domains: ['b.example'], config: { peers: [peerEntry(A_AUTH, 'elected.example', 'http://127.0.0.1:9', caA)] } });
      const nodes: Served[] = [];
      try {
        const json = JSON.parse(readFileSync(config, 'utf8')) as Record<string, unknown>;
        writeFileSync(config, JSON.stringify({ ...json, peers: [peerEntry(B_AUTH, 'b.example', b.url, await caPem(B_AUTH, 'b.example'))] }));
        nodes.push(await serve(['--config', config, '--port', '0', ...dbArgs]));
        nodes.push(await serve(['--config', config, '--port', '0', ...dbArgs]));

        // Exactly one leads, and says so; both record themselves, the leader marked.
        await waitFor(() => nodes.some((n) => ledAs(n) !== undefined), 'a leader', 10_000);
        await new Promise((r) => setTimeout(r, 1500)); // a few claims more: the other must still not lead
        const leaders = nodes.filter((n) => ledAs(n) !== undefined);
        assert.equal(leaders.length, 1, 'exactly one node leads');
        const [leader, survivor] = ledAs(nodes[0]!) ? [nodes[0]!, nodes[1]!] : [nodes[1]!, nodes[0]!];
        await waitUntil(async () => (await query<{ id: string }>('SELECT id FROM nodes')).length === 2, 'both nodes in the nodes table', 10_000);
        await waitUntil(
          async () => (await query<{ id: string; is_leader: number }>('SELECT id, is_leader FROM nodes')).filter((r) => Number(r.is_leader) === 1).map((r) => r.id).join() === ledAs(leader),
          'the nodes table naming the leader',
          10_000,
        );

        const leaderGauge = async (n: Served) => /^kms_leader (\d)$/m.exec(await (await fetch(`${n.url}/metrics`)).text())?.[1];
        assert.deepEqual([await leaderGauge(leader), await leaderGauge(survivor)], ['1', '0'], 'kms_leader in /metrics');

        // A push waiting for its retry, as the leader leaves it after a failed first attempt; the
        // leader is killed before it is due.
        const resourceUri = `kms://${A_AUTH}/resources/${randomUUID()}`;
        const row = [randomUUID(), Date.now(), JSON.stringify([resourceUri.split('/').pop()]), '[]', JSON.stringify({ [B_AUTH]: [resourceUri] }), 1, Date.now() + 300];
        await query('INSERT INTO push_outbox (id, created_at, resource_ids, user_ids, targets, attempts, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7)', row);
        const killedAt = performance.now();
        leader.signal('SIGKILL');

        await waitFor(() => ledAs(survivor) !== undefined, 'the survivor to lead', 20_000);
        t.diagnostic(`${backend.name}: the survivor led ${Math.round(performance.now() - killedAt)} ms after the leader was SIGKILLed`);
        assert.equal(await leaderGauge(survivor), '1');
        await waitUntil(async () => (await query('SELECT id FROM push_outbox WHERE id = $1', [row[0]])).length === 0, 'the outbox row to be delivered', 10_000);
        const atB = audit(b.dbPath).filter((r) => r.principal === `kms://${A_AUTH}` && r.method === 'update' && r.uri === `kms://${B_AUTH}/federation/invalidations`);
        assert.equal(atB.length, 1, `B accepted the invalidation once: ${JSON.stringify(atB)}`);
        assert.equal(atB[0]!.status, 204);
        const atA = await query<{ node: string; status: number }>(`SELECT node, status FROM audit WHERE method = 'update' AND uri = $1`, [`kms://${B_AUTH}/federation/invalidations`]);
        assert.deepEqual(atA.map((r) => [r.node, Number(r.status)]), [[ledAs(survivor), 204]], 'A audited the push, by the survivor');

        assert.equal(await survivor.stop(), 0);
        nodes.length = 0;
        // A node that stops removes its row; the killed one's stays until it is forgotten.
        const left = await query<{ id: string }>('SELECT id FROM nodes');
        assert.deepEqual(left.map((r) => r.id), [ledAs(leader)]);
      } finally {
        await Promise.all(nodes.map((n) => n.stop()));
        await b.close();
      }
    });
  });
}

await onEachBackend('one elected node among two kms serve processes on one database', elected);
