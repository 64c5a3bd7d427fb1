/**
 * Unit tests of src/policy.ts (PROTOCOL.md §1 KRO authIds, §5 who may do what): pure functions
 * over plain data, with an in-memory authorization loader that counts what it was asked.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { AnonymousPrincipal, PeerPrincipal, Principal, UserPrincipal } from '../src/identity/principal.js';
import { operations, operationsFor, type OperationName } from '@openkms/protocol';
import { MAX_KRO_DEPTH } from '../src/limits.js';
import {
  Roles,
  isAuthorized,
  mayActFor,
  mayAdministerCmks,
  hasRoleFor,
  mayUseOperation,
  ownsUnboundKey,
  visibleCmks,
  type AuthorizationLoader,
} from '../src/policy.js';
import type { AuthorizationRow, CmkRow, KeyRow } from '../src/model.js';

const AUTHORITY = 'kms.a.example';
const PREFIX = `kms://${AUTHORITY}/resources/`;
const kro = (id: string) => `${PREFIX}${id}`;

function user(id: string, roles: string[] = [], orgId?: string): UserPrincipal {
  const domain = id.slice(id.lastIndexOf('@') + 1);
  return { kind: 'user', id, domain, roles, orgId: orgId ?? domain, expiresAt: Number.MAX_SAFE_INTEGER };
}

function anonymous(resourceId: string): AnonymousPrincipal {
  const authorizationId = randomUUID();
  return {
    kind: 'anonymous',
    authorizationUri: `kms://${AUTHORITY}/authorizations/${authorizationId}`,
    authorizationId,
    resourceId,
    expiresAt: Number.MAX_SAFE_INTEGER,
  };
}

const peer: PeerPrincipal = { kind: 'peer', authority: 'kms.b.example', domains: ['b.example'], expiresAt: Number.MAX_SAFE_INTEGER };

/** An in-memory authorization table: resource id -> authIds (null = anonymous). */
class Table {
  readonly rows = new Map<string, AuthorizationRow[]>();
  readonly loads: string[] = [];

  add(resourceId: string, ...authIds: (string | null)[]): this {
    const list = this.rows.get(resourceId) ?? [];
    for (const authId of authIds) list.push({ id: randomUUID(), resourceId, authId, roleUri: null, createdAt: 0 });
    this.rows.set(resourceId, list);
    return this;
  }

  readonly load: AuthorizationLoader = async (resourceId) => {
    this.loads.push(resourceId);
    return this.rows.get(resourceId) ?? [];
  };
}

/** ids[0] lists ids[1] as a KRO authId, ids[1] lists ids[2], … (`hops` links); returns the ids. */
function chain(table: Table, hops: number): string[] {
  const ids = Array.from({ length: hops + 1 }, () => randomUUID());
  for (let i = 0; i < hops; i++) table.add(ids[i]!, 'someone@a.example', kro(ids[i + 1]!));
  return ids;
}

const alice = user('alice@a.example');
const bob = user('bob@a.example');

describe('isAuthorized: direct authIds', () => {
  test('a principal listed on the resource is authorized', async () => {
    const t = new Table().add('r', 'bob@a.example', 'alice@a.example');
    assert.equal(await isAuthorized(alice, 'r', t.load, PREFIX), true);
  });

  test('a principal not listed is refused', async () => {
    const t = new Table().add('r', 'bob@a.example', 'carol@a.example');
    assert.equal(await isAuthorized(alice, 'r', t.load, PREFIX), false);
  });

  test('a resource with no authorizations (or unknown to the loader) authorizes nobody', async () => {
    const t = new Table();
    assert.equal(await isAuthorized(alice, 'missing', t.load, PREFIX), false);
    assert.deepEqual(t.loads, ['missing']);
  });

  test('anonymous authorization rows (authId null) authorize no user', async () => {
    const t = new Table().add('r', null, null);
    assert.equal(await isAuthorized(alice, 'r', t.load, PREFIX), false);
  });

  test('authIds compare exactly: another user with a similar id is refused', async () => {
    const t = new Table().add('r', 'alice@a.example.org', 'xalice@a.example', 'alice@b.example');
    assert.equal(await isAuthorized(alice, 'r', t.load, PREFIX), false);
  });

  test('a direct hit needs one load only', async () => {
    const t = new Table().add('r', 'alice@a.example', kro('other'));
    assert.equal(await isAuthorized(alice, 'r', t.load, PREFIX), true);
    assert.deepEqual(t.loads, ['r']);
  });
});

