/**
 * The key operations (draft 4.7.5–4.7.7; src/operations/keys.ts): create, retrieve, bind to a
 * resource, and retrieve a resource's keys with their order and filters.
 *
 * End-to-end on a real KMS (real SQLite file, real keys, a real socket) driven by TestClient over
 * HTTP batch; time from manual clocks, never wall-clock timings.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { KeyRep, ResourceRep } from '@openkms/protocol';
import type { TestClient } from '../support/client.js';
import Database from 'better-sqlite3';
import { ROW_CACHE_MS } from '../../src/limits.js';
import { manualClock, type DevKms } from '../../src/testing/harness.js';
import {
  useMainKms,
  assertKeyRep,
  AUTHORITY,
  bind,
  connect,
  DATE_RE,
  DAY,
  expectOk,
  expectStatus,
  getKey,
  HOUR,
  idOf,
  iso,
  newKeys,
  newResource,
  resourceKeys,
  SECOND,
  send,
  unknownUri,
  type Answer,
} from '../support/operations.js';

const clock = manualClock();
let main: DevKms;
let alice: TestClient;
let bob: TestClient;
let carol: TestClient;
useMainKms(clock, (shared) => ({ main, alice, bob, carol } = shared));

describe('keys: create (draft 4.7.5)', () => {
  test('count 1 → 201: 256-bit oct JWK, kid = uuid, absolute uri, userId, clientId echoed, RFC 3339 dates, 1 h unbound lifetime', async () => {
    const c = await connect(main, 'alice@a.example', { clientId: 'keys-client-1' });
    const r = await expectOk(c, { method: 'create', uri: '/keys', count: 1 }, 201);
    assert.equal(r.keys.length, 1);
    const key = r.keys[0] as KeyRep;
    assertKeyRep(key, 'alice@a.example', 'keys-client-1');
    assert.equal(key.createDate, iso(clock.now()));
    assert.equal(key.expirationDate, iso(clock.now() + HOUR));
    assert.equal(key.resourceUri, undefined);
    assert.equal(key.bindDate, undefined);
  });

  test('count 100 → 201 with 100 distinct keys', async () => {
    const keys = await newKeys(alice, 100);
    assert.equal(keys.length, 100);
    for (const key of keys) assertKeyRep(key, 'alice@a.example', alice.clientId);
    assert.equal(new Set(keys.map((k) => k.uri)).size, 100);
    assert.equal(new Set(keys.map((k) => k.jwk.k)).size, 100);
  });

  test('absolute request uri works too', async () => {
    const r = await expectOk(alice, { method: 'create', uri: `kms://${AUTHORITY}/keys`, count: 2 }, 201);
    assert.equal(r.keys.length, 2);
  });

  test('count 0 → 400 naming count', async () => {
    const r = await send(alice, { method: 'create', uri: '/keys', count: 0 });
    expectStatus(r, 400);
    assert.match(r.reason!, /count/);
  });

  test('count 101 → 413', async () => {
    expectStatus(await send(alice, { method: 'create', uri: '/keys', count: 101 }), 413);
  });

  test('count missing, not an integer → 400 naming count', async () => {
    for (const body of [{}, { count: 1.5 }, { count: '2' }, { count: -1 }]) {
      const r = await send(alice, { method: 'create', uri: '/keys', ...body });
      expectStatus(r, 400, JSON.stringify(body));
      assert.match(r.reason!, /count/);
    }
  });
});

describe('keys: retrieve (draft 4.7.7)', () => {
  test('unbound: its creator from the same clientId → 200 (relative and absolute uri)', async () => {
    const [key] = await newKeys(alice);
    for (const uri of [key!.uri, `/keys/${idOf(key!.uri)}`]) {
      const r = await expectOk(alice, { method: 'retrieve', uri });
      assert.deepEqual(r.key, key);
    }
  });

  test('unbound: its creator from another clientId → 403', async () => {
    const [key] = await newKeys(alice);
    const other = await connect(main, 'alice@a.example', { clientId: 'alice-second-device' });
    expectStatus(await getKey(other, key!.uri), 403);
  });

  test('unbound: another user → 403, even with the same clientId', async () => {
    const [key] = await newKeys(alice);
    expectStatus(await getKey(bob, key!.uri), 403);
    const bobSameClient = await connect(main, 'bob@a.example', { clientId: alice.clientId });
    expectStatus(await getKey(bobSameClient, key!.uri), 403);
  });

  test('unknown key → 404; malformed key uri → 400', async () => {
    expectStatus(await getKey(alice, unknownUri('keys')), 404);
    expectStatus(await getKey(alice, '/keys/not-a-uuid'), 400);
  });

  test('a key uri of another authority → 404', async () => {
    expectStatus(await getKey(alice, `kms://kms.z.example/keys/${randomUUID()}`), 404);
  });

  test('decided on cached rows (src/cached-rows.ts): a refusal decided again on storage; cached grants re-read after ROW_CACHE_MS', async () => {
    const [key] = await newKeys(alice);
    const resource = await newResource(alice, { authIds: ['carol@a.example'], keyUris: [key!.uri] });
    const db = new Database(main.dbPath, { fileMustExist: true });
    try {
      // The feed's word of these writes evicts them once more: let it come first.
      const head = Number((db.prepare(`SELECT value FROM counters WHERE name = 'change_seq'`).get() as { value: number }).value);
      while (main.kms.changesApplied() < head) await new Promise((r) => setTimeout(r, 10));
      expectStatus(await getKey(bob, key!.uri), 403);
      // Behind the KMS's back (no change feed entry): what it cached says no, storage says yes.
      const bobAuth = randomUUID();
      db.prepare('INSERT INTO authorizations (id, resource_id, auth_id, role_uri, created_at) VALUES (?, ?, ?, NULL, ?)').run(bobAuth, idOf(resource.uri), 'bob@a.example', clock.now());
      expectStatus(await getKey(bob, key!.uri), 200, 'the cached refusal is decided again on storage');
      db.prepare('DELETE FROM authorizations WHERE id = ?').run(bobAuth);
      expectStatus(await getKey(bob, key!.uri), 200, 'cached since: not read again');
      clock.advance(ROW_CACHE_MS);
      expectStatus(await getKey(bob, key!.uri), 403, 're-read after ROW_CACHE_MS');
    } finally {
      db.close();
    }
  });

  test("this KMS's own writes are read at once: a key bound, a grant added and removed", async () => {
    const [key] = await newKeys(alice);
    const resource = await newResource(alice);
    assert.equal((await getKey(alice, key!.uri)).key.resourceUri, undefined, 'cached unbound');
    expectStatus(await bind(alice, key!.uri, resource.uri), 200);
    assert.equal((await getKey(alice, key!.uri)).key.resourceUri, resource.uri);
    expectStatus(await getKey(bob, key!.uri), 403);
    const [grant] = (await expectOk(alice, { method: 'create', uri: '/authorizations', resourceUri: resource.uri, authIds: ['bob@a.example'] }, 201)).authorizations as { uri: string }[];
    expectStatus(await getKey(bob, key!.uri), 200);
    await expectOk(alice, { method: 'delete', uri: grant!.uri });
    expectStatus(await getKey(bob, key!.uri), 403, 'the removal evicted the cached grant');
  });
});

describe('keys: bind (draft 4.7.6)', () => {
  let resource: ResourceRep;
  before(async () => {
    resource = await newResource(alice, { authIds: ['bob@a.example'] });
  });

  test('creator, authorized, same clientId → 200 with resourceUri, bindDate, expirationDate = bindDate + 365 d', async () => {
    const [key] = await newKeys(alice);
    clock.advance(1500);
    const r = await bind(alice, key!.uri, resource.uri);
    expectStatus(r, 200);
    const bound = r.key as KeyRep;
    assertKeyRep(bound, 'alice@a.example', alice.clientId);
    assert.equal(bound.uri, key!.uri);
    assert.equal(bound.jwk.k, key!.jwk.k);
    assert.equal(bound.resourceUri, resource.uri);
    assert.equal(bound.bindDate, iso(clock.now()));
    assert.equal(bound.createDate, key!.createDate);
    assert.equal(Date.parse(bound.expirationDate), Date.parse(bound.bindDate!) + 365 * DAY);
    // Bound: every principal authorized on the resource reads it, the creator from any client.
    assert.deepEqual((await expectOk(bob, { method: 'retrieve', uri: key!.uri })).key, bound);
    const other = await connect(main, 'alice@a.example', { clientId: 'alice-other-client' });
    expectStatus(await getKey(other, key!.uri), 200);
    expectStatus(await getKey(carol, key!.uri), 403);
  });

  test('relative uris on both sides work', async () => {
    const [key] = await newKeys(alice);
    const r = await send(alice, { method: 'update', uri: `/keys/${idOf(key!.uri)}`, resourceUri: `/resources/${idOf(resource.uri)}` });
    expectStatus(r, 200);
    assert.equal(r.key.resourceUri, resource.uri, 'responses carry absolute URIs');
  });

  test('a non-creator (even one authorized on the resource) → 403, and the key stays unbound', async () => {
    const [key] = await newKeys(alice);
    expectStatus(await bind(bob, key!.uri, resource.uri), 403);
    assert.equal((await getKey(alice, key!.uri)).key.resourceUri, undefined);
  });

  test('the creator not authorized on the resource → 403', async () => {
    const bobs = await newResource(bob);
    const [key] = await newKeys(alice);
    expectStatus(await bind(alice, key!.uri, bobs.uri), 403);
    assert.equal((await getKey(alice, key!.uri)).key.resourceUri, undefined);
  });

  test('the creator from another clientId → 403', async () => {
    const [key] = await newKeys(alice);
    const other = await connect(main, 'alice@a.example', { clientId: 'alice-bind-other-client' });
    expectStatus(await bind(other, key!.uri, resource.uri), 403);
    assert.equal((await getKey(alice, key!.uri)).key.resourceUri, undefined);
  });

  test('already bound → 409 (to another resource or to the same one); the first binding stays', async () => {
    const [key] = await newKeys(alice);
    const second = await newResource(alice);
    expectStatus(await bind(alice, key!.uri, resource.uri), 200);
    expectStatus(await bind(alice, key!.uri, second.uri), 409);
    expectStatus(await bind(alice, key!.uri, resource.uri), 409);
    assert.equal((await getKey(alice, key!.uri)).key.resourceUri, resource.uri);
  });

  test('a non-creator binding a bound key → 403 (not 409)', async () => {
    const [key] = await newKeys(alice);
    expectStatus(await bind(alice, key!.uri, resource.uri), 200);
    expectStatus(await bind(bob, key!.uri, resource.uri), 403);
  });

  test('unknown resource → 404; unknown key → 404', async () => {
    const [key] = await newKeys(alice);
    expectStatus(await bind(alice, key!.uri, unknownUri('resources')), 404);
    expectStatus(await bind(alice, unknownUri('keys'), resource.uri), 404);
  });

  test('a resourceUri of an unknown KMS authority → 404', async () => {
    const [key] = await newKeys(alice);
    expectStatus(await bind(alice, key!.uri, `kms://kms.z.example/resources/${randomUUID()}`), 404);
  });

  test('bad or missing resourceUri → 400 naming resourceUri', async () => {
    const [key] = await newKeys(alice);
    for (const resourceUri of ['not a uri', key!.uri, `/resources/${randomUUID()}/keys`, 'kms://kms.a.example/resources/not-a-uuid', 42]) {
      const r = await send(alice, { method: 'update', uri: key!.uri, resourceUri });
      expectStatus(r, 400, String(resourceUri));
      assert.match(r.reason!, /resourceUri/);
    }
    const r = await send(alice, { method: 'update', uri: key!.uri });
    expectStatus(r, 400);
    assert.match(r.reason!, /resourceUri/);
  });

  test('50 concurrent binds of one key to 50 resources → exactly one 200 and 49 × 409', async () => {
    const resources = await Promise.all(Array.from({ length: 50 }, () => newResource(alice)));
    const [key] = await newKeys(alice);
    const answers = await Promise.all(resources.map((r) => bind(alice, key!.uri, r.uri)));
    const statuses = answers.map((a) => a.status);
    assert.equal(statuses.filter((s) => s === 200).length, 1, `statuses: ${statuses.join(',')}`);
    assert.equal(statuses.filter((s) => s === 409).length, 49, `statuses: ${statuses.join(',')}`);
    const winner = answers.find((a) => a.status === 200)!.key as KeyRep;
    assert.equal((await getKey(alice, key!.uri)).key.resourceUri, winner.resourceUri);
    let holding = 0;
    for (const r of resources) holding += (await resourceKeys(alice, r.uri)).keys.length;
    assert.equal(holding, 1, 'the key is bound to exactly one resource');
  });
});

describe('retrieve resource keys: order and filters (draft 4.7.7)', () => {
  let resource: ResourceRep;
  let keys: KeyRep[];
  const t: number[] = [];

  before(async () => {
    resource = await newResource(alice, { authIds: ['bob@a.example'] });
    keys = await newKeys(alice, 5);
    // k0 at t0, k1 at t0+1s, k2 at t0+2s, then k3 and k4 both at t0+3s (k4 bound last).
    for (let i = 0; i < 5; i++) {
      if (i > 0 && i < 4) clock.advance(SECOND);
      t.push(clock.now());
      expectStatus(await bind(alice, keys[i]!.uri, resource.uri), 200, `bind k${i}`);
    }
    // An unbound key of the same user and a key of another resource are never listed.
    await newKeys(alice, 1);
    const [elsewhere] = await newKeys(alice, 1);
    await newResource(alice, { keyUris: [elsewhere!.uri] });
  });

  const uris = (answer: Answer) => (answer.keys as KeyRep[]).map((k) => k.uri);
  const expected = (...indexes: number[]) => indexes.map((i) => keys[i]!.uri);

  test('all keys, newest bindDate first; equal bindDates newest bind first', async () => {
    const r = await expectOk(bob, { method: 'retrieve', uri: `${resource.uri}/keys` });
    assert.deepEqual(uris(r), expected(4, 3, 2, 1, 0));
    assert.equal(r.keys[0].bindDate, r.keys[1].bindDate);
    for (const k of r.keys as KeyRep[]) {
      assert.equal(k.resourceUri, resource.uri);
      assert.match(k.bindDate!, DATE_RE);
      assert.equal(Buffer.from(k.jwk.k, 'base64url').length, 32);
    }
  });

  test('count truncates and keeps the newest', async () => {
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { count: 2 })), expected(4, 3));
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { count: 1 })), expected(4));
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { count: 50 })), expected(4, 3, 2, 1, 0));
  });

  test('boundAfter: keys bound at or after it (a bindDate equal to it is included)', async () => {
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { boundAfter: iso(t[1]!) })), expected(4, 3, 2, 1));
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { boundAfter: iso(t[1]! + 1) })), expected(4, 3, 2));
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { boundAfter: iso(t[4]! + 1) })), []);
  });

  test('boundBefore: keys bound strictly before it (a bindDate equal to it is excluded)', async () => {
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { boundBefore: iso(t[2]!) })), expected(1, 0));
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { boundBefore: iso(t[2]! + 1) })), expected(2, 1, 0));
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { boundBefore: iso(t[0]!) })), []);
  });

  test('filters combine; truncation applies after the date filters and keeps the newest', async () => {
    const window = { boundAfter: iso(t[1]!), boundBefore: iso(t[3]!) };
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, window)), expected(2, 1));
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { ...window, count: 1 })), expected(2));
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { boundBefore: iso(t[3]!), count: 2 })), expected(2, 1));
  });

  test('RFC 3339 with a UTC offset is accepted (same instant as the Z form)', async () => {
    const asOffset = (ms: number) => new Date(ms + HOUR).toISOString().replace('Z', '+01:00');
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { boundBefore: asOffset(t[2]!) })), expected(1, 0));
    assert.deepEqual(uris(await resourceKeys(bob, resource.uri, { boundAfter: asOffset(t[3]!) })), expected(4, 3));
  });

  test('malformed filters → 400 naming the field', async () => {
    for (const [field, value] of [
      ['boundAfter', 'yesterday'],
      ['boundBefore', '2020-01-01'],
      ['count', 0],
      ['count', 'ten'],
    ] as const) {
      const r = await resourceKeys(bob, resource.uri, { [field]: value });
      expectStatus(r, 400, `${field}=${value}`);
      assert.match(r.reason!, new RegExp(field));
    }
  });

  test('unauthorized → 403; unknown resource → 404', async () => {
    expectStatus(await resourceKeys(carol, resource.uri), 403);
    expectStatus(await resourceKeys(alice, unknownUri('resources')), 404);
  });

  test('a resource with no keys → 200 with an empty array', async () => {
    const empty = await newResource(alice);
    assert.deepEqual((await expectOk(alice, { method: 'retrieve', uri: `${empty.uri}/keys` })).keys, []);
  });
});
