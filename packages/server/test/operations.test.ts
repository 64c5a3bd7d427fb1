/**
 * End-to-end tests of every operation of PROTOCOL.md §5 and the authorization decisions behind
 * them, each on its allowed and on its refused side: a real KMS (real SQLite file, real keys, a
 * real socket) driven by TestClient over HTTP batch. Time comes from manual clocks; nothing here
 * asserts wall-clock timings.
 *
 * KMS instances: `main` (most tests; its clock only moves by seconds), `timed` (expiry: tokens,
 * channels, unbound keys, resource TTL; every test there connects fresh clients after moving the
 * clock), `admin` (CMK rotation, so it cannot disturb the others), and two short-lived ones for
 * the restart test.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { importJWK, jwtVerify } from 'jose';
import { deriveChannelKey, generateEphemeralKeyPair, importEcPublicKey } from '@openkms/protocol';
import { TestClient, postBatch } from './support/client.js';
import { manualClock, startTestKms, type TestKms } from '../src/testing/harness.js';
import type { KeyRep } from '@openkms/protocol';

// ---------------------------------------------------------------------------------------------
// Helpers

const AUTHORITY = 'kms.a.example';
const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const UUID_RE = new RegExp(`^${UUID}$`);
const uriRe = (collection: string) => new RegExp(`^kms://kms\\.a\\.example/${collection}/${UUID}$`);
/** RFC 3339 UTC with millisecond precision (PROTOCOL.md §4). */
const DATE_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const SECOND = 1000;
const HOUR = 3600 * SECOND;
const DAY = 24 * HOUR;
const iso = (ms: number) => new Date(ms).toISOString();
const idOf = (uri: string) => uri.slice(uri.lastIndexOf('/') + 1);
const unknownUri = (collection: string) => `kms://${AUTHORITY}/${collection}/${randomUUID()}`;


interface AuthorizationRep {
  uri: string;
  authId?: string;
  bearer?: string;
  createDate: string;
  resourceUri: string;
}

interface ResourceRep {
  uri: string;
  keyUris: string[];
  authorizationUris: string[];
  createDate?: string;
  expirationDate?: string;
}

type Answer = { status: number; reason?: string; requestId?: unknown; _signed?: boolean; [member: string]: any };

function expectStatus(answer: Answer, status: number, what = ''): void {
  assert.equal(answer.status, status, `${what ? what + ': ' : ''}expected ${status}, got ${answer.status} (${answer.reason ?? 'no reason'})`);
}

async function send(client: TestClient, body: Record<string, unknown>): Promise<Answer> {
  return (await client.request(body)) as Answer;
}

async function expectOk(client: TestClient, body: Record<string, unknown>, status = 200): Promise<Answer> {
  const answer = await send(client, body);
  expectStatus(answer, status, `${String(body.method)} ${String(body.uri)}`);
  return answer;
}

async function connect(kms: TestKms, user: string, opts: { roles?: string[]; clientId?: string; ttlSeconds?: number } = {}): Promise<TestClient> {
  return TestClient.connect(kms.url, await kms.token(user, { roles: opts.roles, ttlSeconds: opts.ttlSeconds }), opts.clientId);
}

/** A fresh token and a fresh channel for an existing client (same clientId), after moving a clock. */
async function refresh(kms: TestKms, client: TestClient, user: string): Promise<void> {
  client.bearer = await kms.token(user);
  expectStatus((await client.handshake()) as Answer, 201, 'handshake');
}

const ping = { method: 'update', uri: '/ping' };

async function newKeys(client: TestClient, count = 1): Promise<KeyRep[]> {
  return (await expectOk(client, { method: 'create', uri: '/keys', count }, 201)).keys as KeyRep[];
}

async function newResource(client: TestClient, body: Record<string, unknown> = {}): Promise<ResourceRep> {
  return (await expectOk(client, { method: 'create', uri: '/resources', ...body }, 201)).resource as ResourceRep;
}

const bind = (client: TestClient, keyUri: string, resourceUri: string) => send(client, { method: 'update', uri: keyUri, resourceUri });
const getKey = (client: TestClient, keyUri: string) => send(client, { method: 'retrieve', uri: keyUri });
const getResource = (client: TestClient, resourceUri: string) => send(client, { method: 'retrieve', uri: resourceUri });
const resourceKeys = (client: TestClient, resourceUri: string, filter: Record<string, unknown> = {}) =>
  send(client, { method: 'retrieve', uri: `${resourceUri}/keys`, ...filter });