describe('isAuthorized: KRO authIds (PROTOCOL.md §1)', () => {
  test('a principal authorized on a KRO listed as authId is authorized', async () => {
    const t = new Table().add('r2', kro('r1')).add('r1', 'bob@a.example');
    assert.equal(await isAuthorized(bob, 'r2', t.load, PREFIX), true);
    assert.equal(await isAuthorized(alice, 'r2', t.load, PREFIX), false);
  });

  test('KRO authIds are followed transitively', async () => {
    const t = new Table().add('r3', kro('r2')).add('r2', kro('r1')).add('r1', 'bob@a.example');
    assert.equal(await isAuthorized(bob, 'r3', t.load, PREFIX), true);
  });

  test('authorization does not flow backwards: a principal of the outer resource gains nothing on the KRO', async () => {
    const t = new Table().add('r2', kro('r1'), 'alice@a.example').add('r1', 'bob@a.example');
    assert.equal(await isAuthorized(alice, 'r1', t.load, PREFIX), false);
  });

  test('a KRO of another KMS is not followed locally', async () => {
    const t = new Table().add('r2', 'kms://kms.b.example/resources/r1', 'kms://kms.a.example.evil/resources/r1').add('r1', 'bob@a.example');
    assert.equal(await isAuthorized(bob, 'r2', t.load, PREFIX), false);
    assert.deepEqual(t.loads, ['r2']);
  });

  test('a removed link no longer authorizes', async () => {
    const t = new Table().add('r2', kro('r1')).add('r1', 'bob@a.example');
    assert.equal(await isAuthorized(bob, 'r2', t.load, PREFIX), true);
    t.rows.set('r2', []);
    assert.equal(await isAuthorized(bob, 'r2', t.load, PREFIX), false);
  });

  test('cycles are ignored: the walk ends and each resource is loaded once', async () => {
    const t = new Table().add('r0', kro('r1')).add('r1', kro('r2')).add('r2', kro('r0'), kro('r1'));
    assert.equal(await isAuthorized(bob, 'r0', t.load, PREFIX), false);
    assert.deepEqual([...t.loads].sort(), ['r0', 'r1', 'r2']);
  });

  test('a resource listing itself is a cycle too', async () => {
    const t = new Table().add('r0', kro('r0'));
    assert.equal(await isAuthorized(bob, 'r0', t.load, PREFIX), false);
    assert.deepEqual(t.loads, ['r0']);
  });

  test('a principal inside a cycle is still found', async () => {
    const t = new Table().add('r0', kro('r1')).add('r1', kro('r0'), kro('r2')).add('r2', kro('r0'), 'bob@a.example');
    assert.equal(await isAuthorized(bob, 'r0', t.load, PREFIX), true);
  });

  test('diamonds load the shared KRO once', async () => {
    const t = new Table().add('r0', kro('a'), kro('b')).add('a', kro('c')).add('b', kro('c')).add('c', 'carol@a.example');
    assert.equal(await isAuthorized(bob, 'r0', t.load, PREFIX), false);
    assert.equal(t.loads.filter((id) => id === 'c').length, 1);
    assert.equal(t.loads.length, 4);
  });

  test('MAX_KRO_DEPTH is 8', () => {
    assert.equal(MAX_KRO_DEPTH, 8);
  });

  // Depth = number of KRO hops from the resource asked about to the resource that lists the
  // principal directly (0 = listed on the resource itself).
  for (let hops = 0; hops <= MAX_KRO_DEPTH; hops++) {
    test(`a principal ${hops} KRO hop(s) away is authorized`, async () => {
      const t = new Table();
      const ids = chain(t, hops);
      t.add(ids[hops]!, 'bob@a.example');
      assert.equal(await isAuthorized(bob, ids[0]!, t.load, PREFIX), true);
    });
  }

  test('a principal 9 KRO hops away is refused, and the 10th resource is never loaded', async () => {
    const t = new Table();
    const ids = chain(t, MAX_KRO_DEPTH + 1);
    t.add(ids[MAX_KRO_DEPTH + 1]!, 'bob@a.example');
    assert.equal(await isAuthorized(bob, ids[0]!, t.load, PREFIX), false);
    assert.deepEqual(t.loads, ids.slice(0, MAX_KRO_DEPTH + 1));
  });

  test('depth counts the shortest path: a far KRO also reachable in fewer hops is found', async () => {
    const t = new Table();
    const ids = chain(t, MAX_KRO_DEPTH + 3);
    const last = ids[ids.length - 1]!;
    t.add(last, 'bob@a.example');
    t.add(ids[1]!, kro(last)); // ids[0] -> ids[1] -> last: 2 hops
    assert.equal(await isAuthorized(bob, ids[0]!, t.load, PREFIX), true);
  });
});

