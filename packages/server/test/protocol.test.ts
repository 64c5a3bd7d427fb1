// PROTOCOL.md §3 (transports) and §4 (messages), end to end against a real KMS on a real socket:
// every case is checked on the decoded answer (a JWS verifying under the static key, or a JWE
// decrypting under the channel key), never on server internals.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { CompactEncrypt, CompactSign, decodeProtectedHeader, generateKeyPair, importJWK, type CryptoKey as JoseKey } from 'jose';
import WebSocket from 'ws';
import { deriveChannelKey, encryptStatic, generateEphemeralKeyPair, importEcPublicKey, joseCodec, segmentCount, type KmsResponse } from '@openkms/protocol';
import { manualClock, startDevKms, type DevKms } from '../src/testing/harness.js';
import { assertHealthy, postBatch, TestClient } from './support/client.js';

const enc = new TextEncoder();
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MiB = 1024 * 1024;

const b64u = (value: unknown): string =>
  Buffer.from(typeof value === 'string' ? value : value instanceof Uint8Array ? value : JSON.stringify(value)).toString('base64url');

type Answer = KmsResponse & { _signed?: boolean };

/** Sends one compact message in a batch of one and decodes the answer. */
async function send(client: TestClient, compact: string): Promise<Answer> {
  const [answer] = await postBatch(client.url, [compact]);
  assert.ok(typeof answer === 'string', 'one answer per message');
  return client.decode(answer);
}

/** Asserts a reset: a JWS (PS256, static kid) verifying under the static key, status 499, fresh UUID. */
async function assertReset(client: TestClient, compact: string, sentRequestId?: string | number): Promise<Answer> {
  const [raw] = await postBatch(client.url, [compact]);
  if (segmentCount(raw!) !== 3) {
    const got = await client.decode(raw!).catch((err: Error) => ({ status: `undecodable: ${err.message}`, reason: '' }));
    assert.fail(`expected a reset (a compact JWS, status 499), got a ${segmentCount(raw!)}-segment answer with status ${got.status} ${got.reason ?? ''}`);
  }
  const header = decodeProtectedHeader(raw!);
  assert.equal(header.alg, 'PS256');
  assert.equal(header.kid, client.wellKnown.rsaPublicKey.kid);
  const answer = await client.decode(raw!);
  assert.equal(answer._signed, true);
  assert.equal(answer.status, 499, `expected reset, got ${answer.status} ${answer.reason}`);
  assert.equal(typeof answer.requestId, 'string');
  assert.match(String(answer.requestId), UUID, 'a reset carries a fresh UUID requestId');
  if (sentRequestId !== undefined) assert.notEqual(answer.requestId, sentRequestId);
  return answer;
}

/** Asserts an error answer under the channel key (a JWE, not signed). */
function assertChannelError(answer: Answer, status: number, field?: string): void {
  assert.equal(answer._signed, undefined, 'a request that decrypts is answered under the channel key');
  assert.equal(answer.status, status, `expected ${status}, got ${answer.status} ${answer.reason}`);
  if (field !== undefined) {
    assert.equal(typeof answer.reason, 'string');
    assert.ok(answer.reason!.includes(field), `reason "${answer.reason}" names ${field}`);
  }
}

/** Replaces one character in the middle of segment `index` of a compact serialization. */
function flipInSegment(compact: string, index: number): string {
  const parts = compact.split('.');
  const seg = parts[index]!;
  assert.ok(seg.length >= 4, `segment ${index} long enough to tamper with`);
  const at = Math.floor(seg.length / 2);
  const c = seg[at] === 'A' ? 'B' : 'A';
  parts[index] = seg.slice(0, at) + c + seg.slice(at + 1);
  return parts.join('.');
}

function ping(client: TestClient, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { requestId: randomUUID(), client: client.client(), method: 'update', uri: '/ping', ...extra };
}

async function staticRsa(client: TestClient, alg: string): Promise<JoseKey> {
  const { kty, n, e } = client.wellKnown.rsaPublicKey;
  return (await importJWK({ kty, n, e }, alg)) as JoseKey;
}

/** An ECDHE request with the given jwk, under the static key (RSA-OAEP unless `alg` says otherwise). */
async function ecdheMessage(client: TestClient, jwk: unknown, alg = 'RSA-OAEP', extra: Record<string, unknown> = {}): Promise<string> {
  const body = { requestId: randomUUID(), client: client.client(), method: 'create', uri: '/ecdhe', jwk, ...extra };
  if (alg === 'RSA-OAEP') return client.sealStatic(body);
  return new CompactEncrypt(enc.encode(JSON.stringify(body)))
    .setProtectedHeader({ alg, enc: 'A256GCM', kid: client.wellKnown.rsaPublicKey.kid })
    .encrypt(await staticRsa(client, alg));
}

