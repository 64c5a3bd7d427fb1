// A generated corpus of malformed messages against one running KMS (PROTOCOL.md §3–§4). Every
// answer must be a well-formed compact response — a JWS PS256 verifying under the static key, or a
// JWE decrypting under the channel key — whose status is one of the client-error statuses or a
// reset, never 500; and the KMS must still serve afterwards. Reproduce a run with
// MALFORMED_SEED=<seed> (the seed is printed at the start).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { CompactEncrypt, CompactSign, decodeProtectedHeader, generateKeyPair, importJWK, type CryptoKey as JoseKey } from 'jose';
import WebSocket from 'ws';
import { generateEphemeralKeyPair, isPlainText, joseCodec, segmentCount } from '@openkms/protocol';
import { verifyAudit } from '../src/audit/audit.js';
import { openStore, withRootKey } from '../src/server.js';
import { startDevKms, type DevKms } from '../src/testing/harness.js';
import { assertHealthy, TestClient } from './support/client.js';
import { seededRandom } from './support/random.js';

const random = seededRandom('MALFORMED_SEED');
const { rand, int, chance, pick, at, bytes } = random;
const SEED = random.seed;
console.log(`malformed corpus: MALFORMED_SEED=${SEED}`);
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const randB64u = (n: number): string => Array.from({ length: n }, () => B64URL[int(64)]).join('');
const b64u = (value: unknown): string =>
  Buffer.from(typeof value === 'string' ? value : value instanceof Uint8Array ? value : JSON.stringify(value)).toString('base64url');

/** Unicode junk: lone surrogates, controls, BOM, RTL and zero-width marks, emoji, combining marks. */
const JUNK = ['\ud800', '\udfff', '\u0000', '\u0007', '\u001b', '\ufeff', '\u202e', '\u200b', '\u2028', '\u0301', '😀', '𝕏', 'ß', 'İ', '\uffff', '\\', '"', '%00', '../', '\r\n'];
const junk = (n: number): string => Array.from({ length: n }, () => (chance(0.5) ? pick(JUNK) : String.fromCharCode(int(0x3000)))).join('');

/** A random JSON value (depth-bounded). */
function randomJson(depth = 0): unknown {
  switch (int(depth > 3 ? 5 : 8)) {
    case 0:
      return null;
    case 1:
      return chance(0.5);
    case 2:
      return pick([0, -1, 1.5, 1e308, -1e-308, Number.MAX_SAFE_INTEGER + 2, int(1000)]);
    case 3:
      return junk(int(12));
    case 4:
      return randB64u(int(40));
    case 5:
      return Array.from({ length: int(4) }, () => randomJson(depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = int(4); i > 0; i--) o[pick(['alg', 'enc', 'kid', 'cty', 'zip', 'crit', 'jwk', 'x', junk(3), '__proto__', 'constructor'])] = randomJson(depth + 1);
      return o;
    }
  }
}

// --- the corpus -------------------------------------------------------------------------------------

interface Item {
  kind: string;
  msg: string;
  /** Statuses this item may get (always a subset of ALLOWED). */
  expect: readonly number[];
  /** true: must be a signed JWS; false: must be a JWE under the channel key. */
  signed?: boolean;
  /** The requestId the answer must echo. */
  rid?: string | number;
  /** What the reason must say (the field a 400 names). */
  reason?: RegExp;
}

const ALLOWED = [400, 401, 403, 404, 409, 413, 499] as const;
const RESET = [499] as const;
const CORPUS_SIZE = 1200;
const WS_SHARE = 150;

let kms: DevKms;
let alice: TestClient;
let staticKid = '';
let staticRsa: JoseKey;
let staticRsa256: JoseKey;
const tokens: Record<string, string> = {};
const protoBefore = Object.getOwnPropertyNames(Object.prototype).sort();

before(async () => {
  kms = await startDevKms();
  tokens.alice = await kms.token('alice@a.example');
  tokens.bob = await kms.token('bob@a.example');
  tokens.eve = await kms.token('eve@b.example');
  alice = await TestClient.connect(kms.url, tokens.alice);
  staticKid = alice.wellKnown.rsaPublicKey.kid;
  const { kty, n, e } = alice.wellKnown.rsaPublicKey;
  staticRsa = (await importJWK({ kty, n, e }, 'RSA-OAEP')) as JoseKey;
  staticRsa256 = (await importJWK({ kty, n, e }, 'RSA-OAEP-256')) as JoseKey;
});

after(async () => {
  await kms?.close();
});

const enc = new TextEncoder();
let counter = 0;
const nextRid = (): string => `m-${SEED}-${++counter}`;

const client = (bearer = tokens.alice!) => ({ clientId: alice.clientId, credential: { bearer } });
const sealText = (text: string | Uint8Array): Promise<string> =>
  joseCodec.encryptChannel(typeof text === 'string' ? enc.encode(text) : text, alice.channelKey, alice.channelUri);
async function sealStaticText(text: string | Uint8Array, alg = chance(0.8) ? 'RSA-OAEP' : 'RSA-OAEP-256', kid = staticKid): Promise<string> {
  return new CompactEncrypt(typeof text === 'string' ? enc.encode(text) : text)
    .setProtectedHeader({ alg, enc: 'A256GCM', kid })
    .encrypt(alg === 'RSA-OAEP' ? staticRsa : staticRsa256);
}

