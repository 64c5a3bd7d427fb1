/**
 * Stage 3, resolve (src/core/resolve.ts): the operation a request names, the authority of its
 * object, the dispatch mode federation needs, and the access gate — each decision both ways.
 * The only port is the peer lookup, here a fixed set of two peer authorities.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import { operations, type KmsRequest } from '@openkms/protocol';
import type { Authenticated } from '../../src/core/authenticate.js';
import { newRecord } from '../../src/core/record.js';
import { Resolver } from '../../src/core/resolve.js';
import type { AnonymousPrincipal, Principal } from '../../src/identity/principal.js';
import { AUTHORITY, PEER_AUTHORITY, THIRD_AUTHORITY, peerPrincipal, rejectsWith, requestOf, userOf } from '../support/core.js';

const PEERS = new Set([PEER_AUTHORITY, THIRD_AUTHORITY]);
const resolver = new Resolver(AUTHORITY, { isPeerAuthority: (authority) => PEERS.has(authority) });

const alice = userOf('alice@a.example');
/** A user of the peer's domain, as the peer's federated request names it. */
const bob = userOf('bob@b.example');
const anonymous: AnonymousPrincipal = { kind: 'anonymous', authorizationUri: `kms://${AUTHORITY}/authorizations/${randomUUID()}`, authorizationId: randomUUID(), resourceId: randomUUID(), expiresAt: Number.MAX_SAFE_INTEGER };

const from = (principal: Principal, request: KmsRequest, peer = false): Authenticated => ({ request, principal, ...(peer ? { peer: peerPrincipal } : {}) });
/** Resolves under a channel key with a fresh record; returns both. */
function resolve(authenticated: Authenticated, key: 'static' | 'channel' = 'channel') {
  const record = newRecord();
  return { resolved: resolver.resolve(authenticated, key, record), record };
}
const refused = (authenticated: Authenticated, code: 'NOT_FOUND' | 'NOT_AUTHORIZED' | 'INVALID_FIELD', status: number, key: 'static' | 'channel' = 'channel') =>
  rejectsWith(() => resolver.resolve(authenticated, key, newRecord()), code, status);

const keyAt = (authority: string) => `kms://${authority}/keys/${randomUUID()}`;
const resourceAt = (authority: string) => `kms://${authority}/resources/${randomUUID()}`;

describe('the operation', () => {
  test('is the table\'s entry for the method and URI, with its id and query', () => {
    const id = randomUUID();
    const { resolved } = resolve(from(alice, requestOf('retrieve', `/resources/${id}/authorizations?authId=bob%40a.example`)));
    assert.equal(resolved.spec.name, 'retrieveAuthorizations');
    assert.equal(resolved.id, id);
    assert.equal(resolved.query.get('authId'), 'bob@a.example');
    assert.equal(resolved.authority, AUTHORITY);
    assert.equal(resolved.dispatch, 'local');
  });

  test('a relative URI and this KMS\'s absolute URI name the same object', () => {
    const id = randomUUID();
    for (const uri of [`/keys/${id}`, `kms://${AUTHORITY}/keys/${id}`, `kms://${AUTHORITY.toUpperCase()}/keys/${id}`]) {
      const { resolved } = resolve(from(alice, requestOf('retrieve', uri)));
      assert.deepEqual([resolved.spec.name, resolved.id, resolved.authority, resolved.dispatch], ['retrieveKey', id, AUTHORITY, 'local'], uri);
    }
  });

  test('a URI that is not a KMS URI, or names no operation, is a 400', async () => {
    await refused(from(alice, requestOf('retrieve', 'https://kms.a.example/keys')), 'INVALID_FIELD', 400);
    await refused(from(alice, requestOf('retrieve', '/keys/not-a-uuid')), 'INVALID_FIELD', 400);
    await refused(from(alice, requestOf('update', '/resources')), 'INVALID_FIELD', 400);
  });

  test('the record names the operation once it is resolved, and only then', async () => {
    const { record } = resolve(from(alice, requestOf('create', '/keys')));
    assert.equal(record.op, 'createKeys');
    // Refused by the access gate, after the operation was found: the record still says which.
    const gated = newRecord();
    await rejectsWith(() => resolver.resolve(from(anonymous, requestOf('create', '/keys')), 'channel', gated), 'NOT_AUTHORIZED', 403);
    assert.equal(gated.op, 'createKeys');
    // Refused before any operation was found: the record keeps what the earlier stages wrote.
    for (const uri of [keyAt('kms.z.example'), '/nothing']) {
      const unresolved = { ...newRecord(), op: 'unknown' as const };
      assert.throws(() => resolver.resolve(from(alice, requestOf('retrieve', uri)), 'channel', unresolved));
      assert.equal(unresolved.op, 'unknown', uri);
    }
  });
});

