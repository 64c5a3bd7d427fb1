/**
 * Compliance access (PROTOCOL.md §4 "Compliance"; src/identity/authenticator.ts actingFor,
 * src/policy.ts mayActFor and the operation table's `agent` caller): a principal with the
 * `orgAgent` role names a user of its organisation in `credential.onBehalfOf` and reads as that
 * user — the four reads only, nothing else — audited with both identities.
 *
 * End-to-end on a real KMS serving two organisations' domains (a.example, c.example), each
 * decision tested both ways.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { generateEphemeralKeyPair, type KeyRep, type ResourceRep } from '@openkms/protocol';
import { postBatch, type TestClient } from '../support/client.js';
import { manualClock, startDevKms, type DevKms } from '../../src/testing/harness.js';
import { verifyAudit } from '../../src/audit/audit.js';
import { withRootKey } from '../../src/server.js';
import { addAuthorizations, connect, expectOk, expectStatus, getKey, listAuthorizations, newKeys, newResource, send, type Answer } from '../support/operations.js';

const clock = manualClock();
let kms: DevKms;
let alice: TestClient;
let bob: TestClient;
/** An orgAgent of a.example, and its bearer. */
let officer: TestClient;
let officerBearer: string;
let shared: ResourceRep;
let sharedKey: KeyRep;

/** The officer's request read as `user` (a client also sends credential.userId: ignored). */
function asUser(user: string, body: Record<string, unknown>, via: TestClient = officer): Promise<Answer> {
  return send(via, { ...body, client: { clientId: via.clientId, credential: { bearer: via.bearer, userId: user, onBehalfOf: user } } });
}

before(async () => {
  kms = await startDevKms({ now: clock.now, domains: ['a.example', 'c.example'] });
  [alice, bob] = await Promise.all([connect(kms, 'alice@a.example'), connect(kms, 'bob@a.example', { clientId: 'bobs-laptop' })]);
  officerBearer = await kms.token('officer@a.example', { roles: ['orgAgent'] });
  officer = await connect(kms, 'officer@a.example', { roles: ['orgAgent'] });
  sharedKey = (await newKeys(alice))[0]!;
  shared = await newResource(alice, { userIds: ['bob@a.example'], keyUris: [sharedKey.uri] });
});

after(() => kms?.close());