/** A valid basic request, mutated so that it is certainly invalid; returns the body text and the echo. */
function brokenBasic(base: Record<string, unknown>): { text: string; rid?: string | number; expect: readonly number[] } {
  const body: Record<string, unknown> = { ...base };
  const rid = body.requestId as string;
  const field = pick(['requestId', 'client', 'client.clientId', 'client.credential', 'client.credential.bearer', 'method', 'uri']);
  const missing = chance(0.3);
  const c = { ...(body.client as { clientId: string; credential: Record<string, unknown> }) };
  c.credential = { ...c.credential };
  body.client = c;
  let keepsRid = true;
  switch (field) {
    case 'requestId':
      keepsRid = false;
      if (missing) delete body.requestId;
      else body.requestId = pick<unknown>([null, true, 1.5, -0.5, [], {}, [rid], { id: rid }, 'r'.repeat(257 + int(100)), 2 ** 53 + 2, -(2 ** 60), 1e300]);
      break;
    case 'client':
      if (missing) delete body.client;
      else body.client = pick<unknown>([null, 'alice', 42, [], [c], { clientId: c.clientId }, { credential: c.credential }, {}]);
      break;
    case 'client.clientId':
      if (missing) delete (c as Record<string, unknown>).clientId;
      else (c as Record<string, unknown>).clientId = pick<unknown>([null, 5, '', [], {}, 'c'.repeat(257 + int(50)), true]);
      break;
    case 'client.credential':
      if (missing) delete (c as Record<string, unknown>).credential;
      else (c as Record<string, unknown>).credential = pick<unknown>([null, 'bearer', 7, [], [c.credential], true]);
      break;
    case 'client.credential.bearer':
      if (missing) {
        delete c.credential.bearer;
        return { text: JSON.stringify(body), rid, expect: [401] };
      }
      c.credential.bearer = pick<unknown>([null, 5, '', [], {}, true, ['x'], 'b'.repeat(16 * 1024 + 1 + int(10))]);
      break;
    case 'method':
      if (missing) delete body.method;
      else body.method = pick<unknown>([null, 5, '', 'patch', 'UPDATE', 'get', 'post', ' update', 'update ', junk(4), [], {}, 'constructor', '__proto__', 'toString']);
      break;
    default:
      if (missing) delete body.uri;
      else body.uri = pick<unknown>([null, 5, '', [], {}, '/'.repeat(2049), 'ping', '/ping/', '/ping/x', '/nope', `/keys/${randomUUID()}/x`, '/keys/not-a-uuid', '//ping', `kms://${junk(3)}/ping`, junk(6), '/PING', '/ping?x=1&x=2', 'http://kms.a.example/ping', '/ecdhe/x/y']);
  }
  // '/ping/' (one trailing slash) is tolerated by the URI grammar: make sure the request is invalid.
  if (body.uri === '/ping/') body.uri = '/ping//';
  return { text: JSON.stringify(body), rid: keepsRid ? rid : undefined, expect: [400] };
}

/** Text no member may hold (PROTOCOL.md §4 "Strings"); a pair and other junk are fine elsewhere. */
const BAD_TEXT = ['\ud800', '\udbff', '\udc00', '\udfff', '\u0000', '\u0001', '\u001f', '\u007f', '\ud83d\ud83d', '\ude00\ud83d'];

/**
 * A request with one string member made of text no member may hold: refused with a 400 naming that
 * member, echoing the requestId unless it is the requestId itself.
 */
function badText(base: Record<string, unknown>): { text: string; rid?: string | number; reason: RegExp } {
  const bad = `${pick(['', 'x', '😀'])}${pick(BAD_TEXT)}${pick(['', 'y', '😀'])}`;
  const body: Record<string, unknown> = { ...base };
  const c = { ...(body.client as { clientId: string; credential: Record<string, unknown> }) };
  c.credential = { ...c.credential };
  body.client = c;
  const field = pick(['requestId', 'client.clientId', 'uri', 'client.credential.bearer', 'client.credential.userId']);
  if (field === 'requestId') body.requestId = bad;
  else if (field === 'client.clientId') c.clientId = bad;
  else if (field === 'uri') body.uri = `${body.uri as string}${bad}`;
  else if (field === 'client.credential.bearer') c.credential.bearer = `${c.credential.bearer as string}${bad}`;
  else c.credential.userId = bad;
  const name = field.replace(/\./g, '\\.');
  return { text: JSON.stringify(body), rid: field === 'requestId' ? undefined : (body.requestId as string), reason: new RegExp(`invalid field ${name}: contains`) };
}

const validPing = (): Record<string, unknown> => ({ requestId: nextRid(), client: client(), method: 'update', uri: '/ping' });