describe('which key an operation arrives under', () => {
  test('create /ecdhe under the static key resolves; under a channel key it is a 400', async () => {
    assert.equal(resolve(from(alice, requestOf('create', '/ecdhe')), 'static').resolved.spec.name, 'createEphemeralKey');
    await refused(from(alice, requestOf('create', '/ecdhe')), 'INVALID_FIELD', 400);
  });

  test('every channel operation under the static key is a 400, and resolves under a channel key', async () => {
    for (const spec of operations.filter((o) => o.key === 'channel')) {
      const request = requestOf(spec.method, spec.path.replaceAll('{id}', randomUUID()));
      const principal = spec.name === 'receiveInvalidations' ? peerPrincipal : alice;
      await refused(from(principal, request, principal === peerPrincipal), 'INVALID_FIELD', 400, 'static');
      assert.equal(resolve(from(principal, request, principal === peerPrincipal)).resolved.spec.name, spec.name);
    }
  });
});

describe('the authority', () => {
  test('an authority in the URI that is neither this KMS nor a peer is a 404; in resourceUri it is the handler\'s to refuse', async () => {
    await refused(from(alice, requestOf('retrieve', keyAt('kms.z.example'))), 'NOT_FOUND', 404);
    // The local handler validates the request first (a malformed one is a 400 wherever it points), then answers 404.
    for (const method of ['create', 'delete'] as const) {
      const { resolved } = resolve(from(alice, requestOf(method, '/authorizations', { resourceUri: resourceAt('kms.z.example'), authIds: ['x@a.example'] })));
      assert.deepEqual([resolved.dispatch, resolved.authority], ['local', AUTHORITY], method);
    }
  });

  test('an anonymous bearer is refused at the gate whatever resourceUri names', async () => {
    for (const authority of ['kms.z.example', PEER_AUTHORITY, AUTHORITY]) {
      await refused(from(anonymous, requestOf('create', '/authorizations', { resourceUri: resourceAt(authority), authIds: ['x@a.example'] })), 'NOT_AUTHORIZED', 403);
    }
  });

  test('a peer\'s object under a local-only operation is a 404', async () => {
    const id = randomUUID();
    await refused(from(alice, requestOf('retrieve', `kms://${PEER_AUTHORITY}/resources/${id}`)), 'NOT_FOUND', 404);
    await refused(from(alice, requestOf('update', `kms://${PEER_AUTHORITY}/keys/${id}`, { resourceUri: `/resources/${id}` })), 'NOT_FOUND', 404);
    await refused(from(alice, requestOf('create', `kms://${PEER_AUTHORITY}/keys`, { count: 1 })), 'NOT_FOUND', 404);
    await refused(from(alice, requestOf('update', `kms://${PEER_AUTHORITY}/ping`)), 'NOT_FOUND', 404);
  });

  test('a peer\'s object under a federated operation asks the peer, with the peer\'s authority', () => {
    const id = randomUUID();
    for (const request of [
      requestOf('retrieve', `kms://${PEER_AUTHORITY}/keys/${id}`),
      requestOf('retrieve', `kms://${PEER_AUTHORITY}/resources/${id}/keys`),
      requestOf('retrieve', `kms://${PEER_AUTHORITY}/resources/${id}/authorizations`),
      requestOf('delete', `kms://${PEER_AUTHORITY}/authorizations/${id}`),
    ]) {
      const { resolved } = resolve(from(alice, request));
      assert.deepEqual([resolved.dispatch, resolved.authority, resolved.id], ['askPeer', PEER_AUTHORITY, id], request.uri);
    }
  });

  test('create and bulk delete of authorizations take their authority from resourceUri', () => {
    for (const method of ['create', 'delete'] as const) {
      const remote = resolve(from(alice, requestOf(method, '/authorizations', { resourceUri: resourceAt(PEER_AUTHORITY) }))).resolved;
      assert.deepEqual([remote.dispatch, remote.authority], ['askPeer', PEER_AUTHORITY], method);
      const local = resolve(from(alice, requestOf(method, '/authorizations', { resourceUri: resourceAt(AUTHORITY) }))).resolved;
      assert.deepEqual([local.dispatch, local.authority], ['local', AUTHORITY], method);
      // A resourceUri that names no resource leaves the decision to the handler, which refuses it.
      for (const resourceUri of [undefined, 42, 'not a uri', keyAt(PEER_AUTHORITY)]) {
        const unnamed = resolve(from(alice, requestOf(method, '/authorizations', { resourceUri }))).resolved;
        assert.deepEqual([unnamed.dispatch, unnamed.authority], ['local', AUTHORITY], `${method} ${String(resourceUri)}`);
      }
    }
  });
});

