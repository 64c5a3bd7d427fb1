/**
 * A node killed with SIGKILL loses no acknowledged write (OPERATING.md, "Failures an operator
 * sees"): whatever the KMS answered 2xx is there after a restart, on SQLite (WAL,
 * synchronous=FULL) and on PostgreSQL (a fresh schema of the server on 127.0.0.1:5432). An answer
 * is sent only once its write and its audit record are committed, so neither can be missing.
 *
 * SDK clients keep writing — keys, resources binding them, authorizations — several requests at
 * once each (test/support/write-load.ts); once some hundreds are acknowledged, with requests in
 * flight, `kms serve` is killed with SIGKILL (no shutdown of any kind), started again on the same
 * folder and database, and every acknowledged write is read back: each key with the same jwk.k,
 * bound where it was; each resource with its keys and authorizations. `kms audit verify` finds the
 * chain intact, and it holds a 2xx record for every acknowledged request.
 *
 * The counts and timings are diagnostics; what is asserted is that nothing acknowledged is lost,
 * that requests fail only by the lost connection (or a 503 of a loaded machine, never a 500), and
 * that the chain verifies.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, before, describe, test } from 'node:test';
import { KmsError } from '@openkms/client';
import { onEachBackend, startNodes, within, type Nodes } from '../support/nodes.js';
import { WriteLoad } from '../support/write-load.js';

const TEST = { timeout: 120_000 };
/** Writes acknowledged before the kill: "some hundreds". */
const BEFORE_KILL = 300;
const CLIENTS = 4;
const WORKERS = 3;
/** Far above how long the load takes to get there: longer is a hang. */
const HANG_GUARD_MS = 60_000;

const isCode = (err: unknown, code: string) => err instanceof KmsError && err.code === code;

await onEachBackend('a node killed with SIGKILL under write load', (backend) => {
  describe(`kms serve on ${backend.name}, killed with SIGKILL under write load`, () => {
    let cluster: Nodes;
    before(async () => {
      cluster = await startNodes(backend, 1, 'kms.sigkill.example', 'sigkill.example');
    });
    after(() => cluster.stop());

    test('every write answered 2xx is there after the restart, and the audit chain verifies', TEST, async (t) => {
      const clients = Array.from({ length: CLIENTS }, (_, i) => cluster.client(`writer${i}@sigkill.example`, () => 0));
      const load = new WriteLoad(clients, WORKERS, 'sigkill.example');
      const started = performance.now();
      load.start();
      await within(HANG_GUARD_MS, `${BEFORE_KILL} acknowledged writes with requests in flight`, async () => load.acknowledged >= BEFORE_KILL && load.inFlight > 0);
      const loadMs = performance.now() - started;

      // The workers start nothing more (a restart is no failover: their next requests would only
      // find the node gone); what they sent is under way when the process dies.
      load.markKill();
      const settled = load.stop();
      await cluster.nodes[0]!.kill();
      await settled;
      const killed = { acknowledged: load.acknowledged, inFlight: load.inFlightAtKill, answeredAnyway: load.inFlightAcknowledged };
      const counts = load.counts();

      // A request fails only as one cut off by the kill (the SDK's one resend found the node
      // gone), or as a 503 (storage too slow on a loaded machine: retry later); never a 500.
      const cut = load.failures.filter((f) => f.inFlightAtKill && isCode(f.error, 'KMS_UNREACHABLE'));
      const slow = load.failures.filter((f) => isCode(f.error, 'STORAGE_UNAVAILABLE'));
      for (const f of load.failures) assert.ok(cut.includes(f) || slow.includes(f), `${f.op} failed with ${String(f.error)}`);
      assert.equal(load.failures.filter((f) => f.inFlightAtKill).length + load.inFlightAcknowledged, load.inFlightAtKill, 'every request in flight at the kill either failed or was answered');

      const restartedAt = performance.now();
      await cluster.restart(0);
      const restartMs = performance.now() - restartedAt;
      const verifyStarted = performance.now();
      const lost = await load.verify();
      const verifyMs = performance.now() - verifyStarted;
      t.diagnostic(`${backend.name}: ${killed.acknowledged} writes acknowledged (${counts.keys} keys, ${counts.resources} resources, ${counts.authorizations} authorizations, ${counts.binds} binds) in ${Math.round(loadMs)} ms before the kill`);
      t.diagnostic(`${backend.name}: in flight at the kill: ${killed.inFlight} (answered before the process died: ${killed.answeredAnyway}, cut off: ${cut.length}); 503 (retry later) before the kill: ${slow.length}; restarted in ${Math.round(restartMs)} ms; read back in ${Math.round(verifyMs)} ms with ${load.verifyRetries} reads asked again after a 503; lost: ${lost.length}`);
      assert.deepEqual(lost.slice(0, 20), [], `${lost.length} acknowledged writes lost`);
      assert.ok(killed.inFlight > 0, 'the node was killed with requests in flight');

      const internal = await backend.sql(cluster.dir, 'SELECT seq FROM audit WHERE status = 500');
      assert.deepEqual(internal, [], 'no request was a 500, before the kill or after the restart');

      const verify = cluster.verifyAudit();
      assert.equal(verify.code, 0, verify.stderr);
      assert.match(verify.stdout, /^audit log intact: \d+ records\n/);
      // The killed process and its restart (a node id of its own): one chain.
      assert.equal([...verify.stdout.matchAll(/^ {2}\d+ by node \S+$/gm)].length, 2, verify.stdout);
      // Every acknowledged request is in the log with its 2xx status: its record was committed before its answer.
      const audited = await backend.sql<{ request_id: string }>(cluster.dir, 'SELECT request_id FROM audit WHERE status >= 200 AND status < 300');
      const unaudited = load.unaudited(audited.map((r) => r.request_id));
      t.diagnostic(`${backend.name}: acknowledged requests without their audit record: ${unaudited.length} of ${load.acknowledgedRequestIds.size}`);
      assert.deepEqual(unaudited.slice(0, 20), [], `${unaudited.length} acknowledged requests have no 2xx audit record`);
    });
  });
});
