/**
 * Federated reads (PROTOCOL.md §6, draft 3.3 steps 5–10): Bob of B reads keys of Alice's KRO on A
 * through his own KMS; who A refuses; what B keeps of it (a sealed copy, never a key in the clear).
 *
 * Between REAL KMSs: each is the real server on loopback (real sockets, real SQLite files, real keys
 * and certificates), and every user is the real SDK; each case checks what the user sees at B and
 * what A and B recorded (their audit tables, read straight from the database files).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { KmsClient, type KeyRep } from '@openkms/client';
import { manualClock, type DevKms } from '@openkms/server/testing';
import {
  A_AUTH,
  assertReleased,
  audit,
  closeClients,
  copies,
  exchanges,
  onBehalfOf,
  statusOf,
  TEST,
  useFederatedPair,
  userOn,
  VIA_B,
} from '../support/federation.js';

after(closeClients);

describe('federation between kms.a.example and kms.b.example', () => {
  const clock = manualClock();
  let caB: string;
  let A: DevKms;
  let B: DevKms;
  let alice: KmsClient;
  let bob: KmsClient;
  let R: string;
  let keys: KeyRep[];
  let message: string;
  let content: string;
  useFederatedPair(clock, (pair) => ({ caB, A, B, alice, bob, R, keys, message, content } = pair));

  test('happy path (steps 5–10): Bob decrypts through B; resource keys filtered by B; the second read is the copy', TEST, async (t) => {
    const [k1, k2, k3] = keys as [KeyRep, KeyRep, KeyRep];
    assert.equal(onBehalfOf(A, 'bob@b.example').length, 0);

    // Steps 6–9: Bob asks B for an A key; B fetches the KRO from A and serves him.
    let started = performance.now();
    const got = await bob.retrieveKey(k1.uri);
    const cold = performance.now() - started;
    assertReleased(got, k1, R);

    // A recorded exactly one request on behalf of Bob through B's channel, and B's handshake.
    let fromB = onBehalfOf(A, 'bob@b.example');
    assert.equal(fromB.length, 1, JSON.stringify(fromB));
    assert.deepEqual({ method: fromB[0]!.method, uri: fromB[0]!.uri, status: fromB[0]!.status }, { method: 'retrieve', uri: k1.uri, status: 200 });
    const handshakes = audit(A.dbPath).filter((r) => r.principal === VIA_B && r.peer === VIA_B && r.status === 201);
    assert.equal(handshakes.length, 1, 'one peer channel opened by B');
    // B recorded the federated exchange (peer = A) and Bob's own request.
    const ex = exchanges(B, 'bob@b.example');
    assert.equal(ex.length, 1);
    assert.deepEqual({ client: ex[0]!.client_id, uri: ex[0]!.uri, status: ex[0]!.status }, { client: 'federation', uri: k1.uri, status: 200 });
    assert.ok(audit(B.dbPath).some((r) => r.principal === 'bob@b.example' && r.peer === null && r.uri === k1.uri && r.status === 200));

    // Step 10: Bob decrypts (another read of the key, from the copy).
    assert.equal(Buffer.from(await bob.decrypt(content)).toString('utf8'), message);
    started = performance.now();
    assertReleased(await bob.retrieveKey(k1.uri), k1, R);
    const warm = performance.now() - started;
    t.diagnostic(`Bob's key read through B: cold (fetch from A) ${cold.toFixed(1)} ms, warm (copy) ${warm.toFixed(1)} ms`);

    // retrieve /resources/<R>/keys through B: newest first, filters applied by B on the copy.
    const uris = (list: KeyRep[]) => list.map((k) => k.uri);
    const all = await bob.retrieveResourceKeys(R);
    assert.deepEqual(uris(all), [k3.uri, k2.uri, k1.uri]);
    all.forEach((k) => assertReleased(k, keys.find((x) => x.uri === k.uri)!, R));
    assert.deepEqual(uris(await bob.retrieveResourceKeys(R, { boundAfter: k2.bindDate! })), [k3.uri, k2.uri]);
    assert.deepEqual(uris(await bob.retrieveResourceKeys(R, { boundBefore: k3.bindDate! })), [k2.uri, k1.uri]);
    assert.deepEqual(uris(await bob.retrieveResourceKeys(R, { count: 2 })), [k3.uri, k2.uri]);
    assert.deepEqual(uris(await bob.retrieveResourceKeys(R, { boundAfter: k1.bindDate!, boundBefore: k3.bindDate!, count: 1 })), [k2.uri]);
    assert.deepEqual(uris(await bob.retrieveResourceKeys(R, { boundAfter: new Date(clock.now() + 60_000) })), []);
    // A key through B too (a key URI maps to the copy of its KRO).
    assertReleased(await bob.retrieveKey(k3.uri), k3, R);

    // All of that was served from the copy: A saw Bob once, B exchanged with A once.
    fromB = onBehalfOf(A, 'bob@b.example');
    assert.equal(fromB.length, 1, 'served from the copy, not from A');
    assert.equal(exchanges(B, 'bob@b.example').length, 1);
  });

  test('carol@b.example, not authorized on the KRO: 403 at B, refused by A', TEST, async () => {
    const carol = userOn(B, 'carol@b.example', caB, clock);
    clock.advance(1100); // past the 1 s re-fetch interval of whatever came before
    assert.equal(await statusOf(carol.retrieveKey(keys[0]!.uri)), 403);
    const atA = onBehalfOf(A, 'carol@b.example');
    assert.equal(atA.length, 1);
    assert.equal(atA[0]!.status, 403);
    const atB = exchanges(B, 'carol@b.example');
    assert.equal(atB.length, 1);
    assert.equal(atB[0]!.status, 403);
    assert.ok(audit(B.dbPath).some((r) => r.principal === 'carol@b.example' && r.peer === null && r.status === 403));
    // Again at once: still 403, and B does not ask A more than once a second per KRO.
    assert.equal(await statusOf(carol.retrieveResourceKeys(R)), 403);
    assert.equal(onBehalfOf(A, 'carol@b.example').length, 1);
    // Bob is still served.
    assertReleased(await bob.retrieveKey(keys[0]!.uri), keys[0]!, R);
  });

  test('a KRO with no B-domain principal: A refuses (403) and Bob sees 403; nothing is cached', TEST, async () => {
    const [k4, unbound] = await alice.createKeys(2);
    const R2 = (await alice.createResource({ authIds: ['dave@a.example'], keyUris: [k4!.uri] })).resource.uri;
    const before = onBehalfOf(A, 'bob@b.example').length;
    assert.equal(await statusOf(bob.retrieveKey(k4!.uri)), 403);
    assert.equal(await statusOf(bob.retrieveResourceKeys(R2)), 403);
    const atA = onBehalfOf(A, 'bob@b.example').slice(before);
    assert.deepEqual(
      atA.map((r) => [r.uri, r.status]),
      [
        [k4!.uri, 403],
        [`${R2}/keys`, 403],
      ],
    );
    assert.ok(!copies(B.dbPath).some((c) => c.resource_uri === R2), 'a refusal is never cached');
    // An unbound key is never released (403); a key A does not have is 404.
    assert.equal(await statusOf(bob.retrieveKey(unbound!.uri)), 403);
    assert.equal(await statusOf(bob.retrieveKey(`kms://${A_AUTH}/keys/${randomUUID()}`)), 404);
    // A KMS that is neither B nor a peer of B: 404 (§6 "Peers").
    assert.equal(await statusOf(bob.retrieveKey(`kms://kms.z.example/keys/${randomUUID()}`)), 404);
  });

  // A answering with a key of another resource is refused (502): packages/server/test/federation/answer.test.ts.

  test('copies at rest: B holds a sealed copy of the KRO, no key value in its database files or logs', TEST, async () => {
    const rows = copies(B.dbPath);
    const row = rows.find((c) => c.resource_uri === R);
    assert.ok(row, JSON.stringify(rows));
    assert.equal(row.authority, A_AUTH);
    const db = new Database(B.dbPath, { readonly: true });
    try {
      const mapped = db.prepare('SELECT key_uri FROM federated_keys WHERE resource_uri = ? ORDER BY key_uri').all(R) as { key_uri: string }[];
      assert.deepEqual(mapped.map((r) => r.key_uri), keys.map((k) => k.uri).sort());
    } finally {
      db.close();
    }
    const files = [B.dbPath, `${B.dbPath}-wal`].filter(existsSync).map((f) => readFileSync(f));
    assert.ok(files.length >= 1);
    const logs = B.logs.join('');
    for (const k of keys) {
      const raw = Buffer.from(k.jwk.k, 'base64url');
      assert.equal(raw.length, 32);
      for (const file of files) {
        assert.equal(file.indexOf(raw), -1, 'raw key bytes in B database');
        assert.equal(file.indexOf(Buffer.from(k.jwk.k)), -1, 'base64url key in B database');
        assert.equal(file.indexOf(Buffer.from(raw.toString('base64'))), -1, 'base64 key in B database');
        assert.equal(file.indexOf(Buffer.from(raw.toString('hex'))), -1, 'hex key in B database');
      }
      assert.ok(!logs.includes(k.jwk.k), 'key in B logs');
    }
  });
});