const listAuthorizations = (client: TestClient, resourceUri: string, authId?: string) =>
  send(client, { method: 'retrieve', uri: `${resourceUri}/authorizations${authId === undefined ? '' : `?authId=${encodeURIComponent(authId)}`}` });
const addAuthorizations = (client: TestClient, resourceUri: string, authIds: string[]) =>
  send(client, { method: 'create', uri: '/authorizations', resourceUri, authIds });

/** Reads one number from the KMS's database through a second, read-only connection. */
function count(kms: TestKms, sql: string, ...args: unknown[]): number {
  const db = new Database(kms.dbPath, { readonly: true, fileMustExist: true });
  try {
    return Number((db.prepare(sql).get(...args) as { n: number }).n);
  } finally {
    db.close();
  }
}

function assertKeyRep(key: KeyRep, user: string, clientId: string): void {
  assert.match(key.uri, uriRe('keys'));
  assert.deepEqual(Object.keys(key.jwk).sort(), ['k', 'kid', 'kty']);
  assert.equal(key.jwk.kty, 'oct');
  assert.equal(key.jwk.kid, idOf(key.uri), 'jwk.kid is the key uuid');
  assert.match(key.jwk.k, /^[A-Za-z0-9_-]+$/, 'k is base64url without padding');
  assert.equal(Buffer.from(key.jwk.k, 'base64url').length, 32, '256-bit key');
  assert.equal(key.userId, user);
  assert.equal(key.clientId, clientId);
  assert.match(key.createDate, DATE_RE);
  assert.match(key.expirationDate, DATE_RE);
}

// ---------------------------------------------------------------------------------------------
// The main KMS

const clock = manualClock();
let main: TestKms;
let alice: TestClient;
let bob: TestClient;
let carol: TestClient;
let dave: TestClient;

before(async () => {
  main = await startTestKms({ now: clock.now });
  [alice, bob, carol, dave] = await Promise.all([
    connect(main, 'alice@a.example'),
    connect(main, 'bob@a.example'),
    connect(main, 'carol@a.example'),
    connect(main, 'dave@a.example'),
  ]);
});

after(async () => {
  await main?.close();
});

