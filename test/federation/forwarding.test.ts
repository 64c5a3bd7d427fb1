/**
 * Federated authorization management (PROTOCOL.md §6): Bob lists, authorizes and deauthorizes
 * through B, which forwards to A; A decides, and B never learns A's own users.
 *
 * Between REAL KMSs: each is the real server on loopback (real sockets, real SQLite files, real keys
 * and certificates), and every user is the real SDK; each case checks what the user sees at B and
 * what A and B recorded (their audit tables, read straight from the database files).
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { KmsClient, type KeyRep } from '@openkms/client';
import { manualClock, type DevKms } from '@openkms/server/testing';
import {
  assertReleased,
  closeClients,
  exchanges,
  invalidationsAt,
  onBehalfOf,
  statusOf,
  TEST,
  useFederatedPair,
  userOn,
  waitFor,
} from '../support/federation.js';

after(closeClients);

describe('federation between kms.a.example and kms.b.example', () => {
  const clock = manualClock();
  let caB: string;
  let A: DevKms;
  let B: DevKms;
  let bob: KmsClient;
  let R: string;
  let keys: KeyRep[];
  useFederatedPair(clock, (pair) => ({ caB, A, B, bob, R, keys } = pair));

  test('federated authorization management through B (§6): list (B-domain only), authorize, deauthorize; A decides', TEST, async () => {
    const erin = userOn(B, 'erin@b.example', caB, clock);
    const carol = userOn(B, 'carol@b.example', caB, clock);
    assert.deepEqual((await bob.listAuthorizations(R)).map((a) => a.authId), ['bob@b.example'], 'alice@a.example is not revealed');
    assert.deepEqual((await bob.listAuthorizations(R, 'alice@a.example')).map((a) => a.authId), []);
    const received = invalidationsAt(B);
    const made = await bob.authorize(R, ['erin@b.example']);
    assert.deepEqual(made.map((a) => a.authId), ['erin@b.example']);
    assert.ok(onBehalfOf(A, 'bob@b.example').some((r) => r.method === 'create' && r.status === 201), 'A applied the change for Bob');
    assert.ok(exchanges(B, 'bob@b.example').some((r) => r.method === 'create' && r.status === 201));
    await waitFor(() => invalidationsAt(B) > received, 'the invalidation after the new authorization');
    assertReleased(await erin.retrieveKey(keys[0]!.uri), keys[0]!, R);

    // carol, not authorized, may not authorize herself: A's 403 reaches her.
    assert.equal(await statusOf(carol.authorize(R, ['carol@b.example'])), 403);
    assert.equal(await statusOf(carol.listAuthorizations(R)), 403);

    const before = invalidationsAt(B);
    assert.equal((await bob.deauthorize(R, 'erin@b.example')).authId, 'erin@b.example');
    await waitFor(() => invalidationsAt(B) > before, 'the invalidation after the deauthorization');
    assert.equal(await statusOf(erin.retrieveKey(keys[0]!.uri)), 403);
    assert.deepEqual((await bob.listAuthorizations(R)).map((a) => a.authId), ['bob@b.example']);

    // A bare name means a user of Bob's own domain: B makes it erin@b.example before forwarding,
    // so A never reads it as erin@a.example (another person).
    assert.deepEqual((await bob.authorize(R, ['erin'])).map((a) => a.authId), ['erin@b.example']);
    assert.deepEqual((await bob.listAuthorizations(R, 'erin')).map((a) => a.authId), ['erin@b.example']);
    assert.equal((await bob.deauthorize(R, 'erin')).authId, 'erin@b.example');
  });
});