/** Valid JSON requests that fail at the operation (decrypts, validates as a basic request). */
function brokenOperation(): { body: Record<string, unknown>; expect: readonly number[] } {
  const u = randomUUID();
  const base = { requestId: nextRid(), client: client() };
  const many = (n: number) => Array.from({ length: n }, (_, i) => `u${i}@a.example`);
  const options: [Record<string, unknown>, readonly number[]][] = [
    [{ method: 'create', uri: '/keys', count: pick<unknown>([0, -1, 1.5, '5', null, [], {}, true]) }, [400]],
    [{ method: 'create', uri: '/keys', count: pick<unknown>([2 ** 60, 1e308]) }, [400, 413]],
    [{ method: 'create', uri: '/keys' }, [400]],
    [{ method: 'create', uri: '/keys', count: 101 + int(1e6) }, [413]],
    [{ method: 'create', uri: '/resources', authIds: pick<unknown>(['x', [1], [''], [null], {}, ['a'.repeat(300)]]) }, [400]],
    [{ method: 'create', uri: '/resources', authIds: many(101 + int(50)) }, [413]],
    [{ method: 'create', uri: '/resources', userIds: many(101) }, [413]],
    [{ method: 'create', uri: '/resources', ttl: pick<unknown>([-1, 1.5, 'x', null, 1e400]) }, [400]],
    [{ method: 'create', uri: '/resources', anonymous: pick<unknown>([-1, 1.5, 'x', null]) }, [400]],
    [{ method: 'create', uri: '/resources', anonymous: 101 + int(1000) }, [413]],
    [{ method: 'create', uri: '/resources', keyUris: pick<unknown>([['nope'], 'x', [5], [`/resources/${u}`]]) }, [400]],
    [{ method: 'create', uri: '/resources', keyUris: [`kms://kms.z.example/keys/${u}`] }, [404]],
    [{ method: 'create', uri: '/resources', keyUris: [`/keys/${u}`] }, [404]],
    [{ method: 'update', uri: `/keys/${u}` }, [400]],
    [{ method: 'update', uri: `/keys/${u}`, resourceUri: pick<unknown>([5, '', 'x', null]) }, [400]],
    [{ method: 'update', uri: `/keys/${u}`, resourceUri: `/resources/${randomUUID()}` }, [404]],
    [{ method: 'retrieve', uri: `/keys/${u}` }, [404]],
    [{ method: 'retrieve', uri: `/resources/${u}` }, [404]],
    [{ method: 'retrieve', uri: `/resources/${u}/keys`, boundAfter: pick<unknown>(['yesterday', 5, '2026-13-45T00:00:00Z', null]) }, [400]],
    [{ method: 'retrieve', uri: `/resources/${u}/keys`, count: pick<unknown>([0, -3, 'x', 1.25]) }, [400]],
    [{ method: 'retrieve', uri: `/resources/${u}/keys`, count: 5 }, [404]],
    [{ method: 'retrieve', uri: `/resources/${u}/authorizations` }, [404]],
    [{ method: 'create', uri: '/authorizations', resourceUri: `/resources/${u}`, authIds: ['bob@a.example'] }, [404]],
    [{ method: 'create', uri: '/authorizations', authIds: ['bob@a.example'] }, [400]],
    [{ method: 'delete', uri: `/authorizations/${u}` }, [404]],
    [{ method: 'delete', uri: '/authorizations', resourceUri: `/resources/${u}`, authIds: [] }, [400]],
    [{ method: 'delete', uri: '/authorizations', resourceUri: `/resources/${u}`, authIds: many(101) }, [413]],
    [{ method: 'retrieve', uri: `kms://kms.z.example/keys/${u}` }, [404]],
    [{ method: 'delete', uri: `/ecdhe/${u}` }, [404]],
    [{ method: 'create', uri: '/cmk' }, [403]],
    [{ method: 'update', uri: `/cmk/${u}`, state: 'bogus' }, [400]],
    [{ method: 'update', uri: `/cmk/${u}`, state: 'inactive' }, [404]],
    [{ method: 'update', uri: '/ping', client: client(tokens.bob) }, [403]],
    [{ method: 'update', uri: '/ping', client: client(tokens.eve) }, [403]],
    [{ method: 'update', uri: '/ping', client: client(pick(['x', 'a.b.c', `${b64u({ alg: 'none' })}.${b64u({ sub: 'alice@a.example' })}.`, `${b64u({ alg: 'PS256' })}.${b64u({ iss: 'kms://kms.a.example' })}.${randB64u(40)}`, randB64u(200)])) }, [401]],
    [{ method: 'update', uri: '/ping', client: client(junk(20)) }, [400, 401]], // 400 when the junk is not plain text
    [{ method: 'update', uri: '/ping', client: { clientId: 'c', credential: {} } }, [401]],
    [{ method: 'update', uri: '/ping', client: { clientId: 'c', credential: { jwk: alice.wellKnown.rsaPublicKey } } }, [401]],
  ];
  const [patch, expect] = pick(options);
  return { body: { ...base, ...patch }, expect };
}