describe('ecdhe: create and delete ephemeral keys (draft 4.7.1–4.7.2, PROTOCOL.md §4)', () => {
  test('create /ecdhe → 201, signed; absolute uri, userId from the token, clientId, dates, 1 h lifetime', async () => {
    const c = await connect(main, 'alice@a.example', { clientId: 'ecdhe-client-1' });
    for (const uri of ['/ecdhe', `kms://${AUTHORITY}/ecdhe`]) {
      const r = (await c.handshake({ uri, requestId: `hs-${uri}` })) as Answer;
      expectStatus(r, 201, uri);
      assert.equal(r._signed, true, 'the ECDHE answer is a JWS under the static key');
      assert.equal(r.requestId, `hs-${uri}`);
      const key = r.key;
      assert.match(key.uri, uriRe('ecdhe'));
      assert.equal(c.channelUri, key.uri);
      assert.equal(key.userId, 'alice@a.example');
      assert.equal(key.clientId, 'ecdhe-client-1');
      assert.equal(key.createDate, iso(clock.now()));
      assert.match(key.expirationDate, DATE_RE);
      assert.equal(Date.parse(key.expirationDate) - Date.parse(key.createDate), HOUR);
      assert.deepEqual(Object.keys(key.jwk).sort(), ['crv', 'kty', 'x', 'y']);
      assert.equal(key.jwk.crv, 'P-256');
      expectStatus(await send(c, ping), 200, 'ping on the new channel');
    }
  });

  test('credential.userId is ignored: the principal comes from the bearer alone', async () => {
    const c = await connect(main, 'alice@a.example');
    const r = (await c.handshake({ client: { clientId: c.clientId, credential: { bearer: c.bearer, userId: 'bob@a.example' } } })) as Answer;
    expectStatus(r, 201);
    assert.equal(r.key.userId, 'alice@a.example');
    const [key] = await newKeys(c);
    const got = await send(c, { method: 'retrieve', uri: key!.uri, client: { clientId: c.clientId, credential: { bearer: c.bearer, userId: 'device-uuid-1234' } } });
    expectStatus(got, 200);
    assert.equal(got.key.userId, 'alice@a.example');
  });

  test('ECDHE failures (bad jwk, unsupported curve) → 400 naming the field, signed by the static key', async () => {
    const c = await connect(main, 'alice@a.example');
    const { publicJwk } = await generateEphemeralKeyPair();
    for (const [jwk, field] of [
      [{ ...publicJwk, crv: 'P-384' }, 'crv'],
      [{ kty: 'RSA', n: 'AQAB', e: 'AQAB' }, 'kty'],
      [{ kty: 'EC', crv: 'P-256', x: publicJwk.x, y: publicJwk.x }, 'jwk'],
      [undefined, 'jwk'],
    ] as const) {
      const r = (await c.handshake({ jwk })) as Answer;
      expectStatus(r, 400, JSON.stringify(jwk));
      assert.equal(r._signed, true);
      assert.match(r.reason!, new RegExp(field));
    }
  });

  test('private members in the ECDHE jwk (node-kms sends d) are ignored, never stored or logged', async () => {
    const c = await connect(main, 'alice@a.example');
    const pair = await generateEphemeralKeyPair();
    const full = await globalThis.crypto.subtle.exportKey('jwk', pair.privateKey);
    assert.ok(full.d);
    const body = { requestId: 'with-d', client: c.client(), method: 'create', uri: '/ecdhe', jwk: { kty: 'EC', crv: 'P-256', x: full.x, y: full.y, d: full.d } };
    const r = (await c.decode((await postBatch(main.url, [await c.sealStatic(body)]))[0]!)) as Answer;
    expectStatus(r, 201);
    assert.equal(r.key.jwk.d, undefined);
    c.channelUri = r.key.uri;
    c.channelKey = await deriveChannelKey(pair.privateKey, await importEcPublicKey(r.key.jwk));
    expectStatus(await send(c, ping), 200, 'the channel derived from the public part works');
    assert.ok(!main.logs.join('').includes(full.d!), 'd appears in no log line');
    const raw = Buffer.from(full.d!, 'base64url');
    for (const file of [main.dbPath, `${main.dbPath}-wal`].filter((f) => existsSync(f))) {
      const bytes = readFileSync(file);
      assert.equal(bytes.includes(full.d!), false, `d (text) in ${file}`);
      assert.equal(bytes.includes(raw), false, `d (bytes) in ${file}`);
    }
  });

  test('delete own ephemeral key → 204 under the channel key; afterwards every message on it is a signed 499 reset', async () => {
    const c = await connect(main, 'alice@a.example');
    const r = await send(c, { method: 'delete', uri: `/ecdhe/${idOf(c.channelUri)}` });
    expectStatus(r, 204);
    assert.equal(r._signed, undefined, 'the answer to delete /ecdhe is still encrypted under that channel key');
    for (const body of [ping, { method: 'create', uri: '/keys', count: 1 }]) {
      const dead = await send(c, { ...body, requestId: 'after-delete' });
      expectStatus(dead, 499);
      assert.equal(dead._signed, true, 'a reset is a JWS under the static key');
      assert.equal(typeof dead.requestId, 'string');
    }
  });

  test('delete own ephemeral key by its absolute uri → 204', async () => {
    const c = await connect(main, 'bob@a.example');
    expectStatus(await send(c, { method: 'delete', uri: c.channelUri }), 204);
    expectStatus(await send(c, ping), 499);
  });

  test("deleting another user's ephemeral key → 403, and it stays alive", async () => {
    const a = await connect(main, 'alice@a.example');
    const b = await connect(main, 'bob@a.example');
    expectStatus(await send(b, { method: 'delete', uri: a.channelUri }), 403);
    expectStatus(await send(b, { method: 'delete', uri: `/ecdhe/${idOf(a.channelUri)}` }), 403);
    expectStatus(await send(a, ping), 200, "alice's channel still works");
  });

  test('deleting an unknown ephemeral key → 404', async () => {
    expectStatus(await send(alice, { method: 'delete', uri: unknownUri('ecdhe') }), 404);
  });

  test('a token of a domain this KMS does not serve → 403 at the handshake (signed)', async () => {
    const c = await connect(main, 'alice@a.example');
    c.bearer = await main.token('eve@evil.example');
    const r = (await c.handshake({ requestId: 'eve-1' })) as Answer;
    expectStatus(r, 403);
    assert.equal(r._signed, true);
    assert.equal(r.requestId, 'eve-1');
    assert.equal(r.key, undefined);
  });

  test("a token of an unserved domain on an existing channel → 403", async () => {
    const eveToken = await main.token('eve@evil.example');
    expectStatus(await send(alice, { ...ping, client: { clientId: alice.clientId, credential: { bearer: eveToken } } }), 403);
  });

  test("a request on Alice's channel carrying Bob's token → 403", async () => {
    const bobToken = await main.token('bob@a.example');
    const r = await send(alice, { ...ping, client: { clientId: alice.clientId, credential: { bearer: bobToken } } });
    expectStatus(r, 403);
    assert.equal(r._signed, undefined, 'a request that decrypts but fails is answered under the channel key');
    const [key] = await newKeys(bob);
    expectStatus(await send(alice, { method: 'retrieve', uri: key!.uri, client: { clientId: bob.clientId, credential: { bearer: bobToken } } }), 403);
  });

  test('missing bearer → 401 (on a channel and at the handshake)', async () => {
    expectStatus(await send(alice, { ...ping, client: { clientId: alice.clientId, credential: {} } }), 401);
    const c = await connect(main, 'alice@a.example');
    const r = (await c.handshake({ client: { clientId: c.clientId, credential: {} } })) as Answer;
    expectStatus(r, 401);
    assert.equal(r._signed, true);
  });

  test('an invalid bearer → 401', async () => {
    expectStatus(await send(alice, { ...ping, client: { clientId: alice.clientId, credential: { bearer: 'not-a-token' } } }), 401);
    const forged = `${alice.bearer.slice(0, -8)}AAAAAAAA`;
    expectStatus(await send(alice, { ...ping, client: { clientId: alice.clientId, credential: { bearer: forged } } }), 401);
  });
});

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
});

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