describe('isAuthorized: other principals', () => {
  test('an anonymous principal is authorized on its own resource, without any lookup', async () => {
    const t = new Table();
    assert.equal(await isAuthorized(anonymous('r1'), 'r1', t.load, PREFIX), true);
    assert.deepEqual(t.loads, []);
  });

  test('an anonymous principal is refused on any other resource, even one that lists its resource as a KRO', async () => {
    const t = new Table().add('r2', kro('r1'), null);
    assert.equal(await isAuthorized(anonymous('r1'), 'r2', t.load, PREFIX), false);
  });

  test('a peer principal is never authorized through the local policy', async () => {
    const t = new Table().add('r', 'kms://kms.b.example', 'bob@b.example');
    assert.equal(await isAuthorized(peer, 'r', t.load, PREFIX), false);
  });
});

describe('ownsUnboundKey', () => {
  const key: KeyRow = {
    id: randomUUID(),
    userId: 'alice@a.example',
    clientId: 'client-1',
    createdAt: 0,
    expiresAt: 1,
    resourceId: null,
    bindDate: null,
    bindSeq: null,
    cmkId: randomUUID(),
    sealed: new Uint8Array(0),
  };

  test('the creator from the creating client owns it', () => {
    assert.equal(ownsUnboundKey(alice, key, 'client-1'), true);
  });

  test('the creator from another client does not', () => {
    assert.equal(ownsUnboundKey(alice, key, 'client-2'), false);
  });

  test('another user with the same clientId does not', () => {
    assert.equal(ownsUnboundKey(bob, key, 'client-1'), false);
  });

  test('anonymous and peer principals never do', () => {
    assert.equal(ownsUnboundKey(anonymous('r'), key, 'client-1'), false);
    assert.equal(ownsUnboundKey(peer, key, 'client-1'), false);
  });
});

