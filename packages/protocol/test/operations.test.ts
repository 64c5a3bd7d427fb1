/**
 * The operation table (src/operations.ts): its entries are consistent with one another, every
 * method and path of it is routed to its operation and nothing else is, and the callers and
 * federation modes say what PROTOCOL.md §5–6 says.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import type { Method } from '../src/messages.js';
import { matchOperation, operation, operations, operationsFor, type Caller, type OperationName } from '../src/operations.js';

const METHODS: readonly Method[] = ['create', 'retrieve', 'update', 'delete'];
const CALLERS: readonly Caller[] = ['user', 'anonymous', 'peer', 'peerUser', 'agent'];

/** The path segments of a request for a path pattern, each `{id}` filled with `id`. */
const segmentsOf = (path: string, id: string) => path.split('/').filter(Boolean).map((part) => (part === '{id}' ? id : part));

describe('the table', () => {
  test('names are unique, and each name finds its own entry', () => {
    const names = operations.map((o) => o.name);
    assert.equal(new Set(names).size, names.length);
    for (const o of operations) assert.equal(operation(o.name), o);
  });

  test('no two entries share a method and a path pattern (routing would be ambiguous)', () => {
    const routes = operations.map((o) => `${o.method} ${o.path}`);
    assert.equal(new Set(routes).size, routes.length);
  });

  test('every path is absolute, every entry names its callers, its section and what it does', () => {
    for (const o of operations) {
      assert.match(o.path, /^(\/([a-z]+|\{id\}))+$/, o.name);
      assert.ok(o.callers.length > 0, o.name);
      assert.ok(o.section.length > 0 && o.summary.length > 0, o.name);
    }
  });

  test('createEphemeralKey is the only operation under the static key', () => {
    assert.deepEqual(
      operations.filter((o) => o.key === 'static').map((o) => o.name),
      ['createEphemeralKey'],
    );
    assert.equal(operation('deleteEphemeralKey').key, 'channel');
  });

  test('an operation is federated (read or forward) exactly when a peer may call it for its user', () => {
    for (const o of operations) {
      const forPeerUser = (o.callers as readonly Caller[]).includes('peerUser');
      assert.equal(forPeerUser, o.federation !== 'local', `${o.name}: federation ${o.federation}, callers ${o.callers.join(',')}`);
    }
    assert.deepEqual(
      operations.filter((o) => o.federation === 'read').map((o) => o.name),
      ['retrieveKey', 'retrieveResourceKeys'],
    );
  });

  test('the operations naming their object by resourceUri are the two that take it as their subject', () => {
    assert.deepEqual(
      operations.filter((o) => o.subject === 'resourceUri').map((o) => o.name),
      ['createAuthorizations', 'bulkDeleteAuthorizations'],
    );
    // bindKey carries a resourceUri too, but acts on the key its URI names.
    assert.equal(operation('bindKey').subject, 'uri');
  });
});

describe('operationsFor', () => {
  const expected: Record<Caller, OperationName[]> = {
    user: operations.map((o) => o.name).filter((n) => n !== 'receiveInvalidations'),
    anonymous: ['createEphemeralKey', 'deleteEphemeralKey', 'retrieveKey', 'retrieveResourceKeys', 'ping'],
    peer: ['createEphemeralKey', 'deleteEphemeralKey', 'ping', 'receiveInvalidations'],
    // The federated ones: reads and authorization management (§6).
    peerUser: ['retrieveKey', 'retrieveResourceKeys', 'createAuthorizations', 'retrieveAuthorizations', 'deleteAuthorization', 'deleteAuthorizationByAuthId', 'bulkDeleteAuthorizations'],
    // Compliance access reads, and nothing else (§4 "Compliance"): not even a handshake or a ping.
    agent: ['retrieveResource', 'retrieveKey', 'retrieveResourceKeys', 'retrieveAuthorizations'],
  };

  for (const caller of CALLERS) {
    test(`${caller}: exactly the operations the table names it for`, () => {
      assert.deepEqual([...operationsFor(caller)].sort(), [...expected[caller]].sort());
    });
  }

  test('a peer\'s user never handshakes or pings itself: the peer keeps the channel', () => {
    for (const name of ['createEphemeralKey', 'deleteEphemeralKey', 'ping'] as const) assert.equal(operationsFor('peerUser').has(name), false, name);
  });
});

describe('matchOperation', () => {
  test('every method and path of the table is routed to its own operation, with its id', () => {
    for (const o of operations) {
      const id = randomUUID();
      const found = matchOperation(o.method, segmentsOf(o.path, id));
      assert.equal(found?.spec.name, o.name, `${o.method} ${o.path}`);
      assert.equal(found.id, o.path.includes('{id}') ? id : '', o.name);
    }
  });

  test('{id} is a UUID only: anything else in its place matches nothing', () => {
    for (const o of operations.filter((op) => op.path.includes('{id}'))) {
      for (const bad of ['not-a-uuid', randomUUID().toUpperCase(), `${randomUUID()}x`, '..', '%2e%2e']) {
        assert.equal(matchOperation(o.method, segmentsOf(o.path, bad)), undefined, `${o.name} with ${bad}`);
      }
    }
  });

  test('a method the table does not give a path matches nothing', () => {
    for (const o of operations) {
      const segments = segmentsOf(o.path, randomUUID());
      for (const method of METHODS.filter((m) => !operations.some((other) => other.method === m && other.path === o.path))) {
        assert.equal(matchOperation(method, segments), undefined, `${method} ${o.path}`);
      }
    }
    assert.equal(matchOperation('CREATE', ['keys']), undefined, 'methods are lower case');
    assert.equal(matchOperation('patch', ['ping']), undefined);
  });

  test('one method, several paths: each goes to its own operation', () => {
    const id = randomUUID();
    assert.equal(matchOperation('retrieve', ['resources', id])?.spec.name, 'retrieveResource');
    assert.equal(matchOperation('retrieve', ['resources', id, 'keys'])?.spec.name, 'retrieveResourceKeys');
    assert.equal(matchOperation('retrieve', ['resources', id, 'authorizations'])?.spec.name, 'retrieveAuthorizations');
    assert.equal(matchOperation('delete', ['resources', id, 'authorizations'])?.spec.name, 'deleteAuthorizationByAuthId');
    assert.equal(matchOperation('delete', ['authorizations'])?.spec.name, 'bulkDeleteAuthorizations');
    assert.equal(matchOperation('delete', ['authorizations', id])?.spec.name, 'deleteAuthorization');
    assert.equal(matchOperation('retrieve', ['cmk'])?.spec.name, 'listCmks');
    assert.equal(matchOperation('create', ['cmk'])?.spec.name, 'createCmk');
  });

  test('a segment more, a segment less, or another name matches nothing', () => {
    const id = randomUUID();
    assert.equal(matchOperation('retrieve', ['keys', id, 'extra']), undefined);
    assert.equal(matchOperation('retrieve', ['keys']), undefined);
    assert.equal(matchOperation('update', ['keys']), undefined);
    assert.equal(matchOperation('create', ['ecdhe', id]), undefined);
    assert.equal(matchOperation('retrieve', ['resources', id, 'key']), undefined);
    assert.equal(matchOperation('retrieve', ['Keys', id]), undefined);
    assert.equal(matchOperation('update', ['federation']), undefined);
    assert.equal(matchOperation('update', []), undefined);
    assert.equal(matchOperation('retrieve', [id]), undefined);
  });
});