describe('compliance: an orgAgent reads as a user of its organisation', () => {
  test('the four reads answer what the user would get: bound key, the KRO, its keys, its authorizations', async () => {
    const key = await asUser('bob@a.example', { method: 'retrieve', uri: sharedKey.uri });
    expectStatus(key, 200, 'retrieve key');
    assert.equal(key.key.jwk.k, sharedKey.jwk.k);
    expectStatus(await asUser('bob@a.example', { method: 'retrieve', uri: shared.uri }), 200, 'retrieve resource');
    const keys = await asUser('bob@a.example', { method: 'retrieve', uri: `${shared.uri}/keys` });
    expectStatus(keys, 200, 'retrieve resource keys');
    assert.deepEqual(keys.keys.map((k: KeyRep) => k.uri), [sharedKey.uri]);
    const auths = await asUser('bob@a.example', { method: 'retrieve', uri: `${shared.uri}/authorizations` });
    expectStatus(auths, 200, 'retrieve authorizations');
    assert.ok(auths.authorizations.some((a: { authId: string }) => a.authId === 'bob@a.example'));
  });

  test('only what the user may read: a KRO the officer is authorized on but the user is not → 403', async () => {
    const [own] = await newKeys(officer);
    const officers = await newResource(officer, { keyUris: [own!.uri] });
    expectStatus(await getKey(officer, own!.uri), 200, 'the officer itself');
    expectStatus(await asUser('bob@a.example', { method: 'retrieve', uri: own!.uri }), 403, 'as bob');
    expectStatus(await asUser('bob@a.example', { method: 'retrieve', uri: officers.uri }), 403, 'as bob: the KRO');
    expectStatus(await asUser('bob@a.example', { method: 'retrieve', uri: `${officers.uri}/keys` }), 403, 'as bob: its keys');
  });

  test("the user's own unbound keys from any client; the user alone only from the creating client", async () => {
    const [unbound] = await newKeys(bob);
    const bobElsewhere = await connect(kms, 'bob@a.example', { clientId: 'bobs-phone' });
    expectStatus(await getKey(bobElsewhere, unbound!.uri), 403, 'bob from another client');
    const read = await asUser('bob@a.example', { method: 'retrieve', uri: unbound!.uri });
    expectStatus(read, 200, 'officer as bob');
    assert.equal(read.key.jwk.k, unbound!.jwk.k);
    // Another user's unbound key stays the creator's.
    const [alices] = await newKeys(alice);
    expectStatus(await asUser('bob@a.example', { method: 'retrieve', uri: alices!.uri }), 403, "alice's unbound key as bob");
  });

  test('read only: every create, update and delete with onBehalfOf → 403, and nothing changes', async () => {
    const [bobsKey] = await newKeys(bob);
    const writes: Record<string, unknown>[] = [
      { method: 'create', uri: '/keys', count: 1 },
      { method: 'create', uri: '/resources', userIds: ['bob@a.example'] },
      { method: 'update', uri: bobsKey!.uri, resourceUri: shared.uri },
      { method: 'create', uri: '/authorizations', resourceUri: shared.uri, authIds: ['mallory@a.example'] },
      { method: 'delete', uri: `${shared.uri}/authorizations?authId=${encodeURIComponent('bob@a.example')}` },
      { method: 'delete', uri: '/authorizations', resourceUri: shared.uri, authIds: ['bob@a.example'] },
      { method: 'delete', uri: shared.authorizationUris[0]! },
      { method: 'update', uri: '/ping' },
      { method: 'create', uri: '/cmk', assignedOrgId: 'a.example' },
      { method: 'retrieve', uri: '/cmk' },
      { method: 'delete', uri: officer.channelUri },
    ];
    for (const body of writes) expectStatus(await asUser('bob@a.example', body), 403, `${String(body.method)} ${String(body.uri)}`);
    const auths = await listAuthorizations(alice, shared.uri);
    assert.deepEqual(auths.authorizations.map((a: { authId: string }) => a.authId).sort(), ['alice@a.example', 'bob@a.example']);
    expectStatus(await getKey(bob, bobsKey!.uri), 200, 'still unbound');
    assert.equal((await getKey(bob, bobsKey!.uri)).key.resourceUri, undefined);
    // The officer's channel is still alive.
    await expectOk(officer, { method: 'update', uri: '/ping' });
  });

  test('a handshake with onBehalfOf → 403 (the channel is the agent’s own)', async () => {
    const answer = (await officer.decode(
      (await postBatch(kms.url, [
        await officer.sealStatic({
          requestId: randomUUID(),
          client: { clientId: officer.clientId, credential: { bearer: officer.bearer, onBehalfOf: 'bob@a.example' } },
          method: 'create',
          uri: '/ecdhe',
          jwk: (await generateEphemeralKeyPair()).publicJwk,
        }),
      ]))[0]!,
    )) as Answer;
    expectStatus(answer, 403, 'handshake');
  });

  test('onBehalfOf naming the agent itself is its own access, writes included', async () => {
    const created = await asUser('officer@a.example', { method: 'create', uri: '/keys', count: 1 });
    expectStatus(created, 201, 'create keys as itself');
    assert.equal(created.keys[0].userId, 'officer@a.example');
  });
});

