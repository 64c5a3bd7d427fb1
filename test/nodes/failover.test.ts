/**
 * Two `kms serve` processes on one database (SQLite file; PostgreSQL schema, fresh per run), the
 * test playing the load balancer that routes each HTTP request of a client to a node:
 *
 * - 50 concurrent binds of one key, spread over both nodes (one message per HTTP request, the
 *   nodes in turn): exactly one is a 200, every other the documented refusal, 409
 *   KEY_ALREADY_BOUND (PROTOCOL.md §5: "exactly one of N concurrent binds wins"), whichever
 *   node answers it, and the key stays bound where the winner bound it.
 * - Node 1 killed with SIGKILL under write load (test/support/write-load.ts), frozen (SIGSTOP) a
 *   few ms before so that requests are surely unanswered on it when it dies: the balancer takes
 *   it out of rotation then, so every request after goes to node 2; a request cut off on node 1
 *   is resent by the SDK (once, on a lost connection, same channel and requestId) and lands on
 *   node 2. Clients keep being served, no request fails but with a 503 (retry later), nothing
 *   acknowledged is lost (every acknowledged write read back through node 2), and `kms audit
 *   verify` finds the one chain intact with records of both nodes.
 *
 * A request cut off on node 1 after node 1 claimed it for its retries (core/retries.ts) but before
 * it remembered the answer holds its claim until the lease ends: its resend then gets a 503
 * (retry later). A loaded machine may make any request a 503 too (storage deadline). Both are
 * counted; the counts and timings are diagnostics.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { KmsError } from '@openkms/client';
import { onEachBackend, startNodes, within, type Nodes } from '../support/nodes.js';
import { WriteLoad, type Failure } from '../support/write-load.js';

const TEST = { timeout: 120_000 };
const BINDS = 50;
/** Keys each bound by BINDS concurrent requests, one after the other. */
const KEYS = 2;
/** Writes acknowledged before the kill, and after it (all by node 2). */
const BEFORE_KILL = 150;
const AFTER_KILL = 60;
const CLIENTS = 4;
const WORKERS = 3;
const HANG_GUARD_MS = 60_000;
/** How long node 1 is frozen before it is killed: its answers already sent arrive meanwhile. */
const FREEZE_MS = 50;

const idOf = (uri: string) => uri.slice(uri.lastIndexOf('/') + 1);