describe('mayActFor (compliance access)', () => {
  const domains = ['a.example', 'c.example'];
  test('an orgAgent acts for users of its organisation only: by default its own domain', () => {
    const agent = user('officer@a.example', [Roles.orgAgent]);
    assert.equal(mayActFor(agent, 'bob@a.example', domains), true);
    assert.equal(mayActFor(agent, 'carol@c.example', domains), false);
  });

  test('an organisation id that is one of the domains is that domain; one that is none (an IdP org id) means the agent’s own domain', () => {
    assert.equal(mayActFor(user('officer@a.example', [Roles.orgAgent], 'c.example'), 'carol@c.example', domains), true);
    assert.equal(mayActFor(user('officer@a.example', [Roles.orgAgent], 'c.example'), 'bob@a.example', domains), false);
    const uuidOrg = user('officer@a.example', [Roles.orgAgent], randomUUID());
    assert.equal(mayActFor(uuidOrg, 'bob@a.example', domains), true);
    assert.equal(mayActFor(uuidOrg, 'carol@c.example', domains), false);
  });

  test('without the orgAgent role (kmsAdmin included, names case-sensitive), or not a user: never', () => {
    for (const roles of [[], [Roles.kmsAdmin], ['orgagent']]) assert.equal(mayActFor(user('officer@a.example', roles), 'bob@a.example', domains), false, roles.join());
    const anonymous: AnonymousPrincipal = { kind: 'anonymous', authorizationUri: 'kms://kms.a.example/authorizations/x', authorizationId: 'x', resourceId: 'r', expiresAt: 1 };
    assert.equal(mayActFor(anonymous, 'bob@a.example', domains), false);
  });
});

describe('mayAdministerCmks / visibleCmks', () => {
  const admin = user('root@a.example', [Roles.kmsAdmin]);
  const agent = user('agent@a.example', [Roles.orgAgent]);
  const agentOrg = user('agent2@a.example', [Roles.orgAgent], 'org-42');
  const plain = user('alice@a.example', ['user']);

  test('role names', () => {
    assert.equal(Roles.kmsAdmin, 'kmsAdmin');
    assert.equal(Roles.orgAgent, 'orgAgent');
  });

  test('kmsAdmin administers any CMK: global, own org, other org', () => {
    assert.equal(mayAdministerCmks(admin, null), true);
    assert.equal(mayAdministerCmks(admin, 'a.example'), true);
    assert.equal(mayAdministerCmks(admin, 'b.example'), true);
  });

  test('orgAgent administers its own organisation only (the org defaults to the domain)', () => {
    assert.equal(mayAdministerCmks(agent, 'a.example'), true);
    assert.equal(mayAdministerCmks(agent, 'b.example'), false);
    assert.equal(mayAdministerCmks(agentOrg, 'org-42'), true);
    assert.equal(mayAdministerCmks(agentOrg, 'a.example'), false);
  });

  test('orgAgent never administers the unassigned (global) CMK', () => {
    assert.equal(mayAdministerCmks(agent, null), false);
  });

  test('a plain user, an anonymous principal and a peer administer nothing', () => {
    for (const p of [plain, user('nobody@a.example'), anonymous('r'), peer] as Principal[]) {
      assert.equal(mayAdministerCmks(p, null), false);
      assert.equal(mayAdministerCmks(p, 'a.example'), false);
    }
  });

  test('role names are case-sensitive', () => {
    const fake = user('x@a.example', ['KMSADMIN', 'orgagent']);
    assert.equal(mayAdministerCmks(fake, null), false);
    assert.equal(mayAdministerCmks(fake, 'a.example'), false);
  });

  test('both roles: kmsAdmin wins', () => {
    assert.equal(mayAdministerCmks(user('y@a.example', [Roles.orgAgent, Roles.kmsAdmin]), 'b.example'), true);
  });

  test('visibleCmks: all for kmsAdmin, own org for orgAgent, none for others', () => {
    const cmk = (assignedOrgId: string | null): CmkRow => ({ id: randomUUID(), state: 'active', assignedOrgId, createdAt: 0, sealed: new Uint8Array(0) });
    const cmks = [cmk(null), cmk('a.example'), cmk('b.example')];
    assert.deepEqual(visibleCmks(admin, cmks), cmks);
    assert.deepEqual(visibleCmks(agent, cmks), [cmks[1]]);
    assert.deepEqual(visibleCmks(plain, cmks), []);
    assert.deepEqual(visibleCmks(anonymous('r'), cmks), []);
  });
});