// --- minimal WebSocket client with a queue and timeouts -----------------------------------------

interface WsConn {
  ws: WebSocket;
  next(ms?: number): Promise<string>;
  closed: Promise<{ code: number; reason: string }>;
}

async function openWs(url: string): Promise<WsConn> {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/kms/ws`);
  const queue: string[] = [];
  const waiters: ((s: string) => void)[] = [];
  ws.on('message', (data) => {
    const text = String(data);
    const w = waiters.shift();
    if (w) w(text);
    else queue.push(text);
  });
  ws.on('error', () => {});
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: String(reason) })));
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  return {
    ws,
    closed,
    next(ms = 10_000) {
      const queued = queue.shift();
      if (queued !== undefined) return Promise.resolve(queued);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no WebSocket answer')), ms);
        waiters.push((s) => {
          clearTimeout(timer);
          resolve(s);
        });
      });
    },
  };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms)))]).finally(() => clearTimeout(timer));
}

/** A raw HTTP POST with a chunked body (no content-length). */
function postChunked(url: string, path: string, chunks: Buffer[]): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    (async () => {
      for (const chunk of chunks) {
        if (req.destroyed) return;
        if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      }
      req.end();
    })().catch(reject);
  });
}

// ---------------------------------------------------------------------------------------------

let kms: DevKms;
let alice: TestClient;

before(async () => {
  kms = await startDevKms();
  alice = await TestClient.connect(kms.url, await kms.token('alice@a.example'));
});

after(async () => {
  await kms?.close();
});

describe('§4 common messages that cannot be decrypted → reset 499', () => {
  for (const [name, index] of [
    ['ciphertext', 3],
    ['IV', 2],
    ['tag', 4],
  ] as const) {
    test(`tampered ${name}`, async () => {
      const body = ping(alice);
      const good = await alice.seal(body);
      assert.equal((await send(alice, good)).status, 200, 'the untampered message is accepted');
      await assertReset(alice, flipInSegment(good, index), body.requestId as string);
    });
  }

  test('tampered header (same kid, different protected header bytes)', async () => {
    const body = ping(alice);
    const good = await alice.seal(body);
    const parts = good.split('.');
    // A re-ordered header: same members, different bytes, so a different AAD.
    parts[0] = b64u(`{"enc":"A256GCM","alg":"dir","kid":${JSON.stringify(alice.channelUri)}}`);
    await assertReset(alice, parts.join('.'), body.requestId as string);
    // A header with a member added.
    parts[0] = b64u({ alg: 'dir', enc: 'A256GCM', kid: alice.channelUri, cty: 'JSON' });
    await assertReset(alice, parts.join('.'), body.requestId as string);
    // A flipped character in the header segment.
    await assertReset(alice, flipInSegment(good, 0), body.requestId as string);
  });

  test('each reset carries its own fresh requestId', async () => {
    const a = await assertReset(alice, 'not-a-jwe');
    const b = await assertReset(alice, 'not-a-jwe');
    assert.notEqual(a.requestId, b.requestId);
  });
});

describe('§4 kid unknown, of another authority, expired or deleted → reset 499', () => {
  test('kid unknown (random /ecdhe/<uuid>)', async () => {
    const body = ping(alice);
    await assertReset(alice, await alice.seal(body, `kms://kms.a.example/ecdhe/${randomUUID()}`), body.requestId as string);
    await assertReset(alice, await alice.seal(body, `/ecdhe/${randomUUID()}`), body.requestId as string);
  });

  test('kid of another authority (the real channel id and key under kms://kms.b.example)', async () => {
    const body = ping(alice);
    const id = alice.channelUri.split('/').pop()!;
    await assertReset(alice, await alice.seal(body, `kms://kms.b.example/ecdhe/${id}`), body.requestId as string);
  });

  test('kid expired (manual clock past the 1 h channel lifetime)', async () => {
    const clock = manualClock();
    const timed = await startDevKms({ now: clock.now });
    try {
      const client = await TestClient.connect(timed.url, await timed.token('alice@a.example', { ttlSeconds: 3 * 3600 }));
      assert.equal((await client.request({ method: 'update', uri: '/ping' })).status, 200);
      clock.advance(3600 * 1000 - 1000);
      assert.equal((await client.request({ method: 'update', uri: '/ping' })).status, 200, 'still alive just before the lifetime');
      clock.advance(1001);
      const body = ping(client);
      await assertReset(client, await client.seal(body), body.requestId as string);
      await assertReset(client, await client.seal(ping(client)), undefined);
    } finally {
      await timed.close();
    }
  });

  // "Expired or deleted ephemeral keys are never accepted again" (§4): once the KMS has seen a
  // channel expire, a wall clock stepping back (an NTP correction) must not revive it.
  test('an expired kid stays dead when the clock steps back a few seconds', async () => {
    const clock = manualClock();
    const timed = await startDevKms({ now: clock.now });
    try {
      const client = await TestClient.connect(timed.url, await timed.token('alice@a.example', { ttlSeconds: 3 * 3600 }));
      clock.advance(3600 * 1000 + 1);
      await assertReset(client, await client.seal(ping(client)));
      clock.advance(-5000);
      await assertReset(client, await client.seal(ping(client)));
    } finally {
      await timed.close();
    }
  });

  test('kid deleted (after delete /ecdhe/<id>); the delete answer is still under that channel', async () => {
    const client = await TestClient.connect(kms.url, await kms.token('alice@a.example'));
    const deleted = await client.request({ method: 'delete', uri: client.channelUri });
    assert.equal(deleted._signed, undefined, 'the delete answer is a JWE under the channel key');
    assert.equal(deleted.status, 204);
    const body = ping(client);
    await assertReset(client, await client.seal(body), body.requestId as string);
    await assertReset(client, await client.seal({ ...ping(client), method: 'delete', uri: client.channelUri }));
  });

  test('a channel used with another principal\u2019s credential → 403 under the channel key', async () => {
    const bob = await kms.token('bob@a.example');
    const answer = await send(alice, await alice.seal({ ...ping(alice), client: { clientId: alice.clientId, credential: { bearer: bob } } }));
    assertChannelError(answer, 403);
    // credential.userId is ignored: the principal comes from the bearer alone.
    const spoof = await send(alice, await alice.seal({ ...ping(alice), client: { clientId: alice.clientId, credential: { bearer: alice.bearer, userId: 'bob@a.example' } } }));
    assert.equal(spoof.status, 200);
  });
});

