/**
 * The authorization operations (draft 4.7.8–4.7.11; src/operations/authorizations.ts): create,
 * list, delete one or in bulk, each on its allowed and its refused side.
 *
 * End-to-end on a real KMS (real SQLite file, real keys, a real socket) driven by TestClient over
 * HTTP batch; time from manual clocks, never wall-clock timings.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { AuthorizationRep, KeyRep, ResourceRep } from '@openkms/protocol';
import type { TestClient } from '../support/client.js';
import { manualClock, type DevKms } from '../../src/testing/harness.js';
import {
  useMainKms,
  addAuthorizations,
  connect,
  DATE_RE,
  expectOk,
  expectStatus,
  getKey,
  idOf,
  iso,
  listAuthorizations,
  newKeys,
  newResource,
  resourceKeys,
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

describe('authorizations: create, retrieve, delete (draft 4.7.8–4.7.11)', () => {
  let resource: ResourceRep;
  let key: KeyRep;
  let erin: TestClient;
  let frank: TestClient;

  before(async () => {
    [key] = (await newKeys(alice)) as [KeyRep];
    resource = await newResource(alice, { keyUris: [key.uri] });
    [erin, frank] = await Promise.all([connect(main, 'erin@a.example'), connect(main, 'frank@a.example')]);
  });

  test('create → 201 with absolute authorization representations; the user may then read the keys', async () => {
    expectStatus(await resourceKeys(bob, resource.uri), 403, 'before');
    const r = await addAuthorizations(alice, resource.uri, ['bob@a.example']);
    expectStatus(r, 201);
    const [auth] = r.authorizations as AuthorizationRep[];
    assert.equal(r.authorizations.length, 1);
    assert.match(auth!.uri, uriRe('authorizations'));
    assert.equal(auth!.authId, 'bob@a.example');
    assert.equal(auth!.resourceUri, resource.uri);
    assert.equal(auth!.createDate, iso(clock.now()));
    assert.equal(auth!.bearer, undefined);
    expectStatus(await resourceKeys(bob, resource.uri), 200, 'after');
    expectStatus(await getKey(bob, key.uri), 200);
  });

  test('viral: an authorized user may authorize others', async () => {
    const r = await send(bob, { method: 'create', uri: '/authorizations', resourceUri: `/resources/${idOf(resource.uri)}`, userIds: ['carol@a.example'] });
    expectStatus(r, 201);
    assert.equal(r.authorizations[0].authId, 'carol@a.example');
    expectStatus(await resourceKeys(carol, resource.uri), 200);
  });

  test('an unauthorized user → 403 (also for authorizing themselves)', async () => {
    expectStatus(await addAuthorizations(dave, resource.uri, ['dave@a.example']), 403);
    expectStatus(await addAuthorizations(dave, resource.uri, ['zed@a.example']), 403);
    expectStatus(await resourceKeys(dave, resource.uri), 403);
    assert.deepEqual((await listAuthorizations(alice, resource.uri, 'zed@a.example')).authorizations, []);
  });

  test('all or nothing: one invalid authId → 400 and none of the others is added', async () => {
    const r = await addAuthorizations(alice, resource.uri, ['gina@a.example', 'not valid@a.example']);
    expectStatus(r, 400);
    assert.match(r.reason!, /authIds/);
    assert.deepEqual((await listAuthorizations(alice, resource.uri, 'gina@a.example')).authorizations, []);
    const kro = await addAuthorizations(alice, resource.uri, ['gina@a.example', unknownUri('resources')]);
    expectStatus(kro, 400);
    assert.deepEqual((await listAuthorizations(alice, resource.uri, 'gina@a.example')).authorizations, []);
  });

  test('over 100 authIds → 413, nothing added', async () => {
    const many = Array.from({ length: 101 }, (_, i) => `many${i}@a.example`);
    expectStatus(await addAuthorizations(alice, resource.uri, many), 413);
    assert.deepEqual((await listAuthorizations(alice, resource.uri, 'many0@a.example')).authorizations, []);
  });

  test('an authId already present is not duplicated (the existing authorization is returned)', async () => {
    const first = (await listAuthorizations(alice, resource.uri, 'bob@a.example')).authorizations as AuthorizationRep[];
    const again = await addAuthorizations(alice, resource.uri, ['bob@a.example']);
    expectStatus(again, 201);
    assert.equal(again.authorizations[0].uri, first[0]!.uri);
    assert.equal((await listAuthorizations(alice, resource.uri, 'bob@a.example')).authorizations.length, 1);
  });

  test('bad requests: unknown resource → 404, bad resourceUri → 400, nothing to authorize → 400', async () => {
    expectStatus(await addAuthorizations(alice, unknownUri('resources'), ['bob@a.example']), 404);
    const bad = await addAuthorizations(alice, 'not-a-uri', ['bob@a.example']);
    expectStatus(bad, 400);
    assert.match(bad.reason!, /resourceUri/);
    expectStatus(await addAuthorizations(alice, resource.uri, []), 400);
    const missing = await send(alice, { method: 'create', uri: '/authorizations', authIds: ['bob@a.example'] });
    expectStatus(missing, 400);
    assert.match(missing.reason!, /resourceUri/);
  });

  test('list: every authorization of the resource, absolute URIs; unauthorized → 403; unknown → 404', async () => {
    const r = await expectOk(carol, { method: 'retrieve', uri: `${resource.uri}/authorizations` });
    const list = r.authorizations as AuthorizationRep[];
    assert.deepEqual(list.map((a) => a.authId).sort(), ['alice@a.example', 'bob@a.example', 'carol@a.example']);
    for (const a of list) {
      assert.match(a.uri, uriRe('authorizations'));
      assert.equal(a.resourceUri, resource.uri);
      assert.match(a.createDate, DATE_RE);
    }
    expectStatus(await listAuthorizations(dave, resource.uri), 403);
    expectStatus(await listAuthorizations(alice, unknownUri('resources')), 404);
  });

  test('?authId= → an array of exactly 0 or 1', async () => {
    const one = (await expectOk(alice, { method: 'retrieve', uri: `${resource.uri}/authorizations?authId=bob@a.example` })).authorizations;
    assert.equal(one.length, 1);
    assert.equal(one[0].authId, 'bob@a.example');
    const short = (await listAuthorizations(alice, resource.uri, 'bob')).authorizations;
    assert.deepEqual(short, one, 'an authId without @ belongs to the first domain');
    assert.deepEqual((await listAuthorizations(alice, resource.uri, 'nobody@a.example')).authorizations, []);
  });

  test('delete by authorization URI → 200 with `authorization` and `authorizations:[it]`; the user is then refused', async () => {
    expectStatus(await addAuthorizations(alice, resource.uri, ['erin@a.example']), 201);
    expectStatus(await resourceKeys(erin, resource.uri), 200);
    const [auth] = (await listAuthorizations(alice, resource.uri, 'erin@a.example')).authorizations as AuthorizationRep[];
    const r = await send(alice, { method: 'delete', uri: auth!.uri });
    expectStatus(r, 200);
    assert.equal(r.authorization.uri, auth!.uri);
    assert.equal(r.authorization.authId, 'erin@a.example');
    assert.equal(r.authorization.resourceUri, resource.uri);
    assert.deepEqual(r.authorizations, [r.authorization]);
    expectStatus(await resourceKeys(erin, resource.uri), 403);
    expectStatus(await getKey(erin, key.uri), 403);
    expectStatus(await send(alice, { method: 'delete', uri: auth!.uri }), 404, 'deleting it again');
    expectStatus(await send(alice, { method: 'delete', uri: `/authorizations/${idOf(auth!.uri)}` }), 404);
  });

  test('delete by /resources/<id>/authorizations?authId=x → 200 with the same shape; the user is then refused', async () => {
    expectStatus(await addAuthorizations(alice, resource.uri, ['frank@a.example']), 201);
    expectStatus(await resourceKeys(frank, resource.uri), 200);
    const r = await send(bob, { method: 'delete', uri: `/resources/${idOf(resource.uri)}/authorizations?authId=frank@a.example` });
    expectStatus(r, 200, 'an authorized user (not the creator) may delete');
    assert.equal(r.authorization.authId, 'frank@a.example');
    assert.deepEqual(r.authorizations, [r.authorization]);
    expectStatus(await resourceKeys(frank, resource.uri), 403);
    expectStatus(await send(alice, { method: 'delete', uri: `${resource.uri}/authorizations?authId=frank@a.example` }), 404);
    const missing = await send(alice, { method: 'delete', uri: `${resource.uri}/authorizations` });
    expectStatus(missing, 400, 'no authId');
  });

  test('bulk delete with resourceUri + authIds → 200 with the deleted authorizations; the users are then refused', async () => {
    expectStatus(await addAuthorizations(alice, resource.uri, ['erin@a.example', 'frank@a.example', 'gina@a.example']), 201);
    const r = await send(alice, { method: 'delete', uri: '/authorizations', resourceUri: resource.uri, authIds: ['erin@a.example', 'frank@a.example', 'nobody@a.example'] });
    expectStatus(r, 200);
    assert.deepEqual((r.authorizations as AuthorizationRep[]).map((a) => a.authId).sort(), ['erin@a.example', 'frank@a.example']);
    expectStatus(await resourceKeys(erin, resource.uri), 403);
    expectStatus(await resourceKeys(frank, resource.uri), 403);
    assert.equal((await listAuthorizations(alice, resource.uri, 'gina@a.example')).authorizations.length, 1, 'others untouched');
    const tooMany = await send(alice, { method: 'delete', uri: '/authorizations', resourceUri: resource.uri, authIds: Array.from({ length: 101 }, (_, i) => `x${i}@a.example`) });
    expectStatus(tooMany, 413);
    expectStatus(await send(alice, { method: 'delete', uri: '/authorizations', resourceUri: resource.uri, authIds: [] }), 400);
  });

  test('an unauthorized user cannot delete (by URI, by authId, in bulk) → 403, and nothing is deleted', async () => {
    const [bobs] = (await listAuthorizations(alice, resource.uri, 'bob@a.example')).authorizations as AuthorizationRep[];
    expectStatus(await send(dave, { method: 'delete', uri: bobs!.uri }), 403);
    expectStatus(await send(dave, { method: 'delete', uri: `${resource.uri}/authorizations?authId=bob@a.example` }), 403);
    expectStatus(await send(dave, { method: 'delete', uri: '/authorizations', resourceUri: resource.uri, authIds: ['bob@a.example', 'alice@a.example'] }), 403);
    expectStatus(await resourceKeys(bob, resource.uri), 200);
    expectStatus(await resourceKeys(alice, resource.uri), 200);
  });

  // The draft's viral model has no owner: docs/security.md states it, this pins it.
  test("any authorized user may remove any authorization, the creator's included", async () => {
    const [own] = (await newKeys(alice)) as [KeyRep];
    const shared = await newResource(alice, { keyUris: [own.uri], authIds: ['bob@a.example'] });
    const r = await send(bob, { method: 'delete', uri: `${shared.uri}/authorizations?authId=alice@a.example` });
    expectStatus(r, 200);
    assert.equal(r.authorization.authId, 'alice@a.example');
    expectStatus(await resourceKeys(alice, shared.uri), 403, 'the creator is refused like anyone removed');
    expectStatus(await getKey(alice, own.uri), 403, 'her own key too, once bound to the resource');
    expectStatus(await resourceKeys(bob, shared.uri), 200);
  });
});