describe('mayUseOperation', () => {
  // The handshake is in the operation table too: a bearer opens its own channel.
  const allowedAnonymous = ['createEphemeralKey', 'retrieveKey', 'retrieveResourceKeys', 'ping', 'deleteEphemeralKey'];
  const names: OperationName[] = operations.map((o) => o.name);
  const admin = user('root@a.example', ['kmsAdmin']);

  test('the operation table has the operations of §5', () => {
    for (const name of [
      'createEphemeralKey',
      'deleteEphemeralKey',
      'createResource',
      'retrieveResource',
      'createKeys',
      'bindKey',
      'retrieveKey',
      'retrieveResourceKeys',
      'createAuthorizations',
      'retrieveAuthorizations',
      'deleteAuthorization',
      'deleteAuthorizationByAuthId',
      'bulkDeleteAuthorizations',
      'ping',
      'createCmk',
      'updateCmk',
      'listCmks',
    ]) {
      assert.ok((names as string[]).includes(name), name);
    }
  });

  test('a user may use every operation but the peers\' inbox (the operation then applies its own policy)', () => {
    for (const name of names) assert.equal(mayUseOperation(alice, name), name !== 'receiveInvalidations', name);
  });

  test('the admin API names its roles: a user needs one of them, the rest of the table none', () => {
    const adminOps = operations.filter((o) => o.roles.length > 0).map((o) => o.name);
    assert.deepEqual(adminOps, ['createCmk', 'updateCmk', 'listCmks', 'retrieveCmk']);
    for (const name of adminOps) {
      assert.equal(hasRoleFor(alice, name), false, name);
      assert.equal(hasRoleFor(admin, name), true, name);
      assert.equal(hasRoleFor(user('agent@a.example', ['orgAgent']), name), true, name);
      assert.equal(hasRoleFor(anonymous('r'), name), false, name);
    }
    for (const name of names.filter((n) => !adminOps.includes(n))) assert.equal(hasRoleFor(admin, name), false, name);
  });

  test('an anonymous bearer may only read keys, ping and close its channel', () => {
    assert.deepEqual([...operationsFor('anonymous')].sort(), [...allowedAnonymous].sort());
    for (const name of names) {
      assert.equal(mayUseOperation(anonymous('r'), name), allowedAnonymous.includes(name), name);
    }
  });

  test('an anonymous bearer is refused creating keys, resources and authorizations, and the admin API', () => {
    for (const name of ['createKeys', 'bindKey', 'createResource', 'retrieveResource', 'createAuthorizations', 'retrieveAuthorizations', 'deleteAuthorization', 'deleteAuthorizationByAuthId', 'bulkDeleteAuthorizations', 'createCmk', 'updateCmk', 'listCmks'] as const) {
      assert.equal(mayUseOperation(anonymous('r'), name), false, name);
    }
  });

  test('an unknown operation name is refused to anonymous bearers', () => {
    assert.equal(mayUseOperation(anonymous('r'), 'frobnicate' as OperationName), false);
  });

  test('a peer may use none of the local operations (its channel only does §6)', () => {
    for (const name of names) assert.equal(mayUseOperation(peer, name), false, name);
  });

  test('over its channel a peer may keep the channel and push invalidations; for its users, only §6', () => {
    assert.deepEqual([...operationsFor('peer')].sort(), ['createEphemeralKey', 'deleteEphemeralKey', 'ping', 'receiveInvalidations']);
    for (const name of names) assert.equal(mayUseOperation(peer, name, peer), operationsFor('peer').has(name), name);
    const federated = ['retrieveKey', 'retrieveResourceKeys', 'createAuthorizations', 'retrieveAuthorizations', 'deleteAuthorization', 'deleteAuthorizationByAuthId', 'bulkDeleteAuthorizations'];
    for (const name of names) assert.equal(mayUseOperation(user('bob@b.example'), name, peer), federated.includes(name), name);
  });
});