describe('requests that came through a peer KMS', () => {
  test('a peer\'s user on a federated operation about this KMS\'s object: the answer-a-peer handler', () => {
    for (const request of [
      requestOf('retrieve', `/keys/${randomUUID()}`),
      requestOf('retrieve', `kms://${AUTHORITY}/resources/${randomUUID()}/keys`),
      requestOf('create', '/authorizations', { resourceUri: resourceAt(AUTHORITY) }),
    ]) {
      assert.equal(resolve(from(bob, request, true)).resolved.dispatch, 'answerPeer', request.uri);
    }
  });

  test('a peer never makes this KMS ask a third one: by the URI a 403; by resourceUri this KMS\'s own handler answers (404)', async () => {
    for (const authority of [THIRD_AUTHORITY, PEER_AUTHORITY]) {
      await refused(from(bob, requestOf('retrieve', keyAt(authority)), true), 'NOT_AUTHORIZED', 403);
      for (const method of ['create', 'delete'] as const) {
        const { resolved } = resolve(from(bob, requestOf(method, '/authorizations', { resourceUri: resourceAt(authority) }), true));
        assert.deepEqual([resolved.dispatch, resolved.authority], ['answerPeer', AUTHORITY], `${method} ${authority}`);
      }
    }
    // Asked by a local user, the same requests go to the peer.
    assert.equal(resolve(from(alice, requestOf('create', '/authorizations', { resourceUri: resourceAt(THIRD_AUTHORITY) }))).resolved.dispatch, 'askPeer');
  });

  test('a peer\'s user on a local-only operation is refused by the gate (403)', async () => {
    await refused(from(bob, requestOf('create', '/keys', { count: 1 }), true), 'NOT_AUTHORIZED', 403);
    await refused(from(bob, requestOf('retrieve', `/resources/${randomUUID()}`), true), 'NOT_AUTHORIZED', 403);
    await refused(from(bob, requestOf('update', '/ping'), true), 'NOT_AUTHORIZED', 403);
  });

  test('the peer itself: ping, closing its channel and invalidations run locally; a federated read is a 403', async () => {
    for (const request of [requestOf('update', '/ping'), requestOf('delete', `/ecdhe/${randomUUID()}`), requestOf('update', '/federation/invalidations')]) {
      assert.equal(resolve(from(peerPrincipal, request, true)).resolved.dispatch, 'local', request.uri);
    }
    await refused(from(peerPrincipal, requestOf('retrieve', `/keys/${randomUUID()}`), true), 'NOT_AUTHORIZED', 403);
  });

  test('the peers\' inbox is the peers\' only: a user is refused it', async () => {
    await refused(from(alice, requestOf('update', '/federation/invalidations')), 'NOT_AUTHORIZED', 403);
  });
});

describe('the access gate', () => {
  test('an anonymous bearer may read keys and ping; creating keys or resources is a 403', async () => {
    assert.equal(resolve(from(anonymous, requestOf('retrieve', `/keys/${randomUUID()}`))).resolved.dispatch, 'local');
    assert.equal(resolve(from(anonymous, requestOf('update', '/ping'))).resolved.spec.name, 'ping');
    await refused(from(anonymous, requestOf('create', '/keys', { count: 1 })), 'NOT_AUTHORIZED', 403);
    await refused(from(anonymous, requestOf('create', '/resources')), 'NOT_AUTHORIZED', 403);
  });
});
