/**
 * The ECDHE operations (draft 4.7.1–4.7.2, PROTOCOL.md §4; src/operations/ecdhe.ts): the handshake,
 * closing a channel, who may use a channel; and that channels, stored sealed, survive a restart.
 *
 * End-to-end on a real KMS (real SQLite file, real keys, a real socket) driven by TestClient over
 * HTTP batch; time from manual clocks, never wall-clock timings.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { deriveChannelKey, generateEphemeralKeyPair, importEcPublicKey } from '@openkms/protocol';
import { TestClient, postBatch } from '../support/client.js';
import { manualClock, startDevKms, type DevKms } from '../../src/testing/harness.js';
import {
  useMainKms,
  AUTHORITY,
  bind,
  connect,
  DATE_RE,
  expectStatus,
  HOUR,
  idOf,
  iso,
  newKeys,
  newResource,
  ping,
  send,
  unknownUri,
  uriRe,
  type Answer,
} from '../support/operations.js';

const clock = manualClock();
let main: DevKms;
let alice: TestClient;
let bob: TestClient;
useMainKms(clock, (shared) => ({ main, alice, bob } = shared));

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

describe('restart', () => {
  test('an existing client channel still works after the KMS restarts on the same database', async () => {
    const rclock = manualClock();
    const first = await startDevKms({ now: rclock.now });
    let second: DevKms | undefined;
    try {
      const c = await connect(first, 'alice@a.example');
      const [key] = await newKeys(c);
      const resource = await newResource(c, { authIds: ['bob@a.example'] });
      expectStatus(await bind(c, key!.uri, resource.uri), 200);
      const [unbound] = await newKeys(c);
      await first.close();

      second = await startDevKms({ now: rclock.now, dbPath: first.dbPath });
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