await onEachBackend('two nodes on one database: concurrent binds, and one node killed', (backend) => {
  describe(`two kms serve processes on one ${backend.name} database: concurrent binds and failover`, () => {
    let cluster: Nodes;
    before(async () => {
      cluster = await startNodes(backend, 2, 'kms.failover.example', 'failover.example');
    });
    after(() => cluster.stop());

    test(`${BINDS} concurrent binds of one key over both nodes: one 200, every other 409 KEY_ALREADY_BOUND`, TEST, async (t) => {
      let turn = 0;
      // One message per HTTP request, to the nodes in turn: the binds race on both at once.
      const alice = cluster.client('alice@failover.example', () => turn++ % 2, { maxBatch: 1 });
      // Alice again (her clientId: her unbound keys are hers), pinned to each node.
      const readers = [0, 1].map((node) => cluster.client('alice@failover.example', () => node, { clientId: alice.clientId }));
      const resources = await Promise.all(Array.from({ length: 5 }, async () => (await alice.createResource()).resource.uri));
      for (let round = 0; round < KEYS; round++) {
        const [key] = await alice.createKeys(1);
        const firstPost = cluster.sent.length;
        const roundStarted = performance.now();
        const outcomes = await Promise.allSettled(Array.from({ length: BINDS }, (_, i) => alice.bindKey(key!.uri, resources[i % resources.length]!)));
        const bindsMs = performance.now() - roundStarted;
        const posts = cluster.sent.slice(firstPost);
        const nodesAsked = new Set(posts.map((s) => s.node));
        assert.deepEqual([...nodesAsked].sort(), [0, 1], 'the binds went to both nodes');

        const won = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
        const refused = outcomes.flatMap((o) => (o.status === 'rejected' ? [o.reason as unknown] : []));
        for (const r of refused) assert.ok(r instanceof KmsError && r.code === 'KEY_ALREADY_BOUND' && r.status === 409, `a losing bind got ${String(r)}`);
        assert.equal(won.length, 1, `exactly one bind won: ${won.length}`);
        const winner = won[0]!.resourceUri;
        // Both nodes say where it is bound: the winner's resource.
        for (const [node, reader] of readers.entries()) assert.equal((await reader.retrieveKey(key!.uri)).resourceUri, winner, `node ${node + 1}`);
        const audited = await backend.sql<{ node: string; status: number | string }>(cluster.dir, `SELECT node, status FROM audit WHERE method = 'update' AND uri LIKE '%/keys/${idOf(key!.uri)}'`);
        const statuses = audited.map((a) => Number(a.status)).sort();
        assert.deepEqual(statuses, [200, ...Array<number>(BINDS - 1).fill(409)], 'the log has the one bind and its refusals');
        assert.equal(new Set(audited.map((a) => a.node)).size, 2, 'both nodes answered binds');
        t.diagnostic(`${backend.name}, key ${round + 1}: ${BINDS} binds over ${posts.length} HTTP requests in ${Math.round(bindsMs)} ms, nodes answering: ${audited.filter((a) => Number(a.status) === 200).map((a) => a.node).join()} won, ${refused.length} refused 409`);
      }
    });

    test('node 1 killed with SIGKILL under write load: clients are served by node 2, nothing acknowledged is lost, one chain of both nodes', TEST, async (t) => {
      /** The balancer: the nodes in turn until node 1 dies, then node 2 only. */
      let node1Out = false;
      const clients = Array.from({ length: CLIENTS }, (_, i) => {
        let turn = i;
        return cluster.client(`writer${i}@failover.example`, () => (node1Out ? 1 : turn++ % 2));
      });
      const load = new WriteLoad(clients, WORKERS, 'failover.example');
      const started = performance.now();
      load.start();
      const onNode1 = () => cluster.sent.filter((s) => s.node === 0 && s.outcome === undefined).length;
      const node1 = cluster.nodes[0]!;
      // The moment of the kill is pinned by freezing node 1 first (SIGSTOP): once what it had
      // already answered has arrived, the requests still unanswered on it are cut off for sure.
      // Frozen for a few ms only: the other node may be waiting for a lock it holds.
      for (;;) {
        await within(HANG_GUARD_MS, `${BEFORE_KILL} acknowledged writes with requests in flight on node 1`, async () => load.acknowledged >= BEFORE_KILL && onNode1() > 0);
        node1.signal('SIGSTOP');
        await sleep(FREEZE_MS);
        if (onNode1() > 0) break;
        node1.signal('SIGCONT');
      }
      const loadMs = performance.now() - started;
      const firstAfterKill = cluster.sent.length;
      const posts = cluster.sent.slice(0, firstAfterKill);
      node1Out = true;
      load.markKill();
      await node1.kill();
      const acknowledgedAtKill = load.acknowledged;
      await within(HANG_GUARD_MS, `${AFTER_KILL} writes sent after the kill acknowledged`, async () => load.acknowledgedAfterKill >= AFTER_KILL);
      await load.stop();

      // The requests node 1 was carrying when it died: their HTTP request failed, and the SDK
      // sent each again, to node 2.
      const cut = posts.filter((s) => s.node === 0 && s.outcome === 'failed');
      const cutMessages = cut.reduce((n, s) => n + s.messages.length, 0);
      assert.ok(cut.length > 0, 'requests were in flight on node 1 when it died');
      assert.ok(cluster.sent.slice(firstAfterKill).every((s) => s.node === 1), 'after the kill, every request went to node 2');

      // No request fails but with a 503 (retry later): one in flight at the kill that node 1 had
      // claimed (its resend waits for the claim, then gives up), or one a loaded machine made too
      // slow. Never a lost connection (the resend found node 2), never a 500.
      for (const f of load.failures) assert.ok(f.error instanceof KmsError && f.error.code === 'STORAGE_UNAVAILABLE' && f.error.status === 503, `${f.op} failed with ${String(f.error)}`);
      const failed = (pick: (f: Failure) => boolean) => load.failures.filter(pick).length;

      // Read back through node 2, by the clients that wrote (the balancer routes them there now).
      const verifyStarted = performance.now();
      const lost = await load.verify();
      const verifyMs = performance.now() - verifyStarted;
      const counts = load.counts();
      t.diagnostic(`${backend.name}: ${acknowledgedAtKill} writes acknowledged by the kill (${Math.round(loadMs)} ms of load), ${load.acknowledged} in all (${counts.keys} keys, ${counts.resources} resources, ${counts.authorizations} authorizations, ${counts.binds} binds)`);
      t.diagnostic(`${backend.name}: in flight at the kill: ${load.inFlightAtKill} requests, ${cutMessages} of them cut off on node 1 (${cut.length} HTTP requests) and resent to node 2; acknowledged after all: ${load.inFlightAcknowledged}, 503: ${failed((f) => f.inFlightAtKill)}; 503 before the kill: ${failed((f) => !f.inFlightAtKill && !f.afterKill)}, after it: ${failed((f) => f.afterKill)}`);
      t.diagnostic(`${backend.name}: first write sent after the kill acknowledged ${Math.round(load.firstAcknowledgedAfterKillMs ?? -1)} ms after it; ${load.acknowledgedAfterKill} acknowledged after it, all by node 2; read back in ${Math.round(verifyMs)} ms with ${load.verifyRetries} reads asked again after a 503; lost: ${lost.length}`);
      assert.deepEqual(lost.slice(0, 20), [], `${lost.length} acknowledged writes lost`);

      // Each acknowledged answer, of node 1 or node 2 (a resend's answer is node 2's), has its record.
      const audited = await backend.sql<{ request_id: string }>(cluster.dir, 'SELECT request_id FROM audit WHERE status >= 200 AND status < 300');
      const unaudited = load.unaudited(audited.map((r) => r.request_id));
      assert.deepEqual(unaudited.slice(0, 20), [], `${unaudited.length} acknowledged requests have no 2xx audit record`);
      const internal = await backend.sql(cluster.dir, 'SELECT seq FROM audit WHERE status = 500');
      assert.deepEqual(internal, [], 'no request was a 500, on either node');

      const verify = cluster.verifyAudit();
      assert.equal(verify.code, 0, verify.stderr);
      const m = /^audit log intact: (\d+) records\n/.exec(verify.stdout);
      assert.ok(m, verify.stdout);
      const writers = [...verify.stdout.matchAll(/^ {2}(\d+) by node (\S+)$/gm)].map((w) => ({ node: w[2]!, records: Number(w[1]) }));
      assert.equal(writers.length, 2, `records of both nodes: ${verify.stdout}`);
      t.diagnostic(`${backend.name}: audit log intact, ${m[1]} records: ${writers.map((w) => `${w.records} by ${w.node}`).join(', ')}`);
    });
  });
});