describe('§4 algorithm confusion → reset 499', () => {
  test('alg none: JWS-shaped and JWE-shaped', async () => {
    const payload = ping(alice);
    await assertReset(alice, `${b64u({ alg: 'none' })}.${b64u(payload)}.`);
    await assertReset(alice, `${b64u({ alg: 'none', kid: alice.channelUri })}.${b64u(payload)}.`);
    await assertReset(alice, `${b64u({ alg: 'none', enc: 'A256GCM', kid: alice.channelUri })}..${b64u(randomBytes(12))}.${b64u(JSON.stringify(payload))}.${b64u(randomBytes(16))}`);
    await assertReset(alice, `${b64u({ alg: 'none', kid: alice.channelUri })}.${b64u(payload)}...`);
    await assertReset(alice, `${b64u({ alg: 'dir', enc: 'none', kid: alice.channelUri })}..${b64u(randomBytes(12))}.${b64u(JSON.stringify(payload))}.`);
    // The real channel message with its header swapped for alg none.
    const parts = (await alice.seal(payload)).split('.');
    parts[0] = b64u({ alg: 'none', enc: 'A256GCM', kid: alice.channelUri });
    await assertReset(alice, parts.join('.'));
  });

  test('HS256 JWS "signed" with the static public key bytes', async () => {
    const { kty, n, e } = alice.wellKnown.rsaPublicKey;
    const pem = createPublicKey({ key: { kty, n, e }, format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string;
    for (const secret of [enc.encode(pem), enc.encode(JSON.stringify(alice.wellKnown.rsaPublicKey)), Buffer.from(n, 'base64url')]) {
      for (const kid of [alice.wellKnown.rsaPublicKey.kid, alice.channelUri]) {
        const jws = await new CompactSign(enc.encode(JSON.stringify(ping(alice)))).setProtectedHeader({ alg: 'HS256', kid }).sign(secret);
        await assertReset(alice, jws);
      }
    }
  });

  test('JWE with alg A128KW / A256KW (channel key bytes) → reset', async () => {
    const payload = enc.encode(JSON.stringify(ping(alice)));
    const a128 = await new CompactEncrypt(payload).setProtectedHeader({ alg: 'A128KW', enc: 'A256GCM', kid: alice.channelUri }).encrypt(alice.channelKey.slice(0, 16));
    await assertReset(alice, a128);
    const a256 = await new CompactEncrypt(payload).setProtectedHeader({ alg: 'A256KW', enc: 'A256GCM', kid: alice.channelUri }).encrypt(alice.channelKey);
    await assertReset(alice, a256);
  });

  test('JWE with enc A128GCM (dir with half the channel key; RSA-OAEP to the static key) → reset', async () => {
    const payload = enc.encode(JSON.stringify(ping(alice)));
    const dir = await new CompactEncrypt(payload).setProtectedHeader({ alg: 'dir', enc: 'A128GCM', kid: alice.channelUri }).encrypt(alice.channelKey.slice(0, 16));
    await assertReset(alice, dir);
    const pair = await generateEphemeralKeyPair();
    const body = { requestId: randomUUID(), client: alice.client(), method: 'create', uri: '/ecdhe', jwk: pair.publicJwk };
    const rsa = await new CompactEncrypt(enc.encode(JSON.stringify(body)))
      .setProtectedHeader({ alg: 'RSA-OAEP', enc: 'A128GCM', kid: alice.wellKnown.rsaPublicKey.kid })
      .encrypt(await staticRsa(alice, 'RSA-OAEP'));
    await assertReset(alice, rsa, body.requestId);
  });
});

describe('§4 ECDHE', () => {
  test('RSA-OAEP to a wrong RSA key (another key pair, same kid) → reset', async () => {
    const other = await generateKeyPair('RSA-OAEP', { modulusLength: 2048 });
    const pair = await generateEphemeralKeyPair();
    const body = { requestId: randomUUID(), client: alice.client(), method: 'create', uri: '/ecdhe', jwk: pair.publicJwk };
    const msg = await encryptStatic(enc.encode(JSON.stringify(body)), other.publicKey, alice.wellKnown.rsaPublicKey.kid);
    await assertReset(alice, msg, body.requestId);
  });

  test('the ECDHE uri may be absolute (kms://kms.a.example/ecdhe)', async () => {
    const pair = await generateEphemeralKeyPair();
    const answer = await send(alice, await ecdheMessage(alice, pair.publicJwk, 'RSA-OAEP', { uri: 'kms://kms.a.example/ecdhe' }));
    assert.equal(answer._signed, true);
    assert.equal(answer.status, 201, `got ${answer.status} ${answer.reason}`);
    assert.match((answer.key as { uri: string }).uri, /^kms:\/\/kms\.a\.example\/ecdhe\//);
  });

  test('RSA-OAEP-256 is accepted (201) and the channel works', async () => {
    const pair = await generateEphemeralKeyPair();
    const answer = await send(alice, await ecdheMessage(alice, pair.publicJwk, 'RSA-OAEP-256'));
    assert.equal(answer._signed, true, 'the ECDHE answer is a JWS');
    assert.equal(answer.status, 201, `got ${answer.status} ${answer.reason}`);
    const key = answer.key as { uri: string; jwk: { kty: 'EC'; crv: 'P-256'; x: string; y: string } };
    assert.match(key.uri, /^kms:\/\/kms\.a\.example\/ecdhe\/[0-9a-f-]{36}$/);
    const channelKey = await deriveChannelKey(pair.privateKey, await importEcPublicKey(key.jwk));
    const raw = (await postBatch(alice.url, [await alice.seal(ping(alice), key.uri, channelKey)]))[0]!;
    assert.equal(segmentCount(raw), 5);
    const { plaintext } = await joseCodec.decryptChannel(raw, channelKey);
    assert.equal((JSON.parse(new TextDecoder().decode(plaintext)) as KmsResponse).status, 200);
  });

  test('a bad jwk (not EC, crv P-384, point not on the curve, missing x) → 400 signed JWS naming jwk', async () => {
    const p384 = await globalThis.crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-384' }, true, ['deriveBits']);
    const p384Jwk = await globalThis.crypto.subtle.exportKey('jwk', (p384 as CryptoKeyPair).publicKey);
    const good = (await generateEphemeralKeyPair()).publicJwk;
    const yBytes = Buffer.from(good.y, 'base64url');
    yBytes[yBytes.length - 1]! ^= 1;
    const rsaJwk = { kty: 'RSA', n: alice.wellKnown.rsaPublicKey.n, e: 'AQAB' };
    const cases: unknown[] = [
      rsaJwk,
      { kty: 'oct', k: b64u(randomBytes(32)) },
      { kty: p384Jwk.kty, crv: p384Jwk.crv, x: p384Jwk.x, y: p384Jwk.y },
      { ...good, crv: 'P-384' },
      { ...good, y: yBytes.toString('base64url') },
      { kty: 'EC', crv: 'P-256', x: b64u(randomBytes(32)), y: b64u(randomBytes(32)) },
      { kty: 'EC', crv: 'P-256', y: good.y },
      { kty: 'EC', crv: 'P-256', x: good.x, y: 'not base64 !' },
      { kty: 'EC', crv: 'secp256k1', x: good.x, y: good.y },
      'a string',
      [good],
      null,
    ];
    for (const jwk of cases) {
      const answer = await send(alice, await ecdheMessage(alice, jwk));
      assert.equal(answer._signed, true, `jwk ${JSON.stringify(jwk)}: answered by a signed JWS`);
      assert.equal(answer.status, 400, `jwk ${JSON.stringify(jwk)}: got ${answer.status} ${answer.reason}`);
      assert.ok(answer.reason?.includes('jwk'), `reason "${answer.reason}" names jwk`);
      assert.equal(answer.key, undefined);
    }
    // Missing jwk altogether.
    const missing = await send(alice, await alice.sealStatic({ requestId: randomUUID(), client: alice.client(), method: 'create', uri: '/ecdhe' }));
    assert.equal(missing._signed, true);
    assert.equal(missing.status, 400);
    assert.ok(missing.reason?.includes('jwk'), `reason "${missing.reason}" names jwk`);
  });

  test('ECDHE failures other than jwk are signed too: bad credential → 401, foreign domain → 403, wrong uri → 400', async () => {
    const pair = await generateEphemeralKeyPair();
    const bad = await send(alice, await ecdheMessage(alice, pair.publicJwk, 'RSA-OAEP', { client: { clientId: 'c', credential: { bearer: 'x.y.z' } } }));
    assert.equal(bad._signed, true);
    assert.equal(bad.status, 401);
    const foreign = await send(alice, await ecdheMessage(alice, pair.publicJwk, 'RSA-OAEP', { client: { clientId: 'c', credential: { bearer: await kms.token('eve@b.example') } } }));
    assert.equal(foreign._signed, true);
    assert.equal(foreign.status, 403);
    const wrongUri = await send(alice, await ecdheMessage(alice, pair.publicJwk, 'RSA-OAEP', { uri: '/keys' }));
    assert.equal(wrongUri._signed, true);
    assert.equal(wrongUri.status, 400);
    assert.ok(wrongUri.reason?.includes('uri'));
  });

  test('a jwk with the private member d → 201; d never in the logs nor in the SQLite files', async () => {
    const pair = (await globalThis.crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits'])) as CryptoKeyPair;
    const full = await globalThis.crypto.subtle.exportKey('jwk', pair.privateKey);
    assert.ok(full.d);
    const jwk = { kty: 'EC', crv: 'P-256', x: full.x, y: full.y, d: full.d };
    const answer = await send(alice, await ecdheMessage(alice, jwk));
    assert.equal(answer._signed, true);
    assert.equal(answer.status, 201, `got ${answer.status} ${answer.reason}`);
    const key = answer.key as { uri: string; jwk: { kty: 'EC'; crv: 'P-256'; x: string; y: string } };
    // The channel works (the server used only x and y).
    const channelKey = await deriveChannelKey(pair.privateKey, await importEcPublicKey(key.jwk));
    const raw = (await postBatch(alice.url, [await alice.seal(ping(alice), key.uri, channelKey)]))[0]!;
    assert.equal(segmentCount(raw), 5, 'a ping on the new channel is answered under it');

    const d = full.d!;
    const dBytes = Buffer.from(d, 'base64url');
    const logs = kms.logs.join('');
    assert.ok(!logs.includes(d), 'd appears in the server logs');
    for (const path of [kms.dbPath, `${kms.dbPath}-wal`]) {
      if (!existsSync(path)) continue;
      const bytes = readFileSync(path);
      assert.equal(bytes.indexOf(d), -1, `d (base64url) appears in ${path}`);
      assert.equal(bytes.indexOf(dBytes), -1, `d (raw bytes) appears in ${path}`);
    }
  });
});

describe('§4 payload validation (decrypts, then fails → 400 under the channel key)', () => {
  test('decryptable but not JSON → 400 JWE', async () => {
    for (const text of ['not json', '{"requestId": "x",', '', '\u0000\u0001', 'undefined']) {
      assertChannelError(await send(alice, await alice.seal(text)), 400);
    }
    // Not UTF-8.
    const bytes = await joseCodec.encryptChannel(new Uint8Array([0xff, 0xfe, 0x7b, 0x7d]), alice.channelKey, alice.channelUri);
    assertChannelError(await send(alice, bytes), 400);
    // JSON but not an object.
    for (const text of ['null', '42', '"ping"', '[]', 'true']) {
      assertChannelError(await send(alice, await alice.seal(text)), 400);
    }
  });

  test('a missing client / method / uri / requestId → 400 naming the field', async () => {
    for (const field of ['client', 'method', 'uri', 'requestId']) {
      const body = ping(alice);
      delete body[field];
      const answer = await send(alice, await alice.seal(body));
      assertChannelError(answer, 400, field);
    }
  });

  test('wrong types → 400 naming the field', async () => {
    const cases: [string, Record<string, unknown>][] = [
      ['requestId', { requestId: { id: 1 } }],
      ['requestId', { requestId: 1.5 }],
      ['requestId', { requestId: true }],
      ['requestId', { requestId: null }],
      ['requestId', { requestId: 'x'.repeat(257) }],
      ['requestId', { requestId: 2 ** 60 }],
      ['client', { client: 'alice' }],
      ['client', { client: [alice.client()] }],
      ['client.clientId', { client: { clientId: 5, credential: alice.client().credential } }],
      ['client.clientId', { client: { clientId: '', credential: alice.client().credential } }],
      ['client.credential', { client: { clientId: alice.clientId } }],
      ['client.credential', { client: { clientId: alice.clientId, credential: 'bearer' } }],
      ['client.credential.bearer', { client: { clientId: alice.clientId, credential: { bearer: 42 } } }],
      ['method', { method: 5 }],
      ['method', { method: 'patch' }],
      ['method', { method: 'UPDATE' }],
      ['uri', { uri: 5 }],
      ['uri', { uri: '' }],
      ['uri', { uri: ['/ping'] }],
      ['uri', { uri: '/nope' }],
      ['uri', { uri: 'ping' }],
    ];
    for (const [field, patch] of cases) {
      const answer = await send(alice, await alice.seal({ ...ping(alice), ...patch }));
      assertChannelError(answer, 400, field);
    }
  });

  test('prototype keys do not stand in for missing members', async () => {
    // Written by hand: JSON.stringify would not emit a "__proto__" member.
    const text = `{"requestId":"proto-1","__proto__":${JSON.stringify(ping(alice))},"constructor":{"prototype":{"method":"update"}}}`;
    const answer = await send(alice, await alice.seal(text));
    assertChannelError(answer, 400);
    assert.equal(answer.requestId, 'proto-1');
  });
});

describe('§4 requestId echoed verbatim', () => {
  const ids: (string | number)[] = ['abc', '', ' spaced id ', 'ünïcødé-✓-😀', '"quoted"', '0', 42, 0, -7, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 'x'.repeat(256)];
  test('on success', async () => {
    for (const requestId of ids) {
      const answer = await send(alice, await alice.seal(ping(alice, { requestId })));
      assert.equal(answer.status, 200, `requestId ${JSON.stringify(requestId)}: ${answer.status} ${answer.reason}`);
      assert.equal(typeof answer.requestId, typeof requestId);
      assert.equal(answer.requestId, requestId);
    }
  });
  test('on errors (400 under the channel key, ECDHE 400 under the static key)', async () => {
    for (const requestId of ['err-1', 7]) {
      const answer = await send(alice, await alice.seal(ping(alice, { requestId, uri: '/nope' })));
      assertChannelError(answer, 400, 'uri');
      assert.equal(answer.requestId, requestId);
      const ecdhe = await send(alice, await ecdheMessage(alice, { kty: 'RSA' }, 'RSA-OAEP', { requestId }));
      assert.equal(ecdhe._signed, true);
      assert.equal(ecdhe.status, 400);
      assert.equal(ecdhe.requestId, requestId);
    }
  });
  test('on ECDHE success', async () => {
    for (const requestId of ['hs-1', 99]) {
      const pair = await generateEphemeralKeyPair();
      const answer = await send(alice, await ecdheMessage(alice, pair.publicJwk, 'RSA-OAEP', { requestId }));
      assert.equal(answer.status, 201);
      assert.equal(answer.requestId, requestId);
    }
  });
});

describe('§3 HTTP transport', () => {
  const post = (body: string | Blob, path = '/kms/messages') =>
    fetch(`${kms.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });

  async function expectHttpError(res: Response, status: number): Promise<void> {
    assert.equal(res.status, status);
    const body = (await res.json()) as { error?: unknown };
    assert.equal(typeof body.error, 'string', 'an HTTP error carries a JSON {"error": "…"}');
  }

  test('a body that is not a batch → 400 {error}', async () => {
    await expectHttpError(await post('not json'), 400);
    await expectHttpError(await post('{}'), 400);
    await expectHttpError(await post('{"kmsMessages": []}'), 400);
    await expectHttpError(await post('{"kmsMessages": "abc"}'), 400);
    await expectHttpError(await post('{"kmsMessages": [1]}'), 400);
    await expectHttpError(await post('{"kmsMessages": [null]}'), 400);
    await expectHttpError(await post('{"kmsMessages": {"0": "abc"}}'), 400);
    await expectHttpError(await post('null'), 400);
    await expectHttpError(await post('[]'), 400);
    await expectHttpError(await post('["abc"]'), 400);
    await expectHttpError(await post(''), 400);
    await expectHttpError(await post(new Blob([new Uint8Array([0xff, 0xfe, 0x00])])), 400);
  });

  test('101 messages → 413; 100 messages → 200 with 100 answers', async () => {
    await expectHttpError(await post(JSON.stringify({ kmsMessages: Array.from({ length: 101 }, () => 'x') })), 413);
    const answers = await postBatch(kms.url, Array.from({ length: 100 }, () => 'x'));
    assert.equal(answers.length, 100);
    for (const a of answers) assert.equal((await alice.decode(a)).status, 499);
  });

  test('a body over 1 MiB → 413 (with content-length, and chunked)', async () => {
    await expectHttpError(await post(JSON.stringify({ kmsMessages: ['a'.repeat(MiB + 16)] })), 413);
    await expectHttpError(await post(JSON.stringify({ kmsMessages: Array.from({ length: 20 }, () => 'b'.repeat(64 * 1024)) })), 413);
    const chunk = Buffer.alloc(64 * 1024, 'c');
    const chunked = await withTimeout(
      postChunked(kms.url, '/kms/messages', [Buffer.from('{"kmsMessages":["'), ...Array.from({ length: 17 }, () => chunk), Buffer.from('"]}')]),
      15_000,
      'chunked oversized body',
    );
    assert.equal(chunked.status, 413);
    assert.equal(typeof (JSON.parse(chunked.body) as { error?: unknown }).error, 'string');
    // The server still serves.
    assert.equal((await fetch(`${kms.url}/healthz`)).status, 200);
  });

  test('a body of exactly 1 MiB is a batch (200); one byte more → 413', async () => {
    const frame = (n: number) => JSON.stringify({ kmsMessages: ['x'.repeat(n)] });
    const overhead = frame(0).length;
    const exact = frame(MiB - overhead);
    assert.equal(Buffer.byteLength(exact), MiB);
    const res = await post(exact);
    assert.equal(res.status, 200);
    const { kmsMessages } = (await res.json()) as { kmsMessages: string[] };
    assert.equal(kmsMessages.length, 1);
    assert.equal((await alice.decode(kmsMessages[0]!)).status, 499);
    await expectHttpError(await post(frame(MiB - overhead + 1)), 413);
  });

  test('a batch mixing valid and invalid messages → 200, one answer each, in order', async () => {
    const p1 = ping(alice, { requestId: 'mix-1' });
    const p2 = ping(alice, { requestId: 'mix-2' });
    const messages = [
      await alice.seal(p1),
      'garbage',
      await alice.seal({ ...ping(alice, { requestId: 'mix-3' }), uri: '/nope' }),
      await alice.seal(p2),
      flipInSegment(await alice.seal(ping(alice)), 3),
      await alice.seal('not json'),
    ];
    const res = await post(JSON.stringify({ kmsMessages: messages }));
    assert.equal(res.status, 200);
    const { kmsMessages } = (await res.json()) as { kmsMessages: string[] };
    assert.equal(kmsMessages.length, messages.length);
    const decoded = await Promise.all(kmsMessages.map((a) => alice.decode(a)));
    assert.deepEqual(
      decoded.map((d) => [d.status, d._signed === true]),
      [
        [200, false],
        [499, true],
        [400, false],
        [200, false],
        [499, true],
        [400, false],
      ],
    );
    assert.equal(decoded[0]!.requestId, 'mix-1');
    assert.equal(decoded[2]!.requestId, 'mix-3');
    assert.equal(decoded[3]!.requestId, 'mix-2');
  });

  test('unknown path → 404', async () => {
    for (const [method, path] of [
      ['GET', '/nope'],
      ['POST', '/kms/nope'],
      ['POST', '/kms/messages/extra'],
      ['GET', '/.well-known/other'],
    ] as const) {
      const res = await fetch(`${kms.url}${path}`, { method, ...(method === 'POST' ? { body: '{"kmsMessages":["x"]}' } : {}) });
      assert.equal(res.status, 404, `${method} ${path}`);
      await res.arrayBuffer();
    }
  });

  test('GET /healthz, /readyz → 200; /metrics is Prometheus text with the KMS series', async () => {
    await assertHealthy(kms.url);
    const metrics = await fetch(`${kms.url}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(metrics.headers.get('content-type') ?? '', /^text\/plain/);
    const text = await metrics.text();
    assert.match(text, /^kms_requests_total\{/m);
    assert.match(text, /^kms_channels_open \d+/m);
  });

  test('GET /.well-known/kms has exactly kmsCluster, rsaPublicKey (kty, kid, n, e, x5c) and domains', async () => {
    const res = await fetch(`${kms.url}/.well-known/kms`);
    assert.equal(res.status, 200);
    const doc = (await res.json()) as Record<string, unknown>;
    assert.deepEqual(Object.keys(doc).sort(), ['domains', 'kmsCluster', 'rsaPublicKey']);
    assert.equal(doc.kmsCluster, 'kms://kms.a.example');
    assert.deepEqual(doc.domains, ['a.example']);
    const jwk = doc.rsaPublicKey as Record<string, unknown>;
    assert.deepEqual(Object.keys(jwk).sort(), ['e', 'kid', 'kty', 'n', 'x5c']);
    for (const member of ['alg', 'use', 'key_ops', 'd', 'p', 'q', 'dp', 'dq', 'qi']) assert.ok(!(member in jwk), `no ${member}`);
    assert.equal(jwk.kty, 'RSA');
    assert.equal(jwk.kid, 'kms://kms.a.example');
    assert.ok(Array.isArray(jwk.x5c) && jwk.x5c.length >= 1 && jwk.x5c.every((c) => typeof c === 'string'));
  });
});

describe('§3 WebSocket transport', () => {
  test('a request is answered with the matching requestId', async () => {
    const conn = await openWs(kms.url);
    try {
      const ids = ['ws-1', 'ws-2', 'ws-3'];
      for (const requestId of ids) conn.ws.send(await alice.seal(ping(alice, { requestId })));
      const answers = await Promise.all(ids.map(() => conn.next().then((a) => alice.decode(a))));
      assert.deepEqual(answers.map((a) => a.requestId).sort(), ids);
      for (const a of answers) assert.equal(a.status, 200);
      // And via the shared client helper.
      const [viaHelper] = await withTimeout(alice.requestWs([{ method: 'update', uri: '/ping' }]), 10_000, 'requestWs');
      assert.equal(viaHelper!.status, 200);
    } finally {
      conn.ws.close();
    }
  });

  test('a garbage frame gets a reset and the socket stays open for a next valid request', async () => {
    const conn = await openWs(kms.url);
    try {
      conn.ws.send('garbage frame');
      const reset = await alice.decode(await conn.next());
      assert.equal(reset._signed, true);
      assert.equal(reset.status, 499);
      assert.match(String(reset.requestId), UUID);
      conn.ws.send(flipInSegment(await alice.seal(ping(alice)), 4));
      assert.equal((await alice.decode(await conn.next())).status, 499);
      assert.equal(conn.ws.readyState, WebSocket.OPEN);
      conn.ws.send(await alice.seal(ping(alice, { requestId: 'after-garbage' })));
      const ok = await alice.decode(await conn.next());
      assert.equal(ok.status, 200);
      assert.equal(ok.requestId, 'after-garbage');
    } finally {
      conn.ws.close();
    }
  });

  test('a frame of exactly 1 MiB is still a message (reset), the socket stays open', async () => {
    const conn = await openWs(kms.url);
    try {
      conn.ws.send('a'.repeat(MiB));
      const answer = await alice.decode(await conn.next());
      assert.equal(answer.status, 499);
      conn.ws.send(await alice.seal(ping(alice, { requestId: 'after-1mib' })));
      assert.equal((await alice.decode(await conn.next())).requestId, 'after-1mib');
    } finally {
      conn.ws.close();
    }
  });

  test('a frame over 1 MiB closes the socket with 1009', async () => {
    const conn = await openWs(kms.url);
    conn.ws.send('a'.repeat(MiB + 1));
    const { code } = await withTimeout(conn.closed, 10_000, 'socket close');
    assert.equal(code, 1009);
  });

  test('an unknown WebSocket path is refused', async () => {
    const ws = new WebSocket(`${kms.url.replace(/^http/, 'ws')}/kms/other`);
    const outcome = await withTimeout(
      new Promise<string>((resolve) => {
        ws.once('open', () => resolve('open'));
        ws.once('error', () => resolve('refused'));
      }),
      10_000,
      'ws refusal',
    );
    ws.terminate();
    assert.equal(outcome, 'refused');
  });
});

describe('§4/§5 counts over the limit → 413', () => {
  test('create /keys count 101 → 413 (count 100 → 201)', async () => {
    assertChannelError(await alice.request({ method: 'create', uri: '/keys', count: 101 }), 413, 'count');
    const ok = await alice.request({ method: 'create', uri: '/keys', count: 100 });
    assert.equal(ok.status, 201);
    assert.equal((ok.keys as unknown[]).length, 100);
  });

  test('authIds of 101 → 413 (create /resources, create /authorizations, bulk delete)', async () => {
    const many = Array.from({ length: 101 }, (_, i) => `user${i}@a.example`);
    assertChannelError(await alice.request({ method: 'create', uri: '/resources', authIds: many }), 413, 'authIds');
    assertChannelError(await alice.request({ method: 'create', uri: '/resources', userIds: many }), 413, 'userIds');
    const created = await alice.request({ method: 'create', uri: '/resources', authIds: ['bob@a.example'] });
    assert.equal(created.status, 201);
    const resourceUri = (created.resource as { uri: string }).uri;
    assertChannelError(await alice.request({ method: 'create', uri: '/authorizations', resourceUri, authIds: many }), 413, 'authIds');
    assertChannelError(await alice.request({ method: 'delete', uri: '/authorizations', resourceUri, authIds: many }), 413, 'authIds');
  });
});
