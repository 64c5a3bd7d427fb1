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
import { hostileBuilders, type Hostile } from './support/hostile.js';
import { seededRandom } from './support/random.js';

const random = seededRandom('MALFORMED_SEED');
const { int, chance, pick, at, bytes } = random;
const SEED = random.seed;
console.log(`malformed corpus: MALFORMED_SEED=${SEED}`);

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
let hostile: Hostile;
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
  hostile = hostileBuilders(random, {
    staticKid,
    staticJwk: alice.wellKnown.rsaPublicKey,
    channelUri: alice.channelUri,
    clientId: alice.clientId,
    tokens: { own: tokens.alice, other: tokens.bob, foreign: tokens.eve },
    nextRid,
  });
});

after(async () => {
  await kms?.close();
});

const enc = new TextEncoder();
let counter = 0;
const nextRid = (): string => `m-${SEED}-${++counter}`;

const sealText = (text: string | Uint8Array): Promise<string> =>
  joseCodec.encryptChannel(typeof text === 'string' ? enc.encode(text) : text, alice.channelKey, alice.channelUri);
async function sealStaticText(text: string | Uint8Array, alg = chance(0.8) ? 'RSA-OAEP' : 'RSA-OAEP-256', kid = staticKid): Promise<string> {
  return new CompactEncrypt(typeof text === 'string' ? enc.encode(text) : text)
    .setProtectedHeader({ alg, enc: 'A256GCM', kid })
    .encrypt(alg === 'RSA-OAEP' ? staticRsa : staticRsa256);
}


async function generate(): Promise<Item[]> {
  const { randB64u, b64u, junk, randomJson, client, brokenBasic, badText, validPing, brokenOperation, protoText, pathological, mutateCompact } = hostile;
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