/** Hand-written JSON texts with prototype keys (JSON.stringify would not emit "__proto__"). */
function protoText(): { text: string; rid?: string | number; expect: readonly number[] } {
  const rid = nextRid();
  const ping = JSON.stringify(validPing());
  const c = JSON.stringify(client());
  const r = JSON.stringify(rid);
  const texts: [string, string | undefined, readonly number[]][] = [
    [`{"__proto__":${ping}}`, undefined, [400]],
    [`{"constructor":{"prototype":${ping}}}`, undefined, [400]],
    [`{"requestId":${r},"__proto__":{"client":${c},"method":"update","uri":"/ping"}}`, rid, [400]],
    [`{"requestId":${r},"client":{"__proto__":${c}},"method":"update","uri":"/ping"}`, rid, [400]],
    [`{"requestId":${r},"client":{"clientId":"c","credential":{"__proto__":{"bearer":${JSON.stringify(tokens.alice)}}}},"method":"update","uri":"/ping"}`, rid, [401]],
    [`{"requestId":${r},"client":${c},"method":"update","uri":"/nope","__proto__":{"polluted":"yes","status":200},"constructor":{"prototype":{"polluted":"yes"}}}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":"__proto__","uri":"/ping"}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":"constructor","uri":"/ping"}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":"create","uri":"/resources","authIds":{"__proto__":[]}}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":"create","uri":"/keys","count":{"__proto__":{"valueOf":1}}}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":"create","uri":"/keys","__proto__":{"count":5}}`, rid, [400]],
    [`{"requestId":{"__proto__":${r}},"client":${c},"method":"update","uri":"/ping"}`, undefined, [400]],
    [`[${ping}]`, undefined, [400]],
  ];
  const [text, echo, expect] = pick(texts);
  return { text, rid: echo, expect };
}

/** Deeply nested arrays/objects, huge numbers, long digit strings. */
function pathological(): { text: string; rid?: string | number; expect: readonly number[] } {
  const rid = nextRid();
  const c = JSON.stringify(client());
  const r = JSON.stringify(rid);
  const depth = 1000 + int(60_000);
  const deepArray = '['.repeat(depth) + ']'.repeat(depth);
  const deepObject = '{"a":'.repeat(depth / 10) + '1' + '}'.repeat(depth / 10);
  const digits = '9'.repeat(300 + int(3000));
  const options: [string, string | number | undefined, readonly number[]][] = [
    [deepArray, undefined, [400]],
    [deepObject, undefined, [400]],
    [`{"requestId":${r},"client":${deepArray},"method":"update","uri":"/ping"}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":${deepArray},"uri":"/ping"}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":"update","uri":"/nope","extra":${deepArray}}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":"create","uri":"/resources","authIds":${deepArray}}`, rid, [400]],
    [`{"requestId":${r},"client":{"clientId":"c","credential":{"bearer":"x","jwk":${deepObject}}},"method":"update","uri":"/ping"}`, rid, [401]],
    [`{"requestId":${digits},"client":${c},"method":"update","uri":"/ping"}`, undefined, [400]],
    [`{"requestId":1e400,"client":${c},"method":"update","uri":"/ping"}`, undefined, [400]],
    [`{"requestId":-1e400,"client":${c},"method":"update","uri":"/ping"}`, undefined, [400]],
    [`{"requestId":1e-400,"client":${c},"method":"nope","uri":"/ping"}`, undefined, [400]],
    [`{"requestId":${r},"client":${c},"method":"create","uri":"/keys","count":${digits}}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":"create","uri":"/keys","count":1e400}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":"create","uri":"/resources","ttl":${digits}}`, rid, [400]],
    [`{"requestId":${r},"client":${c},"method":"create","uri":"/resources","anonymous":1e21}`, rid, [400, 413]],
    [`{"requestId":${r},"client":${c},"method":"retrieve","uri":"/resources/${randomUUID()}/keys","count":${digits}}`, rid, [400, 404]],
    [`{"requestId":${r},"requestId":5,"client":${c},"method":"update","uri":"/nope"}`, 5, [400]],
    [`{"requestId":${r},"client":${c},"method":"update","uri":"/ping"`, undefined, [400]],
    [`{"requestId":${r},"client":${c},"method":"update","uri":"/ping"}}`, undefined, [400]],
    [`{"requestId":${r},"client":${c},"method":"update","uri":"/ping",}`, undefined, [400]],
    [`{'requestId':${r}}`, undefined, [400]],
  ];
  const [text, echo, expect] = pick(options);
  return { text, rid: echo, expect };
}

