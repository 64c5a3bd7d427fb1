/**
 * Invalidations (PROTOCOL.md §6): A pushes a change of a KRO (a revocation, a new key, a new
 * member) to B, so B does not serve a stale copy until the staleness bound.
 *
 * Between REAL KMSs: each is the real server on loopback (real sockets, real SQLite files, real keys
 * and certificates), and every user is the real SDK; each case checks what the user sees at B and
 * what A and B recorded (their audit tables, read straight from the database files).
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, describe, test } from 'node:test';
import { KmsClient, KmsError } from '@openkms/client';
import { manualClock, type DevKms } from '@openkms/server/testing';
import {
  audit,
  closeClients,
  INVALIDATIONS_AT_B,
  invalidationsAt,
  statusOf,
  TEST,
  useFederatedPair,
  userOn,
  VIA_A,
  VIA_B,
  waitFor,
} from '../support/federation.js';

after(closeClients);

describe('federation between kms.a.example and kms.b.example', () => {
  const clock = manualClock();
  let caB: string;
  let A: DevKms;
  let B: DevKms;
  let alice: KmsClient;
  let bob: KmsClient;
  useFederatedPair(clock, (pair) => ({ caB, A, B, alice, bob } = pair));

  test('invalidations: a revocation and a new key reach B without waiting for the staleness bound', TEST, async (t) => {
    const carol = userOn(B, 'carol@b.example', caB, clock);
    const [v1, v2] = await alice.createKeys(2);
    const V = (await alice.createResource({ authIds: ['bob@b.example', 'carol@b.example'], keyUris: [v1!.uri] })).resource.uri;
    assert.equal((await bob.retrieveKey(v1!.uri)).jwk.k, v1!.jwk.k);
    assert.equal((await carol.retrieveKey(v1!.uri)).jwk.k, v1!.jwk.k);
    const pushedBefore = audit(A.dbPath).filter((r) => r.principal === VIA_A && r.peer === VIA_B && r.method === 'update' && r.status === 204).length;

    // The manual clock does not move: without the invalidation B would serve Carol from its copy.
    let received = invalidationsAt(B);
    let started = performance.now();
    await alice.deauthorize(V, 'carol@b.example');
    const revocation = await waitFor(() => invalidationsAt(B) > received, 'the invalidation after the revocation');
    t.diagnostic(`revocation: Alice's deauthorize → B accepted the invalidation in ${(performance.now() - started).toFixed(0)} ms (waited ${revocation.toFixed(0)} ms)`);
    assert.equal(await statusOf(carol.retrieveKey(v1!.uri)), 403);
    assert.equal((await bob.retrieveKey(v1!.uri)).jwk.k, v1!.jwk.k);

    received = invalidationsAt(B);
    started = performance.now();
    await alice.bindKey(v2!.uri, V);
    await waitFor(() => invalidationsAt(B) > received, 'the invalidation after the bind');
    t.diagnostic(`new key: Alice's bind → B accepted the invalidation in ${(performance.now() - started).toFixed(0)} ms`);
    assert.deepEqual((await bob.retrieveResourceKeys(V)).map((k) => k.uri), [v2!.uri, v1!.uri]);

    const pushes = audit(A.dbPath).filter((r) => r.principal === VIA_A && r.peer === VIA_B && r.method === 'update' && r.status === 204);
    assert.ok(pushes.length >= pushedBefore + 2, 'A recorded its pushes');
    assert.ok(pushes.every((r) => r.uri === INVALIDATIONS_AT_B));
  });

  test(
    'a key of an invalidated KRO that B\'s copy does not hold yet is served (Bob authorized later; a key bound after the copy)',
    TEST,
    async () => {
      // Alice authorizes Bob after making the KRO: A pushes an invalidation to B (Bob's KMS).
      const [w1, w2] = await alice.createKeys(2);
      const W = (await alice.createResource({ keyUris: [w1!.uri] })).resource.uri;
      let received = invalidationsAt(B);
      await alice.authorize(W, ['bob@b.example']);
      await waitFor(() => invalidationsAt(B) > received, 'the invalidation after authorizing Bob');
      const first = await bob.retrieveKey(w1!.uri).then(
        () => 200,
        (e: unknown) => (e instanceof KmsError ? e.status : -1),
      );
      // Bob read the KRO's keys (copy made); Alice binds another key: B learns of it and Bob asks for it.
      await bob.retrieveResourceKeys(W).catch(() => undefined);
      received = invalidationsAt(B);
      await alice.bindKey(w2!.uri, W);
      await waitFor(() => invalidationsAt(B) > received, 'the invalidation after the bind');
      const second = await bob.retrieveKey(w2!.uri).then(
        () => 200,
        (e: unknown) => (e instanceof KmsError ? e.status : -1),
      );
      assert.deepEqual({ authorizedLater: first, boundAfterCopy: second }, { authorizedLater: 200, boundAfterCopy: 200 });
    },
  );
});
