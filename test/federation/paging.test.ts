/**
 * Federated reads of a large KRO (PROTOCOL.md §6 "at most 500 per answer with next"): B gets
 * every key over several pages.
 *
 * Between REAL KMSs: each is the real server on loopback (real sockets, real SQLite files, real keys
 * and certificates), and every user is the real SDK; each case checks what the user sees at B and
 * what A and B recorded (their audit tables, read straight from the database files).
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { KmsClient, KmsError, type KeyRep } from '@openkms/client';
import { manualClock } from '@openkms/server/testing';
import { closeClients, TEST, useFederatedPair } from '../support/federation.js';

after(closeClients);

describe('federation between kms.a.example and kms.b.example', () => {
  const clock = manualClock();
  let alice: KmsClient;
  let bob: KmsClient;
  useFederatedPair(clock, (pair) => ({ alice, bob } = pair));

  test(
    'a KRO with more than 500 keys: B gets every key over several pages (§6 "at most 500 per answer with next")',
    TEST,
    async () => {
      // 100 keys bound at t0 (with the KRO), 401 more at t1: 501 in all.
      const first = await alice.createKeys(100);
      const big = (await alice.createResource({ authIds: ['bob@b.example'], keyUris: first.map((k) => k.uri) })).resource.uri;
      clock.advance(5);
      const rest = (await Promise.all([alice.createKeys(100), alice.createKeys(100), alice.createKeys(100), alice.createKeys(100), alice.createKeys(1)])).flat();
      await Promise.all(rest.map((k) => alice.bindKey(k.uri, big)));
      assert.equal((await alice.retrieveResourceKeys(big)).length, 501, 'A itself lists all 501');
      const read = (key: KeyRep) =>
        bob.retrieveKey(key.uri).then(
          (k) => (k.jwk.k === key.jwk.k ? 200 : -1),
          (e: unknown) => (e instanceof KmsError ? e.status : -2),
        );
      // B has no copy yet: the newest key (on A's first page) is fetched by its URI.
      const newKey = await read(rest[rest.length - 1]!);
      const viaB = (await bob.retrieveResourceKeys(big)).length;
      // One of the oldest keys (bound with the KRO).
      const oldKey = await read(first[0]!);
      assert.deepEqual({ keysThroughB: viaB, oldKeyStatus: oldKey, newKeyStatus: newKey }, { keysThroughB: 501, oldKeyStatus: 200, newKeyStatus: 200 });
    },
  );
});