/** Structural mutations of a valid compact JWE: none of them may decrypt. */
function mutateCompact(good: string): string {
  const parts = good.split('.');
  for (let attempt = 0; attempt < 10; attempt++) {
    const p = [...parts];
    let out: string;
    switch (int(14)) {
      case 0:
        p.splice(int(p.length), 1);
        out = p.join('.');
        break;
      case 1: {
        const i = int(p.length);
        p.splice(i, 0, p[i]!);
        out = p.join('.');
        break;
      }
      case 2: {
        const i = int(p.length);
        let j = int(p.length);
        if (j === i) j = (i + 1) % p.length;
        [p[i], p[j]] = [p[j]!, p[i]!];
        out = p.join('.');
        break;
      }
      case 3:
        p[int(p.length)] = pick([
          randB64u(int(60)),
          bytes(int(40)).toString('base64'),
          `${randB64u(8)}==`,
          `${randB64u(6)} ${randB64u(6)}`,
          `${randB64u(6)}\n${randB64u(6)}`,
          '%%%',
          junk(5),
          '',
          '=',
        ]);
        out = p.join('.');
        break;
      case 4:
        p[0] = b64u(randomJson());
        out = p.join('.');
        break;
      case 5:
        p[0] = b64u(
          pick<unknown>([
            { alg: 'dir', enc: 'A256GCM', kid: junk(8) },
            { alg: 'dir', enc: 'A256GCM', kid: alice.channelUri, zip: 'DEF' },
            { alg: 'dir', enc: 'A256GCM', kid: alice.channelUri, crit: ['exp'], exp: 1 },
            { alg: 'dir', enc: 'A256GCM', kid: alice.channelUri, jwk: alice.wellKnown.rsaPublicKey },
            { alg: 'dir', enc: 'A256GCM', kid: [alice.channelUri] },
            { alg: 'dir', enc: 'A256GCM', kid: 5 },
            { alg: 'dir', enc: 'A256GCM', kid: staticKid },
            { alg: 'dir', enc: 'A256GCM', kid: `kms://kms.a.example/ecdhe/${randomUUID()}` },
            { alg: 'dir', enc: 'A256GCM', kid: 'kms://kms.a.example/ecdhe/../keys' },
            { alg: 'RSA-OAEP', enc: 'A256GCM', kid: staticKid },
            { alg: 'RSA-OAEP-256', enc: 'A256GCM', kid: alice.channelUri },
            { alg: 'RSA1_5', enc: 'A256GCM', kid: staticKid },
            { alg: 'ECDH-ES', enc: 'A256GCM', kid: alice.channelUri },
            { alg: 'A256GCMKW', enc: 'A256GCM', kid: alice.channelUri },
            { alg: 'PBES2-HS256+A128KW', enc: 'A256GCM', kid: alice.channelUri, p2c: 1e9, p2s: 'AAAA' },
            { alg: 'dir', enc: 'A128CBC-HS256', kid: alice.channelUri },
            { alg: 'dir', kid: alice.channelUri },
            { enc: 'A256GCM', kid: alice.channelUri },
            { alg: 'none', enc: 'none', kid: alice.channelUri },
          ]),
        );
        out = p.join('.');
        break;
      case 6:
        out = good.slice(0, int(good.length));
        break;
      case 7:
        out = chance(0.5) ? good + pick(['.', '..', 'A', '=', ' ', '\n', junk(3), `.${randB64u(10)}`]) : pick([' ', '\ufeff', '.', 'A', junk(2)]) + good;
        break;
      case 8: {
        const nonEmpty = p.map((s, i) => [s, i] as const).filter(([s]) => s.length > 0);
        const [seg, i] = pick(nonEmpty);
        const k = int(seg.length);
        let ch = B64URL[int(64)]!;
        if (ch === seg[k]) ch = ch === 'A' ? 'B' : 'A';
        p[i] = seg.slice(0, k) + ch + seg.slice(k + 1);
        out = p.join('.');
        break;
      }
      case 9:
        out = p.map((s) => (s.length % 4 === 0 ? s : s + '='.repeat(4 - (s.length % 4)))).join('.');
        break;
      case 10:
        out = good.replace(/-/g, '+').replace(/_/g, '/');
        break;
      case 11:
        out = good.replace(/\./g, pick([',', ':', '..', ' ', '\u2024']));
        break;
      case 12:
        out = good + '.' + good;
        break;
      default:
        out = [...good].map((ch) => (chance(0.5) ? ch.toUpperCase() : ch.toLowerCase())).join('');
    }
    if (out !== good) return out;
  }
  return good.slice(0, -1);
}

