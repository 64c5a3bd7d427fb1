/**
 * The freshness of copies (PROTOCOL.md §6): federation.maxStaleness bounds how long B serves a
 * copy A could not invalidate, and B re-fetches a KRO at most once a second.
 *
 * Between REAL KMSs: each is the real server on loopback (real sockets, real SQLite files, real keys
 * and certificates), and every user is the real SDK; each case checks what the user sees at B and
 * what A and B recorded (their audit tables, read straight from the database files).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { KmsClient } from '@openkms/client';
import { manualClock, startDevKms, type DevKms } from '@openkms/server/testing';
import {
  A_AUTH,
  audit,
  B_AUTH,
  caPem,
  closeClients,
  copies,
  NOWHERE,
  onBehalfOf,
  peerEntry,
  statusOf,
  TEST,
  userOn,
  VIA_A,
  VIA_B,
} from '../support/federation.js';

after(closeClients);

describe('federation copies and federation.maxStaleness', () => {
  const clock = manualClock();
  let A: DevKms;
  let B: DevKms;
  let caA: string;
  let caB: string;
  let alice: KmsClient;

  before(async () => {
    [caA, caB] = await Promise.all([caPem(A_AUTH, 'a.example'), caPem(B_AUTH, 'b.example')]);
    A = await startDevKms({ authority: A_AUTH, domains: ['a.example'], now: clock.now, config: { peers: [peerEntry(B_AUTH, 'b.example', NOWHERE, caB)] } });
    B = await startDevKms({
      authority: B_AUTH,
      domains: ['b.example'],
      now: clock.now,
      config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)], federation: { maxStaleness: 2 } },
    });
    alice = userOn(A, 'alice@a.example', caA, clock);
  });

  after(async () => {
    await B?.close();
    await A?.close();
  });

  test('A cannot reach B (no invalidation arrives): a deauthorized user is served from the copy until the bound, then refused (403); a refusal is not cached', TEST, async () => {
    const bob = userOn(B, 'bob@b.example', caB, clock);
    const [p1] = await alice.createKeys(1);
    const P = (await alice.createResource({ authIds: ['bob@b.example'], keyUris: [p1!.uri] })).resource.uri;
    assert.equal((await bob.retrieveKey(p1!.uri)).jwk.k, p1!.jwk.k);
    await alice.deauthorize(P, 'bob@b.example');

    // A's invalidation cannot reach B (its endpoint for B is NOWHERE): the copy serves within
    // maxStaleness, the backstop (§6 "within the bound in every case").
    clock.advance(1500);
    assert.equal((await bob.retrieveKey(p1!.uri)).jwk.k, p1!.jwk.k);
    assert.equal(onBehalfOf(A, 'bob@b.example').length, 1);

    clock.advance(600); // 2.1 s after the copy was made
    assert.equal(await statusOf(bob.retrieveKey(p1!.uri)), 403);
    assert.deepEqual(onBehalfOf(A, 'bob@b.example').map((r) => r.status), [200, 403]);
    // The refusal is not cached: the next read asks A again.
    assert.equal(await statusOf(bob.retrieveResourceKeys(P)), 403);
    assert.deepEqual(onBehalfOf(A, 'bob@b.example').map((r) => r.status), [200, 403, 403]);
    // The old copy stays (archive), past its bound.
    assert.ok(copies(B.dbPath).some((c) => c.resource_uri === P));
    // A tried to tell B and recorded the failed push.
    assert.ok(audit(A.dbPath).some((r) => r.principal === VIA_A && r.peer === VIA_B && r.method === 'update' && r.status >= 500));
  });

  test('a newly authorized user is served while the copy is fresh (re-fetch at most once a second per KRO)', TEST, async () => {
    const bob = userOn(B, 'bob@b.example', caB, clock);
    const bob2 = userOn(B, 'bob2@b.example', caB, clock);
    const carol = userOn(B, 'carol@b.example', caB, clock);
    const [q1] = await alice.createKeys(1);
    const Q = (await alice.createResource({ authIds: ['bob@b.example'], keyUris: [q1!.uri] })).resource.uri;
    assert.equal((await bob.retrieveKey(q1!.uri)).jwk.k, q1!.jwk.k);
    await alice.authorize(Q, ['bob2@b.example']);

    // The copy is fresh and lacks bob2: B re-fetches before refusing, and serves him.
    assert.equal((await bob2.retrieveKey(q1!.uri)).jwk.k, q1!.jwk.k);
    assert.deepEqual(onBehalfOf(A, 'bob2@b.example').map((r) => [r.uri, r.status]), [[q1!.uri, 200]]);

    // carol, in the same second: refused from the fresh copy without asking A again.
    assert.equal(await statusOf(carol.retrieveKey(q1!.uri)), 403);
    assert.equal(onBehalfOf(A, 'carol@b.example').length, 0);
    // A second later (the copy still fresh): B asks A once more, which refuses.
    clock.advance(1100);
    assert.equal(await statusOf(carol.retrieveKey(q1!.uri)), 403);
    assert.deepEqual(onBehalfOf(A, 'carol@b.example').map((r) => r.status), [403]);
    // Bob and bob2 are served from the copy throughout.
    assert.equal((await bob.retrieveKey(q1!.uri)).jwk.k, q1!.jwk.k);
    assert.equal((await bob2.retrieveKey(q1!.uri)).jwk.k, q1!.jwk.k);
    assert.equal(onBehalfOf(A, 'bob2@b.example').length, 1);
  });
});