describe('ping, routing and requestId (PROTOCOL.md §4)', () => {
  test('update /ping → 200', async () => {
    const r = await expectOk(alice, { ...ping, requestId: 'ping-1' });
    assert.equal(r.requestId, 'ping-1');
    expectStatus(await send(alice, { method: 'update', uri: `kms://${AUTHORITY}/ping` }), 200);
  });

  test('unknown uri or method/uri combination → 400, the reason names the uri', async () => {
    for (const [method, uri] of [
      ['update', '/nonsense'],
      ['retrieve', '/ping'],
      ['delete', '/keys'],
      ['create', `/keys/${randomUUID()}`],
      ['retrieve', `/resources/${randomUUID()}/unknown`],
    ]) {
      const r = await send(alice, { method, uri });
      expectStatus(r, 400, `${method} ${uri}`);
      assert.ok(r.reason!.includes(uri!), `reason "${r.reason}" names ${uri}`);
    }
  });

  test('unknown method → 400 naming the method field', async () => {
    const r = await send(alice, { method: 'patch', uri: '/ping' });
    expectStatus(r, 400);
    assert.match(r.reason!, /method/);
  });

  test('a uri that is not a KMS URI → 400 naming uri; another authority → 404', async () => {
    const r = await send(alice, { method: 'update', uri: 'https://example.com/ping' });
    expectStatus(r, 400);
    assert.match(r.reason!, /uri/);
    expectStatus(await send(alice, { method: 'update', uri: 'kms://kms.z.example/ping' }), 404);
  });

  test('requestId is echoed verbatim: string, integer, numeric-looking string; on success and on failure', async () => {
    for (const requestId of ['req-abc-123', 42, 0, Number.MAX_SAFE_INTEGER, '42', -7]) {
      const ok = await send(alice, { ...ping, requestId });
      expectStatus(ok, 200);
      assert.strictEqual(ok.requestId, requestId);
      const failed = await send(alice, { method: 'update', uri: '/nonsense', requestId });
      expectStatus(failed, 400);
      assert.strictEqual(failed.requestId, requestId);
    }
  });

  test('a missing requestId → 400 naming requestId', async () => {
    const r = await send(alice, { ...ping, requestId: undefined });
    expectStatus(r, 400);
    assert.match(r.reason!, /requestId/);
  });

  test('several messages in one HTTP batch are answered in order', async () => {
    const bodies = [ping, { method: 'update', uri: '/nonsense' }, { method: 'create', uri: '/keys', count: 1 }].map((b, i) => ({ requestId: i, client: alice.client(), ...b }));
    const answers = await postBatch(main.url, await Promise.all(bodies.map((b) => alice.seal(b))));
    const decoded = (await Promise.all(answers.map((a) => alice.decode(a)))) as Answer[];
    assert.deepEqual(decoded.map((d) => [d.requestId, d.status]), [[0, 200], [1, 400], [2, 201]]);
  });
});