async function generate(): Promise<Item[]> {
  // Seeds for mutation: real messages under the channel key and under the static key.
  const goodChannel = await Promise.all(Array.from({ length: 16 }, () => alice.seal(validPing())));
  const goodJwk = (await generateEphemeralKeyPair()).publicJwk;
  const goodStatic = await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      sealStaticText(JSON.stringify({ requestId: nextRid(), client: client(), method: 'create', uri: '/ecdhe', jwk: goodJwk }), i % 2 ? 'RSA-OAEP' : 'RSA-OAEP-256'),
    ),
  );
  const rogue = await generateKeyPair('PS256', { modulusLength: 2048 });

  const items: Item[] = [];
  const add = (item: Item) => items.push(item);
  while (items.length < CORPUS_SIZE) {
    const r = int(100);
    if (r < 10) {
      // Random bytes / strings, no JOSE structure.
      const msg = pick([
        () => bytes(int(300)).toString('latin1'),
        () => bytes(int(300)).toString('utf8'),
        () => bytes(int(600)).toString('base64'),
        () => Array.from({ length: int(8) }, () => randB64u(int(80))).join('.'),
        () => Array.from({ length: 5 }, () => randB64u(int(80))).join('.'),
        () => junk(int(100)),
        () => '',
        () => '.'.repeat(int(10)),
        () => randB64u(50_000 + int(150_000)),
        () => Array.from({ length: 5 }, () => randB64u(int(40_000))).join('.'),
      ])();
      add({ kind: 'random', msg, expect: RESET, signed: true });
    } else if (r < 35) {
      add({ kind: 'mutated-channel-jwe', msg: mutateCompact(pick(goodChannel)), expect: RESET, signed: true });
    } else if (r < 45) {
      add({ kind: 'mutated-static-jwe', msg: mutateCompact(pick(goodStatic)), expect: RESET, signed: true });
    } else if (r < 50) {
      // JWS-shaped inputs and JWEs under keys or algorithms the KMS does not take.
      const payload = enc.encode(JSON.stringify(validPing()));
      const which = int(6);
      let msg: string;
      if (which === 0) msg = `${b64u({ alg: 'none', kid: pick([alice.channelUri, staticKid]) })}.${b64u(payload)}.`;
      else if (which === 1) msg = await new CompactSign(payload).setProtectedHeader({ alg: 'HS256', kid: alice.channelUri }).sign(alice.channelKey);
      else if (which === 2) msg = await new CompactSign(payload).setProtectedHeader({ alg: 'PS256', kid: staticKid }).sign(rogue.privateKey);
      else if (which === 3) msg = await new CompactEncrypt(payload).setProtectedHeader({ alg: 'A256KW', enc: 'A256GCM', kid: alice.channelUri }).encrypt(alice.channelKey);
      else if (which === 4) msg = await new CompactEncrypt(payload).setProtectedHeader({ alg: 'dir', enc: 'A128GCM', kid: alice.channelUri }).encrypt(alice.channelKey.slice(0, 16));
      else msg = await joseCodec.encryptChannel(payload, alice.channelKey, pick([staticKid, `kms://kms.b.example/ecdhe/${alice.channelUri.split('/').pop()}`, `/ecdhe/${randomUUID()}`, 'kms://kms.a.example/ecdhe', '']));
      add({ kind: 'jose-confusion', msg, expect: RESET, signed: true });
    } else if (r < 58) {
      // Valid JOSE under the channel key around something that is not a request object.
      const text = pick<() => string | Uint8Array>([
        () => bytes(int(200)),
        () => junk(int(60)),
        () => JSON.stringify(randomJson()),
        () => pick(['', 'null', 'true', '0', '"x"', '[]', '[{}]', 'NaN', 'Infinity', '{', '}', '{"requestId":']),
        () => `\ufeff${JSON.stringify(validPing()).replace('"/ping"', '"/nope"')}`,
        () => new Uint8Array([0xef, 0xbb, 0xbf, 0x7b, 0x7d]),
        () => new Uint8Array([0xc0, 0xaf]),
        () => JSON.stringify(validPing()).slice(0, -1 - int(10)),
      ])();
      add({ kind: 'channel-not-json', msg: await sealText(text), expect: [400], signed: false });
    } else if (r < 72) {
      const b = brokenBasic(validPing());
      add({ kind: 'channel-bad-basic', msg: await sealText(b.text), expect: b.expect, signed: false, rid: b.rid });
    } else if (r < 80) {
      const b = brokenOperation();
      add({ kind: 'channel-bad-operation', msg: await sealText(JSON.stringify(b.body)), expect: b.expect, signed: false, rid: b.body.requestId as string });
    } else if (r < 85) {
      const p = protoText();
      add({ kind: 'channel-proto-keys', msg: await sealText(p.text), expect: p.expect, signed: false, rid: p.rid });
    } else if (r < 89) {
      const p = pathological();
      add({ kind: 'channel-pathological', msg: await sealText(p.text), expect: p.expect, signed: false, rid: p.rid });
    } else if (r < 91) {
      // Unicode junk in fields: a junk requestId must come back verbatim when it is plain text; one
      // with a lone surrogate or a control character is refused itself and cannot be echoed.
      const rid = junk(1 + int(40));
      const body = { ...validPing(), requestId: rid, [junk(3)]: junk(5) };
      if (chance(0.5)) body.method = junk(1 + int(6));
      else body.uri = `/${junk(1 + int(10))}`;
      add({ kind: 'channel-unicode', msg: await sealText(JSON.stringify(body)), expect: [400], signed: false, rid: isPlainText(rid) ? rid : undefined });
    } else if (r < 93) {
      if (chance(0.2)) {
        // A user's message marked as nested (cty) is refused, still echoing its requestId.
        const ping = validPing();
        const msg = await joseCodec.encryptChannel(enc.encode(JSON.stringify(ping)), alice.channelKey, alice.channelUri, pick(['JOSE', 'JWT', 'json', '']));
        add({ kind: 'channel-cty', msg, expect: [400], signed: false, rid: ping.requestId as string, reason: /nested messages/ });
      } else {
        const b = badText(validPing());
        add({ kind: 'channel-bad-text', msg: await sealText(b.text), expect: [400], signed: false, rid: b.rid, reason: b.reason });
      }
    } else {
      // Valid JOSE under the static key (ECDHE shape) around invalid content.
      const rid = nextRid();
      const which = int(8);
      let msg: string;
      let expect: readonly number[] = [400];
      let echo: string | number | undefined = rid;
      if (which === 0) {
        msg = await sealStaticText(pick<string | Uint8Array>([bytes(int(100)), junk(30), 'null', '[]', '{', JSON.stringify(randomJson())]));
        echo = undefined;
      } else if (which === 1) {
        const b = brokenBasic({ requestId: rid, client: client(), method: 'create', uri: '/ecdhe', jwk: goodJwk });
        msg = await sealStaticText(b.text);
        expect = b.expect;
        echo = b.rid;
      } else if (which === 2) {
        const jwk = pick<unknown>([
          null,
          'jwk',
          [],
          {},
          { kty: 'RSA', n: 'AQAB', e: 'AQAB' },
          { kty: 'EC', crv: 'P-384', x: goodJwk.x, y: goodJwk.y },
          { kty: 'EC', crv: 'P-256', x: randB64u(43), y: randB64u(43) },
          { kty: 'EC', crv: 'P-256', x: goodJwk.x },
          { kty: 'EC', crv: 'P-256', x: goodJwk.x, y: 'A'.repeat(200) },
          { kty: 'EC', crv: 'P-256', x: 5, y: goodJwk.y },
          { kty: 5 },
          { kty: 'OKP', crv: 'X25519', x: randB64u(43) },
        ]);
        msg = await sealStaticText(JSON.stringify({ requestId: rid, client: client(), method: 'create', uri: '/ecdhe', jwk }));
      } else if (which === 3) {
        msg = await sealStaticText(JSON.stringify({ requestId: rid, client: client(), method: pick(['update', 'retrieve', 'delete', 'create']), uri: pick(['/keys', '/ping', `/ecdhe/${randomUUID()}`, 'kms://kms.b.example/ecdhe', '/ecdhe/x']), jwk: goodJwk }));
      } else if (which === 4) {
        const bearer = pick(['x', tokens.eve!, junk(10)]);
        msg = await sealStaticText(JSON.stringify({ requestId: rid, client: client(bearer), method: 'create', uri: '/ecdhe', jwk: goodJwk }));
        expect = isPlainText(bearer) ? [401, 403] : [400];
      } else if (which === 7) {
        const b = badText({ requestId: rid, client: client(), method: 'create', uri: '/ecdhe', jwk: goodJwk });
        msg = await sealStaticText(b.text);
        echo = b.rid;
        add({ kind: 'static-bad-text', msg, expect, signed: true, rid: echo, reason: b.reason });
        continue;
      } else if (which === 5) {
        const p = protoText();
        msg = await sealStaticText(p.text);
        echo = p.rid;
      } else {
        // The static key's kid, but under another authority or a channel kid: no such key.
        msg = await sealStaticText(JSON.stringify({ requestId: rid, client: client(), method: 'create', uri: '/ecdhe', jwk: goodJwk }), 'RSA-OAEP', pick(['kms://kms.b.example', alice.channelUri, '', 'kms://kms.a.example/']));
        expect = RESET;
        echo = undefined;
      }
      add({ kind: 'static-bad-content', msg, expect, signed: true, rid: echo });
    }
  }
  return items;
}

