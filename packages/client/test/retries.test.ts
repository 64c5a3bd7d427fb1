/**
 * Which requests the SDK sends again after a lost connection (client.ts exchange): the operation
 * table's `retry` says it, read by method and URI as the KMS routes them. The retries themselves,
 * against the real KMS with a connection cut before the answer, are in test/nodes/retries.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { operations } from '@openkms/protocol';
import { retryModeOf } from '../src/client.js';

test('creates, binds and deletes of authorizations keep their first answer; reads repeat; deleting a channel is never retried', () => {
  const id = '5b2f6f1e-9c1b-4d7e-8f3a-2a1b3c4d5e6f';
  assert.equal(retryModeOf('create', '/keys'), 'firstAnswer');
  assert.equal(retryModeOf('update', `kms://kms.a.example/keys/${id}`), 'firstAnswer');
  assert.equal(retryModeOf('create', '/resources'), 'firstAnswer');
  assert.equal(retryModeOf('create', '/authorizations'), 'firstAnswer');
  assert.equal(retryModeOf('delete', `/resources/${id}/authorizations?authId=bob%40a.example`), 'firstAnswer');
  assert.equal(retryModeOf('retrieve', `/keys/${id}`), 'repeat');
  assert.equal(retryModeOf('retrieve', `kms://kms.b.example/resources/${id}/keys`), 'repeat');
  assert.equal(retryModeOf('update', '/ping'), 'repeat');
  assert.equal(retryModeOf('delete', `kms://kms.a.example/ecdhe/${id}`), 'never');
  // Nothing the table knows: the KMS refuses it; sending it twice gains nothing.
  assert.equal(retryModeOf('create', '/nothing'), 'never');
  assert.equal(retryModeOf('update', 'not a uri'), 'never');
});

test('every operation that changes state either keeps its first answer or is never retried; only reads, ping, handshakes and invalidations repeat', () => {
  const repeats = operations.filter((o) => o.retry === 'repeat').map((o) => o.name);
  assert.deepEqual(repeats.sort(), ['createEphemeralKey', 'listCmks', 'ping', 'receiveInvalidations', 'retrieveAuthorizations', 'retrieveCmk', 'retrieveKey', 'retrieveResource', 'retrieveResourceKeys'].sort());
  for (const o of operations) if (o.method === 'retrieve') assert.equal(o.retry, 'repeat', o.name);
});