describe('compliance: refused', () => {
  test('without the orgAgent role → 403 (kmsAdmin is not enough)', async () => {
    for (const roles of [[], ['kmsAdmin']]) {
      const someone = await connect(kms, 'eve@a.example', { roles });
      expectStatus(await asUser('bob@a.example', { method: 'retrieve', uri: sharedKey.uri }, someone), 403, `roles ${roles.join(',') || 'none'}`);
    }
  });

  test("a user of another organisation (a domain this KMS serves) → 403; an agent of that organisation reads its own", async () => {
    const carol = await connect(kms, 'carol@c.example');
    const [carols] = await newKeys(carol);
    const theirs = await newResource(carol, { keyUris: [carols!.uri] });
    expectStatus(await asUser('carol@c.example', { method: 'retrieve', uri: carols!.uri }), 403, 'a.example officer as carol');
    const cOfficer = await connect(kms, 'officer@c.example', { roles: ['orgAgent'] });
    expectStatus(await asUser('carol@c.example', { method: 'retrieve', uri: `${theirs.uri}/keys` }, cOfficer), 200, 'c.example officer as carol');
    expectStatus(await asUser('bob@a.example', { method: 'retrieve', uri: sharedKey.uri }, cOfficer), 403, 'c.example officer as bob');
  });

  test('a user of a domain this KMS does not serve → 403; not a user id → 400 naming the field', async () => {
    expectStatus(await asUser('bob@b.example', { method: 'retrieve', uri: sharedKey.uri }), 403, 'another KMS’s user');
    const invalid = await asUser('bob@', { method: 'retrieve', uri: sharedKey.uri });
    expectStatus(invalid, 400, 'bob@');
    assert.match(invalid.reason!, /credential\.onBehalfOf/);
    for (const bad of ['\ud800@a.example', 'bob\u0000@a.example', '']) {
      const answer = await send(officer, { method: 'retrieve', uri: sharedKey.uri, client: { clientId: officer.clientId, credential: { bearer: officer.bearer, onBehalfOf: bad } } });
      expectStatus(answer, 400, JSON.stringify(bad));
      assert.match(answer.reason!, /onBehalfOf/);
    }
  });

  test("the agent's bearer on the user's channel → 403: a channel is its owner's", async () => {
    const answer = await send(bob, { method: 'retrieve', uri: sharedKey.uri, client: { clientId: bob.clientId, credential: { bearer: officerBearer, onBehalfOf: 'bob@a.example' } } });
    expectStatus(answer, 403, "officer's bearer on bob's channel");
  });
});

describe('compliance: audited with both identities', () => {
  test('the agent as principal, the user as onBehalfOf, and the chain verifies', async () => {
    const requestId = randomUUID();
    expectStatus(await send(officer, { requestId, method: 'retrieve', uri: sharedKey.uri, client: { clientId: officer.clientId, credential: { bearer: officer.bearer, onBehalfOf: 'bob@a.example' } } }), 200);
    const refused = randomUUID();
    expectStatus(await send(officer, { requestId: refused, method: 'create', uri: '/keys', count: 1, client: { clientId: officer.clientId, credential: { bearer: officer.bearer, onBehalfOf: 'bob@a.example' } } }), 403);
    const noRole = randomUUID();
    const eve = await connect(kms, 'eve@a.example');
    expectStatus(await send(eve, { requestId: noRole, method: 'retrieve', uri: sharedKey.uri, client: { clientId: eve.clientId, credential: { bearer: eve.bearer, onBehalfOf: 'bob@a.example' } } }), 403);
    const plain = randomUUID();
    await addAuthorizations(alice, shared.uri, ['dave@a.example']).then((a) => expectStatus(a, 201));
    expectStatus(await send(officer, { requestId: plain, method: 'update', uri: '/ping' }), 200);
    const rows = await kms.store.readAudit(0, 100_000);
    const by = (id: string) => rows.find((r) => r.requestId === id);
    assert.equal(by(requestId)?.principal, 'officer@a.example');
    assert.equal(by(requestId)?.onBehalfOf, 'bob@a.example');
    assert.equal(by(requestId)?.status, 200);
    assert.equal(by(refused)?.onBehalfOf, 'bob@a.example');
    assert.equal(by(refused)?.status, 403);
    assert.equal(by(plain)?.onBehalfOf, null);
    assert.deepEqual([by(noRole)?.principal, by(noRole)?.onBehalfOf, by(noRole)?.status], ['eve@a.example', 'bob@a.example', 403], 'refused: both, as asked');
    const verified = await verifyAudit(kms.store, await withRootKey(kms.config, (root) => root.auditKey()));
    assert.equal(verified.ok, true, JSON.stringify(verified));
  });
});
