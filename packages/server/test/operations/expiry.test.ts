/**
 * Expiry on a manual clock: tokens, channels, unbound keys and resource TTLs, and the sweep that
 * destroys what expired. Its own KMS and clock; every test connects fresh clients after moving it.
 *
 * End-to-end on a real KMS (real SQLite file, real keys, a real socket) driven by TestClient over
 * HTTP batch; time from manual clocks, never wall-clock timings.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { importJWK, jwtVerify } from 'jose';
import type { AuthorizationRep, ResourceRep } from '@openkms/protocol';
import { TestClient } from '../support/client.js';
import { manualClock, startDevKms, type DevKms } from '../../src/testing/harness.js';
import {
  addAuthorizations,
  bind,
  connect,
  count,
  DAY,
  expectOk,
  expectStatus,
  getKey,
  getResource,
  HOUR,
  idOf,
  iso,
  listAuthorizations,
  newKeys,
  newResource,
  ping,
  refresh,
  resourceKeys,
  SECOND,
  send,
  type Answer,
} from '../support/operations.js';

describe('expiry (manual clock): tokens, channels, unbound keys, resource TTL', () => {
  const tclock = manualClock();
  let timed: DevKms;

  before(async () => {
    timed = await startDevKms({ now: tclock.now });
  });

  after(async () => {
    await timed?.close();
  });

  test('an expired token → 401; a fresh token on the same channel works again', async () => {
    const c = await connect(timed, 'alice@a.example', { ttlSeconds: 60 });
    expectStatus(await send(c, ping), 200);
    tclock.advance(2 * 60 * SECOND);
    const r = await send(c, ping);
    expectStatus(r, 401);
    assert.equal(r._signed, undefined, 'answered under the channel key');
    expectStatus(await send(c, { method: 'create', uri: '/keys', count: 1 }), 401);
    c.bearer = await timed.token('alice@a.example');
    expectStatus(await send(c, ping), 200);
  });

  test('an expired token at the handshake → 401 (signed)', async () => {
    const c = await connect(timed, 'alice@a.example');
    c.bearer = await timed.token('alice@a.example', { ttlSeconds: 60 });
    tclock.advance(2 * 60 * SECOND);
    const r = (await c.handshake()) as Answer;
    expectStatus(r, 401);
    assert.equal(r._signed, true);
  });

  test('an expired ephemeral key is never accepted again: 499 reset', async () => {
    const c = await connect(timed, 'alice@a.example');
    c.bearer = await timed.token('alice@a.example', { ttlSeconds: 7200 });
    tclock.advance(HOUR - 1);
    expectStatus(await send(c, ping), 200, 'just before the 1 h lifetime');
    tclock.advance(2);
    const r = await send(c, ping);
    expectStatus(r, 499);
    assert.equal(r._signed, true);
  });

  test('an expired unbound key: readable by its creator, not bindable (400); 404 after the 24 h grace; swept', async () => {
    const clientId = 'expiry-client';
    const a = await connect(timed, 'alice@a.example', { clientId });
    const b = await connect(timed, 'bob@a.example');
    const t0 = tclock.now();
    const [key] = await newKeys(a);
    assert.equal(key!.expirationDate, iso(t0 + HOUR));
    const [fresh] = await newKeys(a);

    tclock.advance(HOUR + 1);
    await refresh(timed, a, 'alice@a.example');
    await refresh(timed, b, 'bob@a.example');
    const resource = await newResource(a, { authIds: ['bob@a.example'] });
    const got = await getKey(a, key!.uri);
    expectStatus(got, 200, 'expired but within the grace');
    assert.deepEqual(got.key, key);
    expectStatus(await getKey(b, key!.uri), 403);
    const other = await connect(timed, 'alice@a.example', { clientId: 'expiry-other-client' });
    expectStatus(await getKey(other, key!.uri), 403);
    const bound = await bind(a, key!.uri, resource.uri);
    expectStatus(bound, 400);
    assert.match(bound.reason!, /expired/);
    expectStatus(await send(a, { method: 'create', uri: '/resources', keyUris: [fresh!.uri] }), 400, 'expired key in keyUris');

    tclock.set(t0 + HOUR + DAY - 1);
    await refresh(timed, a, 'alice@a.example');
    expectStatus(await getKey(a, key!.uri), 200, 'one ms before the end of the grace');
    tclock.advance(2);
    expectStatus(await getKey(a, key!.uri), 404, 'after the grace');
    assert.equal(count(timed, 'SELECT count(*) AS n FROM keys WHERE id = ?', idOf(key!.uri)), 1, 'not yet destroyed');
    const swept = await timed.kms.sweep();
    assert.ok(swept.keys >= 2, `swept ${JSON.stringify(swept)}`);
    assert.equal(count(timed, 'SELECT count(*) AS n FROM keys WHERE id IN (?, ?)', idOf(key!.uri), idOf(fresh!.uri)), 0);
    expectStatus(await getKey(a, key!.uri), 404);
  });

  test('resource ttl 60: live until expiry, then 404 for everyone (bearer 401); sweep destroys resource, keys, authorizations', async () => {
    const a = await connect(timed, 'alice@a.example');
    const b = await connect(timed, 'bob@a.example');
    const [k1, k2] = await newKeys(a, 2);
    const t0 = tclock.now();
    const r = await expectOk(a, { method: 'create', uri: '/resources', ttl: 60, authIds: ['bob@a.example'], anonymous: 1, keyUris: [k1!.uri] }, 201);
    const resource = r.resource as ResourceRep;
    assert.equal(resource.expirationDate, iso(t0 + 60 * SECOND));
    const bearer = (r.authorizations as AuthorizationRep[]).find((x) => x.bearer)!.bearer!;
    const { kty, n, e } = a.wellKnown.rsaPublicKey;
    const { payload } = await jwtVerify(bearer, await importJWK({ kty, n, e }, 'PS256'), { currentDate: new Date(t0) });
    assert.ok(Math.abs(payload.exp! * 1000 - (t0 + 60 * SECOND)) < 1000, `exp ${payload.exp} is the resource's expiry ${resource.expirationDate}`);
    const anon = await TestClient.connect(timed.url, bearer);

    tclock.advance(30 * SECOND);
    expectStatus(await resourceKeys(anon, resource.uri), 200, 'the anonymous bearer while the resource lives');
    tclock.advance(30 * SECOND - 1);
    expectStatus(await getResource(a, resource.uri), 200);
    expectStatus(await resourceKeys(b, resource.uri), 200);
    expectStatus(await getKey(b, k1!.uri), 200);

    tclock.advance(2);
    for (const [who, c] of [['alice', a], ['bob', b]] as const) {
      expectStatus(await getResource(c, resource.uri), 404, `${who}: retrieve resource`);
      expectStatus(await resourceKeys(c, resource.uri), 404, `${who}: resource keys`);
      expectStatus(await getKey(c, k1!.uri), 404, `${who}: bound key`);
      expectStatus(await listAuthorizations(c, resource.uri), 404, `${who}: authorizations`);
      expectStatus(await addAuthorizations(c, resource.uri, ['carol@a.example']), 404, `${who}: create authorization`);
    }
    expectStatus(await bind(a, k2!.uri, resource.uri), 404, 'bind to an expired resource');
    expectStatus(await send(a, { method: 'delete', uri: '/authorizations', resourceUri: resource.uri, authIds: ['bob@a.example'] }), 404);
    expectStatus(await resourceKeys(anon, resource.uri), 401, 'the anonymous bearer expired with the resource');

    const id = idOf(resource.uri);
    assert.equal(count(timed, 'SELECT count(*) AS n FROM resources WHERE id = ?', id), 1, 'not destroyed before the sweep');
    const swept = await timed.kms.sweep();
    assert.ok(swept.resources >= 1 && swept.keys >= 1, `swept ${JSON.stringify(swept)}`);
    assert.equal(count(timed, 'SELECT count(*) AS n FROM resources WHERE id = ?', id), 0);
    assert.equal(count(timed, 'SELECT count(*) AS n FROM keys WHERE resource_id = ? OR id = ?', id, idOf(k1!.uri)), 0);
    assert.equal(count(timed, 'SELECT count(*) AS n FROM authorizations WHERE resource_id = ?', id), 0);
    expectStatus(await getKey(a, k1!.uri), 404);
    expectStatus(await getResource(a, resource.uri), 404);
    // The other key was never bound: still alice's.
    expectStatus(await getKey(a, k2!.uri), 200);
  });

  test("an anonymous bearer of a TTL resource works until the resource's expirationDate (not up to 1 s less)", async () => {
    // Start on a non-whole second, so that a bearer `exp` rounded down to whole seconds falls
    // before the resource's expiry (deterministically, whatever the wall clock).
    tclock.set(Math.floor(tclock.now() / 1000) * 1000 + 1000 + 500);
    const a = await connect(timed, 'alice@a.example');
    const r = await expectOk(a, { method: 'create', uri: '/resources', ttl: 60, anonymous: 1 }, 201);
    const expiry = Date.parse((r.resource as ResourceRep).expirationDate!);
    const anon = await TestClient.connect(timed.url, (r.authorizations as AuthorizationRep[]).find((x) => x.bearer)!.bearer!);
    tclock.set(expiry - 1);
    expectStatus(await resourceKeys(a, r.resource.uri), 200, 'the resource is still live');
    expectStatus(await resourceKeys(anon, r.resource.uri), 200, 'so its anonymous bearer still authorizes reading its keys');
    tclock.set(expiry + 1);
    expectStatus(await resourceKeys(anon, r.resource.uri), 401);
  });
});
