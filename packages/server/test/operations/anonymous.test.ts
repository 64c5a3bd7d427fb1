/**
 * Anonymous authorizations (PROTOCOL.md §5; src/operations/authorizations.ts): the bearer a
 * resource hands out, what it may and may not do, and its revocation.
 *
 * End-to-end on a real KMS (real SQLite file, real keys, a real socket) driven by TestClient over
 * HTTP batch; time from manual clocks, never wall-clock timings.
 */
import { randomUUID } from 'node:crypto';
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { importJWK, jwtVerify } from 'jose';
import type { AuthorizationRep, KeyRep, ResourceRep } from '@openkms/protocol';
import { TestClient } from '../support/client.js';
import { manualClock, type DevKms } from '../../src/testing/harness.js';
import {
  useMainKms,
  AUTHORITY,
  bind,
  expectOk,
  expectStatus,
  getKey,
  getResource,
  iso,
  listAuthorizations,
  newKeys,
  newResource,
  ping,
  resourceKeys,
  SECOND,
  send,
  uriRe,
  type Answer,
} from '../support/operations.js';

const clock = manualClock();
let main: DevKms;
let alice: TestClient;
useMainKms(clock, (shared) => ({ main, alice } = shared));

describe('anonymous authorizations (PROTOCOL.md §5)', () => {
  let resource: ResourceRep;
  let key: KeyRep;
  let anonAuth: AuthorizationRep;
  let anon: TestClient;

  before(async () => {
    [key] = (await newKeys(alice)) as [KeyRep];
    const r = await expectOk(alice, { method: 'create', uri: '/resources', anonymous: 1, keyUris: [key.uri] }, 201);
    resource = r.resource;
    const withBearer = (r.authorizations as AuthorizationRep[]).filter((a) => a.bearer !== undefined);
    assert.equal(withBearer.length, 1);
    anonAuth = withBearer[0]!;
    anon = await TestClient.connect(main.url, anonAuth.bearer!);
  });

  test('create resource with anonymous: 1 → an authorization with a bearer JWT (PS256 by the static key, iss, sub, resourceUri, exp)', async () => {
    assert.equal(resource.authorizationUris.length, 2);
    assert.ok(resource.authorizationUris.includes(anonAuth.uri));
    assert.match(anonAuth.uri, uriRe('authorizations'));
    assert.equal(anonAuth.authId, undefined);
    assert.equal(anonAuth.resourceUri, resource.uri);
    const { kty, n, e } = alice.wellKnown.rsaPublicKey;
    const staticKey = await importJWK({ kty, n, e }, 'PS256');
    const { payload, protectedHeader } = await jwtVerify(anonAuth.bearer!, staticKey, {
      algorithms: ['PS256'],
      issuer: `kms://${AUTHORITY}`,
      currentDate: new Date(clock.now()),
    });
    assert.equal(protectedHeader.alg, 'PS256');
    assert.equal(payload.sub, anonAuth.uri);
    assert.equal(payload.resourceUri, resource.uri);
    // No TTL on the resource: the configured maximum.
    const max = Date.parse(anonAuth.createDate) + main.config.lifetimes.anonymousBearerMax * SECOND;
    assert.ok(Math.abs(payload.exp! * 1000 - max) < 1000, `exp ${payload.exp} is the configured maximum ${iso(max)}`);
  });

  test("the bearer's client may read the resource's keys and a key by URI, and ping", async () => {
    const list = await expectOk(anon, { method: 'retrieve', uri: `${resource.uri}/keys` });
    assert.deepEqual((list.keys as KeyRep[]).map((k) => k.uri), [key.uri]);
    const one = await expectOk(anon, { method: 'retrieve', uri: key.uri });
    assert.equal(one.key.jwk.k, key.jwk.k);
    expectStatus(await send(anon, ping), 200);
  });

  test('the bearer may not create keys, resources or authorizations, bind, or read the resource or its authorizations → 403', async () => {
    expectStatus(await send(anon, { method: 'create', uri: '/keys', count: 1 }), 403, 'create keys');
    expectStatus(await send(anon, { method: 'create', uri: '/resources' }), 403, 'create resource');
    expectStatus(await send(anon, { method: 'create', uri: '/authorizations', resourceUri: resource.uri, authIds: ['dave@a.example'] }), 403, 'create authorizations');
    expectStatus(await send(anon, { method: 'create', uri: '/authorizations', resourceUri: resource.uri, anonymous: 1 }), 403, 'create anonymous');
    expectStatus(await send(anon, { method: 'delete', uri: '/authorizations', resourceUri: resource.uri, authIds: ['alice@a.example'] }), 403, 'bulk delete');
    // Refused before anything about the resourceUri is looked at: a bearer learns nothing of other KMSs.
    const elsewhere = `kms://kms.nowhere.example/resources/${randomUUID()}`;
    expectStatus(await send(anon, { method: 'create', uri: '/authorizations', resourceUri: elsewhere, authIds: ['dave@a.example'] }), 403, 'create authorizations elsewhere');
    expectStatus(await send(anon, { method: 'delete', uri: '/authorizations', resourceUri: elsewhere, authIds: ['dave@a.example'] }), 403, 'bulk delete elsewhere');
    expectStatus(await send(anon, { method: 'delete', uri: anonAuth.uri }), 403, 'delete authorization');
    expectStatus(await getResource(anon, resource.uri), 403, 'retrieve resource');
    expectStatus(await listAuthorizations(anon, resource.uri), 403, 'retrieve authorizations');
    expectStatus(await send(anon, { method: 'create', uri: '/cmk' }), 403, 'admin');
    const [other] = await newKeys(alice);
    expectStatus(await bind(anon, other!.uri, resource.uri), 403, 'bind');
    expectStatus(await getKey(anon, other!.uri), 403, 'an unbound key');
  });

  test("the bearer may not read another resource's keys → 403", async () => {
    const [otherKey] = await newKeys(alice);
    const other = await newResource(alice, { keyUris: [otherKey!.uri], authIds: [resource.uri] });
    expectStatus(await resourceKeys(anon, other.uri), 403, 'not even through a KRO authId naming its resource');
    expectStatus(await getKey(anon, otherKey!.uri), 403);
  });

  test('create authorizations with anonymous: 1 → 201 with a working bearer', async () => {
    const r = await expectOk(alice, { method: 'create', uri: '/authorizations', resourceUri: resource.uri, anonymous: 1 }, 201);
    assert.equal(r.authorizations.length, 1);
    const second = r.authorizations[0] as AuthorizationRep;
    assert.equal(typeof second.bearer, 'string');
    const c = await TestClient.connect(main.url, second.bearer!);
    expectStatus(await resourceKeys(c, resource.uri), 200);
    expectStatus(await send(c, { method: 'delete', uri: c.channelUri }), 204, 'an anonymous bearer may close its own channel');
    expectStatus(await send(c, ping), 499);
  });

  test('deleting the anonymous authorization revokes the bearer: 401 at the next request and at a new handshake', async () => {
    const r = await send(alice, { method: 'delete', uri: anonAuth.uri });
    expectStatus(r, 200);
    assert.equal(r.authorization.uri, anonAuth.uri);
    expectStatus(await resourceKeys(anon, resource.uri), 401);
    expectStatus(await getKey(anon, key.uri), 401);
    const hs = (await anon.handshake()) as Answer;
    expectStatus(hs, 401);
    assert.equal(hs._signed, true);
  });
});
