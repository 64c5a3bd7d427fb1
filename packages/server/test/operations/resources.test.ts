/**
 * The resource operations (draft 4.7.3–4.7.4; src/operations/resources.ts): create (with authIds,
 * keyUris, ttl) and retrieve, and the KRO authIds that let one resource's members read another.
 *
 * End-to-end on a real KMS (real SQLite file, real keys, a real socket) driven by TestClient over
 * HTTP batch; time from manual clocks, never wall-clock timings.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { AuthorizationRep, KeyRep, ResourceRep } from '@openkms/protocol';
import type { TestClient } from '../support/client.js';
import { manualClock, type DevKms } from '../../src/testing/harness.js';
import {
  useMainKms,
  addAuthorizations,
  connect,
  count,
  DAY,
  expectOk,
  expectStatus,
  getKey,
  getResource,
  idOf,
  iso,
  listAuthorizations,
  newKeys,
  newResource,
  resourceKeys,
  SECOND,
  send,
  unknownUri,
  uriRe,
} from '../support/operations.js';

const clock = manualClock();
let main: DevKms;
let alice: TestClient;
let bob: TestClient;
let carol: TestClient;
let dave: TestClient;
useMainKms(clock, (shared) => ({ main, alice, bob, carol, dave } = shared));

describe('resources: create and retrieve (draft 4.7.3–4.7.4)', () => {
  test('create with authIds → 201: absolute uri, creator always authorized, authIds without @ belong to the first domain', async () => {
    const r = await expectOk(alice, { method: 'create', uri: '/resources', authIds: ['bob@a.example', 'carol'] }, 201);
    const resource = r.resource as ResourceRep;
    assert.match(resource.uri, uriRe('resources'));
    assert.deepEqual(resource.keyUris, []);
    assert.equal(resource.authorizationUris.length, 3);
    for (const uri of resource.authorizationUris) assert.match(uri, uriRe('authorizations'));
    assert.equal(resource.expirationDate, undefined);
    const list = (await expectOk(alice, { method: 'retrieve', uri: `${resource.uri}/authorizations` })).authorizations as AuthorizationRep[];
    assert.deepEqual(list.map((a) => a.authId).sort(), ['alice@a.example', 'bob@a.example', 'carol@a.example']);
    assert.deepEqual(list.map((a) => a.uri).sort(), [...resource.authorizationUris].sort());
    for (const c of [alice, bob, carol]) expectStatus(await getResource(c, resource.uri), 200);
    expectStatus(await getResource(dave, resource.uri), 403);
  });

  test('create with the alias userIds → 201, those users authorized', async () => {
    const resource = await newResource(alice, { userIds: ['bob@a.example'] });
    assert.equal(resource.authorizationUris.length, 2);
    expectStatus(await getResource(bob, resource.uri), 200);
    expectStatus(await getResource(carol, resource.uri), 403);
  });

  test('the creator is authorized with no authIds, and listing the creator does not duplicate it', async () => {
    const bare = await newResource(alice);
    assert.equal(bare.authorizationUris.length, 1);
    expectStatus(await getResource(alice, bare.uri), 200);
    const listed = await newResource(alice, { authIds: ['alice@a.example', 'bob@a.example', 'bob@a.example'] });
    assert.equal(listed.authorizationUris.length, 2);
    const empty = await newResource(alice, { authIds: [] });
    assert.equal(empty.authorizationUris.length, 1);
  });

  test('create with keyUris binds them: 201, keyUris absolute, keys carry resourceUri and bindDate', async () => {
    const [k1, k2] = await newKeys(alice, 2);
    const resource = await newResource(alice, { keyUris: [k1!.uri, `/keys/${idOf(k2!.uri)}`], authIds: ['bob@a.example'] });
    assert.deepEqual([...resource.keyUris].sort(), [k1!.uri, k2!.uri].sort());
    for (const k of [k1!, k2!]) {
      const got = (await expectOk(bob, { method: 'retrieve', uri: k.uri })).key as KeyRep;
      assert.equal(got.resourceUri, resource.uri);
      assert.equal(got.bindDate, iso(clock.now()));
      assert.equal(got.expirationDate, iso(clock.now() + 365 * DAY));
    }
  });

  test('keyUris: another user\'s key → 403, another client\'s key → 403, unknown key → 404, malformed → 400', async () => {
    const [bobsKey] = await newKeys(bob);
    expectStatus(await send(alice, { method: 'create', uri: '/resources', keyUris: [bobsKey!.uri] }), 403);
    const other = await connect(main, 'alice@a.example', { clientId: 'alice-resource-other' });
    const [otherKey] = await newKeys(other);
    expectStatus(await send(alice, { method: 'create', uri: '/resources', keyUris: [otherKey!.uri] }), 403);
    expectStatus(await send(alice, { method: 'create', uri: '/resources', keyUris: [unknownUri('keys')] }), 404);
    const bad = await send(alice, { method: 'create', uri: '/resources', keyUris: ['nope'] });
    expectStatus(bad, 400);
    assert.match(bad.reason!, /keyUris/);
    // Nothing of these refused creates remains bound.
    assert.equal((await getKey(bob, bobsKey!.uri)).key.resourceUri, undefined);
    assert.equal((await getKey(other, otherKey!.uri)).key.resourceUri, undefined);
  });

  test('all or nothing: one already-bound key in keyUris → 409; no resource, no authorization is created, the other key stays unbound', async () => {
    const [free, taken] = await newKeys(alice, 2);
    await newResource(alice, { keyUris: [taken!.uri] });
    const resourcesBefore = count(main, 'SELECT count(*) AS n FROM resources');
    const r = await send(alice, { method: 'create', uri: '/resources', keyUris: [free!.uri, taken!.uri], authIds: ['all-or-nothing@a.example'] });
    expectStatus(r, 409);
    assert.equal(r.resource, undefined);
    assert.equal(count(main, 'SELECT count(*) AS n FROM resources'), resourcesBefore, 'the resource does not exist afterwards');
    assert.equal(count(main, 'SELECT count(*) AS n FROM authorizations WHERE auth_id = ?', 'all-or-nothing@a.example'), 0);
    const got = (await getKey(alice, free!.uri)).key as KeyRep;
    assert.equal(got.resourceUri, undefined);
    assert.equal(got.bindDate, undefined);
    // And the free key can still be bound elsewhere.
    await newResource(alice, { keyUris: [free!.uri] });
  });

  test('authIds: 100 → 201; over 100 → 413 (authIds and userIds); keyUris over 100 → 413', async () => {
    const hundred = Array.from({ length: 100 }, (_, i) => `member${i}@a.example`);
    const resource = await newResource(alice, { authIds: hundred });
    assert.equal(resource.authorizationUris.length, 101);
    const before = count(main, 'SELECT count(*) AS n FROM resources');
    expectStatus(await send(alice, { method: 'create', uri: '/resources', authIds: [...hundred, 'one-more@a.example'] }), 413);
    expectStatus(await send(alice, { method: 'create', uri: '/resources', userIds: [...hundred, 'one-more@a.example'] }), 413);
    expectStatus(await send(alice, { method: 'create', uri: '/resources', keyUris: Array.from({ length: 101 }, () => unknownUri('keys')) }), 413);
    assert.equal(count(main, 'SELECT count(*) AS n FROM resources'), before);
  });

  test('invalid authIds → 400 naming the field, nothing created', async () => {
    const before = count(main, 'SELECT count(*) AS n FROM resources');
    for (const [field, value] of [
      ['authIds', ['bob@a.example', 'not a user@a.example']],
      ['authIds', [unknownUri('resources')]],
      ['authIds', [unknownUri('keys')]],
      ['userIds', ['@a.example']],
      ['authIds', 'bob@a.example'],
    ] as const) {
      const r = await send(alice, { method: 'create', uri: '/resources', [field]: value });
      expectStatus(r, 400, JSON.stringify(value));
      assert.match(r.reason!, new RegExp(field));
    }
    assert.equal(count(main, 'SELECT count(*) AS n FROM resources'), before);
  });

  test('ttl → expirationDate = createDate + ttl; ttl 0 means none; negative ttl → 400', async () => {
    const r = await newResource(alice, { ttl: 60 });
    assert.equal(r.createDate, iso(clock.now()));
    assert.equal(r.expirationDate, iso(clock.now() + 60 * SECOND));
    assert.equal((await newResource(alice, { ttl: 0 })).expirationDate, undefined);
    const bad = await send(alice, { method: 'create', uri: '/resources', ttl: -1 });
    expectStatus(bad, 400);
    assert.match(bad.reason!, /ttl/);
  });

  test('retrieve: authorized → 200 with uri, keyUris, authorizationUris; unauthorized → 403; unknown → 404', async () => {
    const [key] = await newKeys(alice);
    const created = await newResource(alice, { authIds: ['bob@a.example'], keyUris: [key!.uri] });
    const r = await expectOk(bob, { method: 'retrieve', uri: created.uri });
    assert.equal(r.resource.uri, created.uri);
    assert.deepEqual(r.resource.keyUris, [key!.uri]);
    assert.deepEqual([...r.resource.authorizationUris].sort(), [...created.authorizationUris].sort());
    expectStatus(await getResource(alice, `/resources/${idOf(created.uri)}`), 200);
    expectStatus(await getResource(carol, created.uri), 403);
    expectStatus(await getResource(alice, unknownUri('resources')), 404);
  });

  test('KRO authId: a principal authorized on R1 may read R2 (which lists R1) and its keys; others may not', async () => {
    const r1 = await newResource(alice, { authIds: ['bob@a.example'] });
    const [key] = await newKeys(alice);
    const r2 = await newResource(alice, { authIds: [r1.uri], keyUris: [key!.uri] });
    const r2Auths = (await listAuthorizations(alice, r2.uri)).authorizations as AuthorizationRep[];
    assert.ok(r2Auths.some((a) => a.authId === r1.uri), 'the KRO authId is stored as an absolute URI');
    assert.deepEqual((await expectOk(bob, { method: 'retrieve', uri: `${r2.uri}/keys` })).keys.map((k: KeyRep) => k.uri), [key!.uri]);
    expectStatus(await getKey(bob, key!.uri), 200);
    expectStatus(await getResource(bob, r2.uri), 200);
    expectStatus(await resourceKeys(carol, r2.uri), 403);
    expectStatus(await getKey(carol, key!.uri), 403);

    // Transitively: R3 lists R2 (given in the relative form), so bob reaches R3 through two hops.
    const r3 = await newResource(alice, { authIds: [`/resources/${idOf(r2.uri)}`] });
    expectStatus(await resourceKeys(bob, r3.uri), 200);

    // A user added to R1 later gains R2 too.
    expectStatus(await addAuthorizations(alice, r1.uri, ['carol@a.example']), 201);
    expectStatus(await resourceKeys(carol, r2.uri), 200);

    // Removing the link R2 -> R1 revokes everyone who came through it.
    const removed = await send(alice, { method: 'delete', uri: `${r2.uri}/authorizations?authId=${encodeURIComponent(r1.uri)}` });
    expectStatus(removed, 200);
    assert.equal(removed.authorization.authId, r1.uri);
    for (const c of [bob, carol]) {
      expectStatus(await resourceKeys(c, r2.uri), 403);
      expectStatus(await getKey(c, key!.uri), 403);
      expectStatus(await resourceKeys(c, r3.uri), 403);
    }
    expectStatus(await resourceKeys(alice, r2.uri), 200, 'the creator keeps her own authorization');
  });

  test('KRO authIds are followed up to 8 hops: 8 → allowed, 9 → 403', async () => {
    // chain[0] lists bob; chain[i] lists chain[i-1] as a KRO authId.
    const chain = [await newResource(alice, { authIds: ['bob@a.example'] })];
    for (let i = 1; i <= 9; i++) chain.push(await newResource(alice, { authIds: [chain[i - 1]!.uri] }));
    expectStatus(await resourceKeys(bob, chain[8]!.uri), 200, '8 hops');
    expectStatus(await getResource(bob, chain[8]!.uri), 200, '8 hops');
    expectStatus(await resourceKeys(bob, chain[9]!.uri), 403, '9 hops');
    expectStatus(await getResource(bob, chain[9]!.uri), 403, '9 hops');
    expectStatus(await resourceKeys(alice, chain[9]!.uri), 200, 'the creator is listed directly');
  });

  test('KRO authIds: a cycle between resources neither loops nor authorizes anyone extra', async () => {
    const r1 = await newResource(alice, { authIds: ['bob@a.example'] });
    const r2 = await newResource(alice, { authIds: [r1.uri] });
    expectStatus(await addAuthorizations(alice, r1.uri, [r2.uri]), 201);
    expectStatus(await resourceKeys(bob, r1.uri), 200);
    expectStatus(await resourceKeys(bob, r2.uri), 200);
    expectStatus(await resourceKeys(carol, r1.uri), 403);
    expectStatus(await resourceKeys(carol, r2.uri), 403);
  });

  test('KRO authId: removing the user from R1 revokes R2 as well', async () => {
    const r1 = await newResource(alice, { authIds: ['bob@a.example'] });
    const r2 = await newResource(alice, { authIds: [r1.uri] });
    expectStatus(await resourceKeys(bob, r2.uri), 200);
    expectStatus(await send(alice, { method: 'delete', uri: `${r1.uri}/authorizations?authId=bob@a.example` }), 200);
    expectStatus(await resourceKeys(bob, r2.uri), 403);
  });
});