// ---------------------------------------------------------------------------------------------
// Expiry: its own KMS and clock, fresh clients in every test.

describe('expiry (manual clock): tokens, channels, unbound keys, resource TTL', () => {
  const tclock = manualClock();
  let timed: TestKms;

  before(async () => {
    timed = await startTestKms({ now: tclock.now });
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

// ---------------------------------------------------------------------------------------------
// Administrative API: its own KMS, since it rotates the global CMK.

describe('admin: CMKs (Administrative API)', () => {
  const aclock = manualClock();
  let admin: TestKms;
  let root: TestClient;
  let agent: TestClient;
  let user: TestClient;

  interface CmkRep {
    uri: string;
    state: string;
    assignedOrgId: string | null;
  }
  const listAll = async () => (await expectOk(root, { method: 'retrieve', uri: '/cmk' })).keys as CmkRep[];
  const globalActive = async () => (await listAll()).filter((c) => c.assignedOrgId === null && c.state === 'active');

  before(async () => {
    admin = await startTestKms({ now: aclock.now });
    [root, agent, user] = await Promise.all([
      connect(admin, 'root@a.example', { roles: ['kmsAdmin'] }),
      connect(admin, 'agent@a.example', { roles: ['orgAgent'] }),
      connect(admin, 'alice@a.example'),
    ]);
  });

  after(async () => {
    await admin?.close();
  });

  test('list /cmk by kmsAdmin → 200: one global active CMK at start', async () => {
    const keys = await listAll();
    assert.equal(keys.length, 1);
    assert.match(keys[0]!.uri, uriRe('cmk'));
    assert.equal(keys[0]!.state, 'active');
    assert.equal(keys[0]!.assignedOrgId, null);
  });

  test('a plain user may not list, create or update CMKs → 403', async () => {
    expectStatus(await send(user, { method: 'retrieve', uri: '/cmk' }), 403);
    expectStatus(await send(user, { method: 'create', uri: '/cmk' }), 403);
    expectStatus(await send(user, { method: 'create', uri: '/cmk', assignedOrgId: 'a.example' }), 403);
    const [global] = await listAll();
    expectStatus(await send(user, { method: 'update', uri: global!.uri, state: 'active' }), 403);
  });

  test('rotation by kmsAdmin → 201; the previous CMK turns inactive; old keys stay readable, new keys work and use the new CMK', async () => {
    const [oldCmk] = await globalActive();
    const [unbound, toBind] = await newKeys(user, 2);
    const resource = await newResource(user, { keyUris: [toBind!.uri] });
    aclock.advance(1);

    const r = await expectOk(root, { method: 'create', uri: '/cmk' }, 201);
    const rep = (r.key ?? r) as CmkRep;
    assert.match(rep.uri, uriRe('cmk'));
    assert.equal(rep.state, 'active');
    assert.equal(rep.assignedOrgId, null);
    assert.notEqual(rep.uri, oldCmk!.uri);
    const all = await listAll();
    assert.equal(all.find((c) => c.uri === oldCmk!.uri)!.state, 'inactive');
    assert.deepEqual((await globalActive()).map((c) => c.uri), [rep.uri]);

    assert.equal((await expectOk(user, { method: 'retrieve', uri: unbound!.uri })).key.jwk.k, unbound!.jwk.k);
    assert.equal((await expectOk(user, { method: 'retrieve', uri: toBind!.uri })).key.jwk.k, toBind!.jwk.k);
    const [fresh] = await newKeys(user);
    expectStatus(await bind(user, fresh!.uri, resource.uri), 200);
    const listed = (await resourceKeys(user, resource.uri)).keys as KeyRep[];
    assert.deepEqual(listed.map((k) => k.jwk.k).sort(), [toBind!.jwk.k, fresh!.jwk.k].sort());
    assert.equal(count(admin, 'SELECT count(*) AS n FROM keys WHERE id = ? AND cmk_id = ?', idOf(fresh!.uri), idOf(rep.uri)), 1, 'sealed under the new CMK');
    assert.equal(count(admin, 'SELECT count(*) AS n FROM keys WHERE id = ? AND cmk_id = ?', idOf(unbound!.uri), idOf(oldCmk!.uri)), 1);
    expectStatus(await send(user, ping), 200, 'channels made before the rotation keep working');
    const c = await connect(admin, 'alice@a.example', { clientId: user.clientId });
    expectStatus(await getKey(c, unbound!.uri), 200, 'and new channels work');
  });

  test('kmsAdmin may create a CMK for any organisation → 201', async () => {
    const r = await expectOk(root, { method: 'create', uri: '/cmk', assignedOrgId: 'b.example' }, 201);
    assert.equal((r.key ?? r).assignedOrgId, 'b.example');
  });

  test('orgAgent: own organisation → 201 and used for its users\' new keys; another organisation or the global CMK → 403', async () => {
    const r = await expectOk(agent, { method: 'create', uri: '/cmk', assignedOrgId: 'a.example' }, 201);
    const orgCmk = (r.key ?? r) as CmkRep;
    assert.equal(orgCmk.assignedOrgId, 'a.example');
    assert.equal(orgCmk.state, 'active');
    expectStatus(await send(agent, { method: 'create', uri: '/cmk', assignedOrgId: 'b.example' }), 403);
    expectStatus(await send(agent, { method: 'create', uri: '/cmk' }), 403);
    const [key] = await newKeys(user);
    assert.equal(count(admin, 'SELECT count(*) AS n FROM keys WHERE id = ? AND cmk_id = ?', idOf(key!.uri), idOf(orgCmk.uri)), 1);
    expectStatus(await getKey(user, key!.uri), 200);
  });

  test('a second CMK for the organisation → 201; the previous one of that organisation turns inactive, the global one stays active', async () => {
    const before = await listAll();
    const previous = before.filter((c) => c.assignedOrgId === 'a.example' && c.state === 'active');
    assert.equal(previous.length, 1);
    const [globalBefore] = await globalActive();
    const [older] = await newKeys(user);
    const r = await expectOk(agent, { method: 'create', uri: '/cmk', assignedOrgId: 'a.example' }, 201);
    const next = (r.key ?? r) as CmkRep;
    const after = await listAll();
    assert.equal(after.find((c) => c.uri === previous[0]!.uri)!.state, 'inactive');
    assert.deepEqual(after.filter((c) => c.assignedOrgId === 'a.example' && c.state === 'active').map((c) => c.uri), [next.uri]);
    assert.deepEqual((await globalActive()).map((c) => c.uri), [globalBefore!.uri]);
    assert.equal((await getKey(user, older!.uri)).key.jwk.k, older!.jwk.k);
  });

  test('orgAgent lists only its organisation\'s CMKs; kmsAdmin lists all, filtered by assignedOrgId on request', async () => {
    const mine = (await expectOk(agent, { method: 'retrieve', uri: '/cmk' })).keys as CmkRep[];
    assert.ok(mine.length >= 1);
    assert.ok(mine.every((c) => c.assignedOrgId === 'a.example'));
    const all = await listAll();
    assert.ok(all.some((c) => c.assignedOrgId === null));
    assert.ok(all.some((c) => c.assignedOrgId === 'b.example'));
    const b = (await expectOk(root, { method: 'retrieve', uri: '/cmk', assignedOrgId: 'b.example' })).keys as CmkRep[];
    assert.equal(b.length, 1);
    assert.equal(b[0]!.assignedOrgId, 'b.example');
    const one = (await expectOk(root, { method: 'retrieve', uri: b[0]!.uri })).keys as CmkRep[];
    assert.deepEqual(one.map((c) => c.uri), [b[0]!.uri]);
  });

  test('update state: orgAgent on its own CMK → 200 (inactive, then active again); on others → 403', async () => {
    const [orgCmk] = ((await listAll()).filter((c) => c.assignedOrgId === 'a.example' && c.state === 'active')) as CmkRep[];
    const [keyBefore] = await newKeys(user);
    const off = await expectOk(agent, { method: 'update', uri: orgCmk!.uri, state: 'inactive' });
    assert.equal((off.key ?? off).state, 'inactive');
    expectStatus(await getKey(user, keyBefore!.uri), 200, 'an inactive CMK still unseals');
    const [keyAfter] = await newKeys(user);
    assert.equal(count(admin, 'SELECT count(*) AS n FROM keys WHERE id = ? AND cmk_id = ?', idOf(keyAfter!.uri), idOf(orgCmk!.uri)), 0, 'an inactive CMK seals nothing new');
    const on = await expectOk(agent, { method: 'update', uri: orgCmk!.uri, state: 'active' });
    assert.equal((on.key ?? on).state, 'active');
    const [global] = await globalActive();
    expectStatus(await send(agent, { method: 'update', uri: global!.uri, state: 'active' }), 403);
    const [bCmk] = (await listAll()).filter((c) => c.assignedOrgId === 'b.example');
    expectStatus(await send(agent, { method: 'update', uri: bCmk!.uri, state: 'inactive' }), 403);
  });

  test('the global active CMK cannot be set inactive → 400; unknown CMK → 404; bad state → 400', async () => {
    const [global] = await globalActive();
    const r = await send(root, { method: 'update', uri: global!.uri, state: 'inactive' });
    expectStatus(r, 400);
    assert.match(r.reason!, /state/);
    assert.deepEqual((await globalActive()).map((c) => c.uri), [global!.uri]);
    expectStatus(await send(root, { method: 'update', uri: unknownUri('cmk'), state: 'active' }), 404);
    const bad = await send(root, { method: 'update', uri: global!.uri, state: 'destroyed-ish' });
    expectStatus(bad, 400);
    assert.match(bad.reason!, /state/);
    expectStatus(await send(user, { method: 'create', uri: '/keys', count: 1 }), 201, 'new keys still work');
  });
});

// ---------------------------------------------------------------------------------------------
// Restart: channels are stored sealed, so they survive.

describe('restart', () => {
  test('an existing client channel still works after the KMS restarts on the same database', async () => {
    const rclock = manualClock();
    const first = await startTestKms({ now: rclock.now });
    let second: TestKms | undefined;
    try {
      const c = await connect(first, 'alice@a.example');
      const [key] = await newKeys(c);
      const resource = await newResource(c, { authIds: ['bob@a.example'] });
      expectStatus(await bind(c, key!.uri, resource.uri), 200);
      const [unbound] = await newKeys(c);
      await first.close();

      second = await startTestKms({ now: rclock.now, dbPath: first.dbPath });
      const at = async (body: Record<string, unknown>) =>
        (await c.decode((await postBatch(second!.url, [await c.seal({ requestId: randomUUID(), client: c.client(), ...body })]))[0]!)) as Answer;
      expectStatus(await at(ping), 200);
      assert.equal((await at({ method: 'retrieve', uri: key!.uri })).key.jwk.k, key!.jwk.k);
      assert.equal((await at({ method: 'retrieve', uri: unbound!.uri })).key.jwk.k, unbound!.jwk.k);
      expectStatus(await at({ method: 'create', uri: '/keys', count: 1 }), 201);
      // Ownership survives too: Bob's token on Alice's restored channel is refused.
      const bobToken = await second.token('bob@a.example');
      expectStatus(await at({ ...ping, client: { clientId: c.clientId, credential: { bearer: bobToken } } }), 403);
      // And deleting it still kills it.
      expectStatus(await at({ method: 'delete', uri: c.channelUri }), 204);
      expectStatus(await at(ping), 499);
    } finally {
      await first.close();
      await second?.close();
    }
  });
});