/** Checks one answer against its item; returns the decoded status. */
async function check(item: Item, answer: unknown, index: number): Promise<number> {
  const where = at(`item ${index} (${item.kind}) ${JSON.stringify(item.msg.slice(0, 120))}`);
  assert.equal(typeof answer, 'string', `${where}: an answer per message`);
  const text = answer as string;
  const segments = segmentCount(text);
  assert.ok(segments === 3 || segments === 5, `${where}: a compact JWS or JWE, got ${segments} segments`);
  const header = decodeProtectedHeader(text);
  if (segments === 3) {
    assert.deepEqual(header, { alg: 'PS256', kid: staticKid }, `${where}: JWS header`);
  } else {
    assert.deepEqual(header, { alg: 'dir', enc: 'A256GCM', kid: alice.channelUri }, `${where}: JWE header`);
  }
  let decoded: Awaited<ReturnType<TestClient['decode']>>;
  try {
    decoded = await alice.decode(text);
  } catch (err) {
    assert.fail(`${where}: the answer does not verify/decrypt: ${(err as Error).message}`);
  }
  const status = decoded.status;
  assert.ok(Number.isInteger(status), `${where}: integer status`);
  assert.notEqual(status, 500, `${where}: 500 ${decoded.reason}`);
  assert.ok((ALLOWED as readonly number[]).includes(status), `${where}: status ${status} (${decoded.reason}) not in ${ALLOWED.join(',')}`);
  assert.ok(item.expect.includes(status), `${where}: status ${status} (${decoded.reason}), expected ${item.expect.join('|')}`);
  if (status === 499) {
    assert.equal(decoded._signed, true, `${where}: a reset is a signed JWS`);
    assert.match(String(decoded.requestId), /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, `${where}: fresh UUID`);
  } else {
    if (item.signed !== undefined) assert.equal(decoded._signed === true, item.signed, `${where}: answered ${decoded._signed ? 'signed' : 'under the channel key'}`);
    assert.equal(typeof decoded.reason, 'string', `${where}: an error carries a reason`);
    assert.ok(!/internal|stack|Error:|at \w+ \(/.test(decoded.reason!), `${where}: reason leaks internals: ${decoded.reason}`);
  }
  if (item.rid !== undefined) assert.equal(decoded.requestId, item.rid, `${where}: requestId echoed verbatim`);
  if (item.reason !== undefined) assert.match(String(decoded.reason), item.reason, `${where}: reason`);
  return status;
}

/** Packs messages into HTTP batches of at most 100 messages and ~1,000,000 bytes. */
function batches(items: Item[]): Item[][] {
  const out: Item[][] = [];
  let current: Item[] = [];
  let size = 20;
  for (const item of items) {
    const len = Buffer.byteLength(JSON.stringify(item.msg)) + 1;
    if (current.length > 0 && (current.length === 100 || size + len > 1_000_000)) {
      out.push(current);
      current = [];
      size = 20;
    }
    current.push(item);
    size += len;
  }
  if (current.length) out.push(current);
  return out;
}

async function postRaw(url: string, messages: string[]): Promise<string[]> {
  const body = JSON.stringify({ kmsMessages: messages });
  assert.ok(Buffer.byteLength(body) <= 1024 * 1024, 'batch within 1 MiB');
  const res = await fetch(`${url}/kms/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  const text = await res.text();
  assert.equal(res.status, 200, at(`HTTP ${res.status}: ${text.slice(0, 200)}`));
  const answers = (JSON.parse(text) as { kmsMessages: string[] }).kmsMessages;
  assert.equal(answers.length, messages.length, at('one answer per message'));
  return answers;
}

async function sendOverWs(url: string, items: Item[]): Promise<string[]> {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/kms/ws`);
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  const answers: string[] = [];
  let closedWith: number | undefined;
  ws.on('close', (code) => (closedWith = code));
  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(at(`WebSocket: ${answers.length}/${items.length} answers (closed: ${closedWith})`))), 30_000);
    ws.on('message', (data) => {
      answers.push(String(data));
      if (answers.length === items.length) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  for (const item of items) ws.send(item.msg);
  await done;
  assert.equal(ws.readyState, WebSocket.OPEN, at('the socket stays open through malformed frames'));
  ws.close();
  return answers;
}

test('a generated corpus of malformed messages: every answer well-formed, never 500, the KMS keeps serving', async (t) => {
  t.diagnostic(`MALFORMED_SEED=${SEED}`);
  const items = await generate();
  assert.ok(items.length >= 1000);
  const viaWs = items.slice(items.length - WS_SHARE).filter((i) => Buffer.byteLength(i.msg) < 1024 * 1024);
  const viaHttp = items.slice(0, items.length - WS_SHARE);
  const statuses = new Map<number, number>();
  const kinds = new Map<string, number>();
  const failures: string[] = [];
  const tally = async (item: Item, answer: unknown, index: number) => {
    kinds.set(item.kind, (kinds.get(item.kind) ?? 0) + 1);
    try {
      const status = await check(item, answer, index);
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
    } catch (err) {
      failures.push((err as Error).message.split('\n')[0]!);
    }
  };

  // HTTP batches, two in flight at a time.
  const groups = batches(viaHttp);
  let offset = 0;
  const starts = groups.map((g) => {
    const s = offset;
    offset += g.length;
    return s;
  });
  for (let i = 0; i < groups.length; i += 2) {
    await Promise.all(
      groups.slice(i, i + 2).map(async (group, k) => {
        const answers = await postRaw(kms.url, group.map((it) => it.msg));
        for (let j = 0; j < group.length; j++) await tally(group[j]!, answers[j], starts[i + k]! + j);
      }),
    );
  }

  // WebSocket: answers may come back in any order, so each is checked for well-formedness, and the
  // echoed requestIds are matched as a set.
  const wsAnswers = await sendOverWs(kms.url, viaWs);
  assert.equal(wsAnswers.length, viaWs.length);
  const lax: Item = { kind: 'websocket', msg: '', expect: ALLOWED };
  const echoed = new Set<unknown>();
  for (let j = 0; j < wsAnswers.length; j++) {
    await tally(lax, wsAnswers[j], viaHttp.length + j);
    try {
      echoed.add((await alice.decode(wsAnswers[j]!)).requestId);
    } catch {
      /* reported by tally */
    }
  }
  for (const item of viaWs) if (item.rid !== undefined && !echoed.has(item.rid)) failures.push(at(`WebSocket: no answer echoed requestId ${JSON.stringify(item.rid)} (${item.kind})`));

  t.diagnostic(`corpus: ${items.length} messages (${viaHttp.length} over HTTP in ${groups.length} batches, ${viaWs.length} over WebSocket)`);
  t.diagnostic(`kinds: ${JSON.stringify(Object.fromEntries(kinds))}`);
  t.diagnostic(`statuses: ${JSON.stringify(Object.fromEntries(statuses))}`);
  assert.deepEqual(failures.slice(0, 20), [], `${failures.length} bad answers`);

  // Still alive: liveness, readiness and a normal ping on the same channel.
  await assertHealthy(kms.url);
  const pong = await alice.request({ method: 'update', uri: '/ping', requestId: 'after-corpus' });
  assert.equal(pong.status, 200);
  assert.equal(pong.requestId, 'after-corpus');
  const fresh = await TestClient.connect(kms.url, tokens.alice!);
  assert.equal((await fresh.request({ method: 'update', uri: '/ping' })).status, 200);

  // No prototype pollution in this process (the KMS runs in it).
  assert.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), protoBefore);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);

  // Nothing went to the error paths.
  const bad = kms.logs.filter((line) => line.includes('internal error') || /"level":(50|60)/.test(line));
  assert.deepEqual(bad.slice(0, 5), [], at(`${bad.length} error log lines`));

  // Every answered message was audited as it was hashed: the chain verifies to its end.
  const store = await openStore(`sqlite:${kms.dbPath}`, kms.config.baseDir);
  try {
    const verified = await verifyAudit(store, await withRootKey(kms.config, (root) => root.auditKey()));
    assert.equal(verified.ok, true, at(`audit: ${JSON.stringify(verified)}`));
    assert.ok(verified.records >= items.length, at(`audit: ${verified.records} records for ${items.length} messages`));
  } finally {
    await store.close();
  }
});
