/**
 * Ping, routing and requestId (PROTOCOL.md §4; src/operations/ping.ts, src/routes.ts): unknown
 * methods and URIs, other authorities, requestIds echoed, batches answered in order.
 *
 * End-to-end on a real KMS (real SQLite file, real keys, a real socket) driven by TestClient over
 * HTTP batch; time from manual clocks, never wall-clock timings.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { TestClient, postBatch } from '../support/client.js';
import { manualClock, type DevKms } from '../../src/testing/harness.js';
import { useMainKms, AUTHORITY, expectOk, expectStatus, ping, send, type Answer } from '../support/operations.js';

const clock = manualClock();
let main: DevKms;
let alice: TestClient;
useMainKms(clock, (shared) => ({ main, alice } = shared));

describe('ping, routing and requestId (PROTOCOL.md §4)', () => {
  test('update /ping → 200', async () => {
    const r = await expectOk(alice, { ...ping, requestId: 'ping-1' });
    assert.equal(r.requestId, 'ping-1');
    expectStatus(await send(alice, { method: 'update', uri: `kms://${AUTHORITY}/ping` }), 200);
  });

  test('unknown uri or method/uri combination → 400, the reason names the uri', async () => {
    for (const [method, uri] of [
      ['update', '/nonsense'],
      ['retrieve', '/ping'],
      ['delete', '/keys'],
      ['create', `/keys/${randomUUID()}`],
      ['retrieve', `/resources/${randomUUID()}/unknown`],
    ]) {
      const r = await send(alice, { method, uri });
      expectStatus(r, 400, `${method} ${uri}`);
      assert.ok(r.reason!.includes(uri!), `reason "${r.reason}" names ${uri}`);
    }
  });

  test('unknown method → 400 naming the method field', async () => {
    const r = await send(alice, { method: 'patch', uri: '/ping' });
    expectStatus(r, 400);
    assert.match(r.reason!, /method/);
  });

  test('a uri that is not a KMS URI → 400 naming uri; another authority → 404', async () => {
    const r = await send(alice, { method: 'update', uri: 'https://example.com/ping' });
    expectStatus(r, 400);
    assert.match(r.reason!, /uri/);
    expectStatus(await send(alice, { method: 'update', uri: 'kms://kms.z.example/ping' }), 404);
  });

  test('requestId is echoed verbatim: string, integer, numeric-looking string; on success and on failure', async () => {
    for (const requestId of ['req-abc-123', 42, 0, Number.MAX_SAFE_INTEGER, '42', -7]) {
      const ok = await send(alice, { ...ping, requestId });
      expectStatus(ok, 200);
      assert.strictEqual(ok.requestId, requestId);
      const failed = await send(alice, { method: 'update', uri: '/nonsense', requestId });
      expectStatus(failed, 400);
      assert.strictEqual(failed.requestId, requestId);
    }
  });

  test('a missing requestId → 400 naming requestId', async () => {
    const r = await send(alice, { ...ping, requestId: undefined });
    expectStatus(r, 400);
    assert.match(r.reason!, /requestId/);
  });

  test('several messages in one HTTP batch are answered in order', async () => {
    const bodies = [ping, { method: 'update', uri: '/nonsense' }, { method: 'create', uri: '/keys', count: 1 }].map((b, i) => ({ requestId: i, client: alice.client(), ...b }));
    const answers = await postBatch(main.url, await Promise.all(bodies.map((b) => alice.seal(b))));
    const decoded = (await Promise.all(answers.map((a) => alice.decode(a)))) as Answer[];
    assert.deepEqual(decoded.map((d) => [d.requestId, d.status]), [[0, 200], [1, 400], [2, 201]]);
  });
});
