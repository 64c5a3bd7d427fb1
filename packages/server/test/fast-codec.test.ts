/**
 * Differential test of `fastCodec` (node:crypto) against `joseCodec` (jose), plus interop with the
 * real client `node-kms` 0.4.1 (node-jose 2.2). Reproduce a failure with FAST_CODEC_SEED=<seed>.
 *
 * The tampered-input oracle: fastCodec accepts  ⟺  jose (same algorithm restrictions) accepts  ∧
 * the input is strictly well-formed — every segment canonical unpadded base64url and the protected
 * header a JSON object with no members besides alg, enc, kid (string) and cty (string). That second
 * condition is where fastCodec is deliberately stricter (see the comment atop fast-codec.ts); it is
 * computed here independently (decode + re-encode), not with fastCodec's own helpers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  KeyObject,
  constants,
  createCipheriv,
  createPublicKey,
  generateKeyPairSync,
  publicEncrypt,
  randomBytes,
  verify as cryptoVerify,
  webcrypto,
} from 'node:crypto';
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';
import { deflateRawSync } from 'node:zlib';
import { CompactEncrypt, CompactSign, compactVerify } from 'jose';
import {
  deriveChannelKey,
  encryptStatic,
  generateEphemeralKeyPair,
  importEcPublicKey,
  joseCodec,
  verifyStatic,
  type AsymmetricKey,
  type Decrypted,
  type MessageCodec,
  type ProtectedHeader,
} from '@openkms/protocol';
import { ReceivedJwe, agreeChannelKey, fastCodec } from '../src/codec/fast-codec.js';
import { seededRandom } from './support/random.js';

const require = createRequire(import.meta.url);
type Any = any;
const nodeJose: Any = require('node-jose');
const KMS: Any = require('node-kms');

// --- deterministic randomness (keys and payloads); IVs and RSA padding stay truly random ----------

const random = seededRandom('FAST_CODEC_SEED');
const { rand, int, pick, at } = random;
const SEED = random.seed;
const bytes = (n: number): Uint8Array => new Uint8Array(random.bytes(n));

const CHARS = [' ', 'a', 'Z', '0', '"', '\\', '\n', 'é', '€', '😀', '\u0000', '\ud800', '/', '.', '='];
function randomString(max: number): string {
  let s = '';
  const n = int(max);
  for (let i = 0; i < n; i++) s += rand() < 0.7 ? String.fromCharCode(32 + int(95)) : pick(CHARS);
  return s;
}
function randomValue(depth: number): unknown {
  switch (int(depth > 3 ? 5 : 7)) {
    case 0: return null;
    case 1: return rand() < 0.5;
    case 2: return rand() < 0.5 ? int(1e9) - 5e8 : (rand() - 0.5) * 1e6;
    case 3: case 4: return randomString(40);
    case 5: return Array.from({ length: int(5) }, () => randomValue(depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = int(5); i > 0; i--) o[randomString(12)] = randomValue(depth + 1);
      return o;
    }
  }
}
/** Random bytes or random JSON text, 0..maxLen bytes. */
function randomPayload(maxLen = 2000): Uint8Array {
  const target = int(maxLen + 1);
  if (rand() < 0.5) return bytes(target);
  const o: Record<string, unknown> = {};
  let text = '{}';
  for (let i = 0; i < 200; i++) {
    o[`k${i}`] = randomValue(0);
    const next = JSON.stringify(o);
    if (Buffer.byteLength(next) > Math.max(target, 2)) break;
    text = next;
  }
  return new TextEncoder().encode(text);
}

// --- helpers ----------------------------------------------------------------------------------------

const b64u = (b: Uint8Array | string): string =>
  (typeof b === 'string' ? Buffer.from(b, 'utf8') : Buffer.from(b.buffer, b.byteOffset, b.byteLength)).toString('base64url');
const sameBytes = (a: Uint8Array, b: Uint8Array): boolean =>
  Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;

type Outcome = { ok: true; plaintext: Uint8Array; header: ProtectedHeader } | { ok: false; error: unknown };
async function outcome(run: () => Promise<Decrypted>): Promise<Outcome> {
  try {
    const { plaintext, header } = await run();
    return { ok: true, plaintext, header };
  } catch (error) {
    return { ok: false, error };
  }
}

/** Independent strictness oracle (see the file comment). */
function strictlyWellFormed(compact: string): boolean {
  const parts = compact.split('.');
  if (parts.length !== 5) return false;
  for (const p of parts) if (Buffer.from(p, 'base64url').toString('base64url') !== p) return false;
  let h: unknown;
  try {
    h = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
  } catch {
    return false;
  }
  if (typeof h !== 'object' || h === null || Array.isArray(h)) return false;
  for (const [name, value] of Object.entries(h)) {
    if (name === 'alg' || name === 'enc') continue;
    if ((name === 'kid' || name === 'cty') && typeof value === 'string') continue;
    return false;
  }
  return true;
}

type Header = string | Buffer | Record<string, unknown>;
const headerSegment = (h: Header): string =>
  typeof h === 'string' ? b64u(h) : Buffer.isBuffer(h) ? h.toString('base64url') : b64u(JSON.stringify(h));

/**
 * Builds a JWE with node:crypto from parts, so tampered variants are properly encrypted (the header
 * is really the AAD) and only the property under test differs.
 */
function forge(o: {
  header: Header;
  headerSeg?: string; // raw protected-header segment (overrides `header`), used as AAD verbatim
  cek: Uint8Array;
  plaintext: Uint8Array;
  iv?: Uint8Array;
  ek?: string;
  tagBytes?: number;
}): string {
  const h = o.headerSeg ?? headerSegment(o.header);
  const iv = o.iv ?? randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', o.cek, iv, { authTagLength: 16 });
  cipher.setAAD(Buffer.from(h, 'latin1'));
  const ct = Buffer.concat([cipher.update(o.plaintext), cipher.final()]);
  let tag = cipher.getAuthTag();
  if (o.tagBytes !== undefined) tag = o.tagBytes <= 16 ? tag.subarray(0, o.tagBytes) : Buffer.concat([tag, randomBytes(o.tagBytes - 16)]);
  return [h, o.ek ?? '', b64u(iv), b64u(ct), b64u(tag)].join('.');
}

const B64ALPHA = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Generic tamperings of any compact JWE (dir or RSA). */
function genericTamper(compact: string): [string, string] {
  const parts = compact.split('.');
  const i = int(parts.length);
  const seg = parts[i]!;
  const set = (s: string): string => {
    const copy = [...parts];
    copy[i] = s;
    return copy.join('.');
  };
  const kind = int(13);
  switch (kind) {
    case 0: { // replace one character by another base64url character
      if (!seg) return ['char:empty-seg-insert', set(pick([...B64ALPHA]) + pick([...B64ALPHA]))];
      const j = int(seg.length);
      let c = pick([...B64ALPHA]);
      while (c === seg[j]) c = pick([...B64ALPHA]);
      return [`char:seg${i}`, set(seg.slice(0, j) + c + seg.slice(j + 1))];
    }
    case 1: { // flip one bit of the decoded segment, re-encode canonically
      const b = Buffer.from(seg, 'base64url');
      if (b.length === 0) return ['bit:empty-seg-byte', set(b64u(bytes(1 + int(3))))];
      const j = int(b.length);
      b[j] = b[j]! ^ (1 << int(8));
      return [`bit:seg${i}`, set(b.toString('base64url'))];
    }
    case 2: return ['truncate', compact.slice(0, int(compact.length))];
    case 3: { // add a segment
      const copy = [...parts];
      copy.splice(int(copy.length + 1), 0, rand() < 0.5 ? '' : b64u(bytes(int(20))));
      return ['add-segment', copy.join('.')];
    }
    case 4: { // remove a segment
      const copy = [...parts];
      copy.splice(i, 1);
      return ['remove-segment', copy.join('.')];
    }
    case 5: { // base64 padding on a segment, correct ('=' to a multiple of 4) or not
      const correct = (4 - (seg.length % 4)) % 4;
      return [`padding:seg${i}`, set(seg + '='.repeat(correct && rand() < 0.7 ? correct : 1 + int(2)))];
    }
    case 6: { // standard-alphabet characters
      if (/[-_]/.test(seg)) return [`plus-slash:seg${i}`, set(seg.replace(/-/g, '+').replace(/_/g, '/'))];
      const j = int(seg.length + 1);
      return [`plus-slash-insert:seg${i}`, set(seg.slice(0, j) + pick(['+', '/']) + seg.slice(j))];
    }
    case 7: { // whitespace inside a segment
      const j = int(seg.length + 1);
      return [`whitespace:seg${i}`, set(seg.slice(0, j) + pick([' ', '\n', '\t', '\r\n']) + seg.slice(j))];
    }
    case 8: { // non-canonical trailing bits on a segment whose length leaves unused bits
      const k = [4, 3, 2].find((x) => parts[x]!.length % 4 >= 2);
      if (k === undefined) return ['noncanonical:none', compact];
      const s = parts[k]!;
      const v = B64ALPHA.indexOf(s[s.length - 1]!);
      const mask = s.length % 4 === 2 ? 0x0f : 0x03;
      const nv = (v & ~mask) | (1 + int(mask));
      const copy = [...parts];
      copy[k] = s.slice(0, -1) + B64ALPHA[nv];
      return [`noncanonical:seg${k}`, copy.join('.')];
    }
    case 9: { // swap in a segment of an unrelated message
      return [`foreign-iv`, [parts[0], parts[1], b64u(randomBytes(12)), parts[3], parts[4]].join('.')];
    }
    case 10: return ['empty-iv', [parts[0], parts[1], '', parts[3], parts[4]].join('.')];
    case 11: return ['empty-tag', [parts[0], parts[1], parts[2], parts[3], ''].join('.')];
    default: return ['invalid-char', set(seg + pick(['!', '.', '*', '%', '~', 'é', '\u0000']))];
  }
}

/** Header variants: [label, header, valid-for-jose-if-encrypted-properly]. */
function headerVariant(alg: string, kid: string): [string, Header, { zip?: boolean }?] {
  const base = { alg, enc: 'A256GCM', kid };
  switch (int(27)) {
    case 0: return ['zip-DEF', { ...base, zip: 'DEF' }, { zip: true }];
    case 1: return ['zip-other', { ...base, zip: 'GZIP' }];
    case 2: return ['crit-exp', { ...base, crit: ['exp'], exp: 1 }];
    case 3: return ['crit-b64', { ...base, crit: ['b64'], b64: false }];
    case 4: return ['crit-empty', { ...base, crit: [] }];
    case 5: return ['jku', { ...base, jku: 'https://attacker.example/jwks' }];
    case 6: return ['jwk', { ...base, jwk: { kty: 'oct', k: 'AAAA' } }];
    case 7: return ['x5u-x5c', { ...base, [pick(['x5u', 'x5c', 'x5t', 'x5t#S256'])]: 'AAAA' }];
    case 8: return ['epk-p2s', { ...base, [pick(['epk', 'p2s', 'p2c', 'apu', 'apv', 'iv', 'tag'])]: pick(['AAAAAAAAAAA', 1000, {}]) }];
    case 9: return ['typ', { ...base, typ: 'JOSE' }];
    case 10: return ['__proto__', `{"alg":"${alg}","enc":"A256GCM","kid":"${kid}","__proto__":{"x":1}}`];
    case 11: return ['kid-number', { ...base, kid: pick([7, null, true, ['a'], {}]) }];
    case 12: return ['cty-non-string', { ...base, cty: pick([1, null, { a: 1 }]) }];
    case 13: return ['alg-none', { ...base, alg: 'none' }];
    case 14: return ['alg-HS256', { ...base, alg: 'HS256' }];
    case 15: return ['alg-other', { ...base, alg: pick(['dir', 'RSA-OAEP', 'RSA-OAEP-256', 'RSA1_5', 'A256KW', 'RSA-OAEP-384', 'ECDH-ES', 'DIR', 'dir ', '', 1]) }];
    case 16: return ['enc-A128GCM', { ...base, enc: 'A128GCM' }];
    case 17: return ['enc-other', { ...base, enc: pick(['A192GCM', 'A256CBC-HS512', 'a256gcm', '', null]) }];
    case 18: return ['no-alg/enc', rand() < 0.5 ? { enc: 'A256GCM', kid } : { alg, kid }];
    case 19: return ['not-an-object', pick(['[]', '"dir"', '1', 'null', '{', `[${JSON.stringify(base)}]`, ''])];
    case 20: return ['bom', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(base))])];
    case 21: return ['bad-utf8', Buffer.from(`{"alg":"${alg}","enc":"A256GCM","kid":"\xff\xfe"}`, 'latin1')];
    // the following are valid: both must accept
    case 22: return ['ok:member-order', { enc: 'A256GCM', alg, kid }]; // node-jose's order
    case 23: return ['ok:cty', { ...base, cty: 'JWS' }];
    case 24: return ['ok:no-kid', { alg, enc: 'A256GCM' }];
    case 25: return ['ok:json-whitespace', JSON.stringify(base, null, 2)];
    default: return ['ok:duplicate-member', `{"alg":"HS256","alg":"${alg}","enc":"A256GCM","kid":"${kid}"}`];
  }
}

// --- the shared differential checker --------------------------------------------------------------

interface Stats { cases: number; bothAccept: number; bothReject: number; stricterHeader: number; stricterEncoding: number; kinds: Map<string, number> }
const newStats = (): Stats => ({ cases: 0, bothAccept: 0, bothReject: 0, stricterHeader: 0, stricterEncoding: 0, kinds: new Map() });

async function differential(
  stats: Stats,
  kind: string,
  compact: string,
  jose: (c: string) => Promise<Decrypted>,
  fast: (c: string) => Promise<Decrypted>,
  routed: (c: string) => Promise<Decrypted>,
): Promise<void> {
  const [j, f] = [await outcome(() => jose(compact)), await outcome(() => fast(compact))];
  // The core's way (the header read once, then opened under the key it names) decides alike.
  const r = await outcome(() => routed(compact));
  const strict = strictlyWellFormed(compact);
  const where = at(`${kind}: ${JSON.stringify(compact.length > 300 ? compact.slice(0, 300) + '…' : compact)}`);
  stats.cases++;
  stats.kinds.set(kind.split(':')[0]!, (stats.kinds.get(kind.split(':')[0]!) ?? 0) + 1);
  if (j.ok && strict) {
    assert.ok(f.ok, `fastCodec rejected what jose accepts: ${where}: ${f.ok ? '' : String(f.error)}`);
    assert.ok(sameBytes(f.plaintext, j.plaintext), `plaintexts differ: ${where}`);
    assert.deepEqual(f.header, j.header, `headers differ: ${where}`);
    assert.ok(r.ok && sameBytes(r.plaintext, j.plaintext), `read once, it did not open alike: ${where}`);
    assert.deepEqual(r.header, j.header, `read once, headers differ: ${where}`);
    stats.bothAccept++;
  } else {
    assert.ok(!f.ok, `fastCodec accepted (jose ${j.ok ? 'accepted, but not strictly well-formed' : 'rejected'}): ${where}`);
    assert.ok(f.error instanceof Error, `fastCodec must reject with an Error: ${where}`);
    assert.ok(!r.ok, `read once, it opened what decrypt refuses: ${where}`);
    if (j.ok) {
      const canonical = compact.split('.').every((p) => Buffer.from(p, 'base64url').toString('base64url') === p);
      if (canonical) stats.stricterHeader++;
      else stats.stricterEncoding++;
    }
    else stats.bothReject++;
  }
}

/** The core's reading of a message (core/open.ts): its header once, refused as undefined. */
function readOrThrow(compact: string): ReceivedJwe {
  const read = fastCodec.read(compact);
  if (read === undefined) throw new Error('header refused');
  return read;
}

function report(name: string, s: Stats): void {
  console.log(
    `${name}: ${s.cases} tampered cases — both accept ${s.bothAccept}, both reject ${s.bothReject}, ` +
      `jose accepts but fastCodec (stricter) rejects ${s.stricterHeader + s.stricterEncoding} ` +
      `(${s.stricterHeader} header members, ${s.stricterEncoding} non-canonical base64url); kinds: ` +
      [...s.kinds].map(([k, n]) => `${k}=${n}`).join(' '),
  );
}

// --- keys ------------------------------------------------------------------------------------------

const STATIC_KID = 'kms://kms.example.com/keys/0c1a6d0e-5d2b-4c5e-9a9c-3f1e2d4b5a6c';
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const otherRsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const staticPrivate: KeyObject = rsa.privateKey;
const staticPublic: KeyObject = rsa.publicKey;

const channelKid = (): string => `kms://kms.example.com/ecdhe/${b64u(bytes(9))}`;

// --- tests -----------------------------------------------------------------------------------------

test('dir/A256GCM: ≥ 2,000 random payloads, each side decrypts the other', async () => {
  const N = 2000;
  for (let i = 0; i < N; i++) {
    const key = bytes(32);
    const kid = channelKid();
    const cty = rand() < 0.3 ? 'JWS' : undefined;
    const plaintext = randomPayload();
    const where = at(`payload #${i} (${plaintext.length} bytes)`);

    const fromFast = await fastCodec.encryptChannel(plaintext, key, kid, cty);
    const byJose = await joseCodec.decryptChannel(fromFast, key);
    assert.ok(sameBytes(byJose.plaintext, plaintext), where);
    assert.deepEqual(byJose.header, cty === undefined ? { alg: 'dir', enc: 'A256GCM', kid } : { alg: 'dir', enc: 'A256GCM', kid, cty }, where);

    const fromJose = await joseCodec.encryptChannel(plaintext, key, kid, cty);
    const byFast = await fastCodec.decryptChannel(fromJose, key);
    assert.ok(sameBytes(byFast.plaintext, plaintext), where);
    assert.deepEqual(byFast.header, byJose.header, where);
    // same header bytes (member order) as jose; empty encrypted key; 12-byte IV; 16-byte tag
    const [fh, fek, fiv, , ftag] = fromFast.split('.');
    assert.equal(fh, fromJose.split('.')[0], where);
    assert.equal(fek, '', where);
    assert.equal(Buffer.from(fiv!, 'base64url').length, 12, where);
    assert.equal(Buffer.from(ftag!, 'base64url').length, 16, where);
    // fastCodec's own round trip
    assert.ok(sameBytes((await fastCodec.decryptChannel(fromFast, key)).plaintext, plaintext), where);
  }
});

test('RSA-OAEP(-256)/A256GCM decrypt and PS256 sign: ≥ 200 random payloads, both ways', async () => {
  const N = 200;
  for (let i = 0; i < N; i++) {
    const plaintext = randomPayload();
    const where = at(`payload #${i} (${plaintext.length} bytes)`);

    // jose → fastCodec, both key-management algorithms
    const oaep1 = await encryptStatic(plaintext, staticPublic, STATIC_KID, rand() < 0.2 ? 'JWS' : undefined);
    const d1 = await fastCodec.decryptStatic(oaep1, staticPrivate);
    assert.ok(sameBytes(d1.plaintext, plaintext), where);
    assert.deepEqual(d1.header, JSON.parse(Buffer.from(oaep1.split('.')[0]!, 'base64url').toString()), where);
    const oaep256 = await new CompactEncrypt(plaintext)
      .setProtectedHeader({ alg: 'RSA-OAEP-256', enc: 'A256GCM', kid: STATIC_KID })
      .encrypt(staticPublic);
    const d2 = await fastCodec.decryptStatic(oaep256, staticPrivate);
    assert.ok(sameBytes(d2.plaintext, plaintext), where);
    assert.deepEqual(d2.header, { alg: 'RSA-OAEP-256', enc: 'A256GCM', kid: STATIC_KID }, where);
    // node:crypto-forged RSA-OAEP (SHA-1) → jose and fastCodec (fastCodec's OAEP parameters match jose's)
    if (i % 4 === 0) {
      const cek = randomBytes(32);
      const forged = forge({
        header: { alg: 'RSA-OAEP', enc: 'A256GCM', kid: STATIC_KID },
        cek,
        plaintext,
        ek: b64u(publicEncrypt({ key: staticPublic, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, cek)),
      });
      assert.ok(sameBytes((await joseCodec.decryptStatic(forged, staticPrivate)).plaintext, plaintext), where);
      assert.ok(sameBytes((await fastCodec.decryptStatic(forged, staticPrivate)).plaintext, plaintext), where);
    }

    // fastCodec PS256 → jose verifies; jose PS256 → node:crypto verifies with fastCodec's parameters
    const kid = rand() < 0.5 ? STATIC_KID : randomString(30);
    const jws = await fastCodec.signStatic(plaintext, staticPrivate, kid);
    const verified = await verifyStatic(jws, staticPublic);
    assert.ok(sameBytes(verified.plaintext, plaintext), where);
    assert.deepEqual(verified.header, { alg: 'PS256', kid }, where);
    const joseJws = await joseCodec.signStatic(plaintext, staticPrivate, kid);
    const [jh, jp, js] = joseJws.split('.') as [string, string, string];
    const [fh, fp] = jws.split('.');
    assert.equal(fh, jh, `same protected header bytes as jose: ${where}`);
    assert.equal(fp, jp, where);
    assert.ok(
      cryptoVerify('sha256', Buffer.from(`${jh}.${jp}`), { key: staticPublic, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, Buffer.from(js, 'base64url')),
      where,
    );
  }
});

test('dir/A256GCM: tampered inputs — fastCodec accepts exactly what jose accepts (or is stricter on headers/encoding)', async () => {
  const stats = newStats();
  const N = 1200;
  for (let i = 0; i < N; i++) {
    const key = bytes(32);
    const kid = channelKid();
    const plaintext = randomPayload(rand() < 0.9 ? 200 : 2000);
    const base = rand() < 0.5
      ? await fastCodec.encryptChannel(plaintext, key, kid)
      : await joseCodec.encryptChannel(plaintext, key, kid);
    let kind: string;
    let compact: string;
    let decryptKey = key;
    const r = int(20);
    if (r < 10) {
      [kind, compact] = genericTamper(base);
    } else if (r < 16) {
      const [label, header, opt] = headerVariant('dir', kid);
      kind = `header:${label}`;
      compact = forge({ header, cek: key, plaintext: opt?.zip ? deflateRawSync(plaintext) : plaintext });
    } else {
      switch (r) {
        case 16: kind = 'wrong-key'; compact = base; decryptKey = bytes(32); break;
        case 17: {
          const n = pick([0, 1, 8, 11, 13, 16, 32]);
          kind = `iv-length:${n}`;
          compact = n === 0 ? forge({ header: { alg: 'dir', enc: 'A256GCM', kid }, cek: key, plaintext }).replace(/^([^.]*\.[^.]*\.)[^.]*/, '$1')
            : forge({ header: { alg: 'dir', enc: 'A256GCM', kid }, cek: key, plaintext, iv: randomBytes(n) });
          break;
        }
        case 18: {
          const n = pick([0, 1, 12, 15, 17, 32]);
          kind = `tag-length:${n}`;
          compact = forge({ header: { alg: 'dir', enc: 'A256GCM', kid }, cek: key, plaintext, tagBytes: n });
          break;
        }
        default: {
          // dir with a non-empty encrypted key, or a header segment with padding/whitespace used verbatim as AAD
          const h = b64u(JSON.stringify({ alg: 'dir', enc: 'A256GCM', kid }));
          const v = int(3);
          if (v === 0) {
            kind = 'dir-with-encrypted-key';
            compact = forge({ header: { alg: 'dir', enc: 'A256GCM', kid }, cek: key, plaintext, ek: b64u(bytes(1 + int(40))) });
          } else {
            const padded = h + '='.repeat((4 - (h.length % 4)) % 4 || 4);
            const seg = v === 1 ? padded : h.slice(0, 8) + ' ' + h.slice(8);
            kind = v === 1 ? 'header-padding-as-aad' : 'header-whitespace-as-aad';
            compact = forge({ header: '', headerSeg: seg, cek: key, plaintext });
          }
        }
      }
    }
    await differential(
      stats,
      kind,
      compact,
      (c) => joseCodec.decryptChannel(c, decryptKey),
      (c) => fastCodec.decryptChannel(c, decryptKey),
      async (c) => readOrThrow(c).openChannel(decryptKey),
    );
  }
  report('dir', stats);
  assert.ok(stats.cases >= 1000);
  assert.ok(stats.bothAccept > 0 && stats.bothReject > 0 && stats.stricterHeader > 0 && stats.stricterEncoding > 0, at('every class exercised'));
});

test('RSA-OAEP(-256)/A256GCM: tampered inputs — fastCodec accepts exactly what jose accepts (or is stricter)', async () => {
  const stats = newStats();
  const N = 300;
  for (let i = 0; i < N; i++) {
    const plaintext = randomPayload(200);
    const alg = rand() < 0.6 ? 'RSA-OAEP' : 'RSA-OAEP-256';
    const oaepHash = alg === 'RSA-OAEP' ? 'sha1' : 'sha256';
    const cek = randomBytes(32);
    const wrap = (k: Uint8Array, hash = oaepHash, pub = staticPublic): string =>
      b64u(publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash }, k));
    const base = forge({ header: { alg, enc: 'A256GCM', kid: STATIC_KID }, cek, plaintext, ek: wrap(cek) });
    let kind: string;
    let compact: string;
    let privateKey: KeyObject = staticPrivate;
    const r = int(20);
    if (r < 9) {
      [kind, compact] = genericTamper(base);
    } else if (r < 14) {
      const [label, header, opt] = headerVariant(alg, STATIC_KID);
      kind = `header:${label}`;
      compact = forge({ header, cek, plaintext: opt?.zip ? deflateRawSync(plaintext) : plaintext, ek: wrap(cek) });
    } else {
      switch (r) {
        case 14: kind = 'wrong-private-key'; compact = base; privateKey = otherRsa.privateKey; break;
        case 15: kind = 'other-public-key'; compact = forge({ header: { alg, enc: 'A256GCM', kid: STATIC_KID }, cek, plaintext, ek: wrap(cek, oaepHash, otherRsa.publicKey) }); break;
        case 16: kind = 'wrong-oaep-hash'; compact = forge({ header: { alg, enc: 'A256GCM', kid: STATIC_KID }, cek, plaintext, ek: wrap(cek, oaepHash === 'sha1' ? 'sha256' : 'sha1') }); break;
        case 17: {
          const n = pick([0, 16, 24, 31, 33, 64]);
          kind = `cek-length:${n}`;
          compact = forge({ header: { alg, enc: 'A256GCM', kid: STATIC_KID }, cek, plaintext, ek: wrap(Buffer.concat([cek, randomBytes(64)]).subarray(0, n)) });
          break;
        }
        case 18: kind = 'empty-encrypted-key'; compact = forge({ header: { alg, enc: 'A256GCM', kid: STATIC_KID }, cek, plaintext }); break;
        default: {
          kind = 'encrypted-key-bit-flip';
          const ek = Buffer.from(wrap(cek), 'base64url');
          const j = int(ek.length);
          ek[j] = ek[j]! ^ (1 << int(8));
          compact = forge({ header: { alg, enc: 'A256GCM', kid: STATIC_KID }, cek, plaintext, ek: b64u(ek) });
        }
      }
    }
    const pk = privateKey;
    await differential(
      stats,
      kind,
      compact,
      (c) => joseCodec.decryptStatic(c, pk),
      (c) => fastCodec.decryptStatic(c, pk),
      async (c) => readOrThrow(c).openStatic(pk),
    );
  }
  report('RSA', stats);
  assert.ok(stats.bothAccept > 0 && stats.bothReject > 0, at('classes exercised'));
});

test('node-kms 0.4.1 interop: its ECDHE request and common messages decrypt; it verifies/decrypts our answers', async () => {
  const pub = staticPublic.export({ format: 'jwk' }) as { n: string; e: string };
  // The static key as node-kms is configured with it: kty, kid, n, e, x5c; no alg. (node-jose keeps
  // x5c without parsing it and never copies it into a header, so an opaque DER blob is enough here.)
  const staticJwk = { kty: 'RSA', kid: STATIC_KID, n: pub.n, e: pub.e, x5c: [randomBytes(700).toString('base64')] };

  const ctx = new KMS.Context();
  ctx.clientInfo = { clientId: 'client-1', credential: { userId: 'u-1', bearer: 'token' } };
  ctx.serverInfo = { key: staticJwk };
  const local = await ctx.createECDHKey();
  ctx.ephemeralKey = local;

  // ECDHE request, exactly as a node-kms client sends it
  const request = new KMS.Request({ method: 'create', uri: '/ecdhe', jwk: local.jwk });
  const wrapped: string = await request.wrap(ctx, { serverKey: true });
  const rawHeader = Buffer.from(wrapped.split('.')[0]!, 'base64url').toString();
  console.log(`node-kms ECDHE request protected header: ${rawHeader}`);
  assert.deepEqual(Object.keys(JSON.parse(rawHeader)).sort(), ['alg', 'enc', 'kid']);
  const ecdhe = await fastCodec.decryptStatic(wrapped, staticPrivate);
  assert.deepEqual(ecdhe.header, { enc: 'A256GCM', alg: 'RSA-OAEP', kid: STATIC_KID });
  const body = JSON.parse(Buffer.from(ecdhe.plaintext).toString('utf8'));
  assert.equal(body.method, 'create');
  assert.equal(body.uri, '/ecdhe');
  assert.equal(body.requestId, request.requestId);
  assert.deepEqual(body.client, ctx.clientInfo);

  // ECDHE response: fastCodec PS256 JWS → node-kms verifies it against the static JWK (no alg)
  const answer = { status: 201, requestId: body.requestId, key: { uri: 'kms://kms.example.com/ecdhe/1' } };
  const jws = await fastCodec.signStatic(new TextEncoder().encode(JSON.stringify(answer)), staticPrivate, STATIC_KID);
  const response = new KMS.Response(jws);
  assert.deepEqual(await response.unwrap(ctx), answer);
  // and node-jose directly, with the bare public JWK {kty, kid, n, e}
  const bare = await nodeJose.JWK.asKey({ kty: 'RSA', kid: STATIC_KID, n: pub.n, e: pub.e });
  const nj = await nodeJose.JWS.createVerify(bare).verify(jws);
  assert.equal(nj.payload.toString('utf8'), JSON.stringify(answer));
  assert.equal(nj.header.alg, 'PS256');

  // common messages under the channel key as node-kms holds it: oct, kid = kms:// URI, alg A256GCM
  const uri = 'kms://kms.example.com/ecdhe/2f9a1c3e-8b7d-4e6f-a5c4-1d2e3f4a5b6c';
  const channelKey = bytes(32);
  ctx.ephemeralKey = { uri, jwk: { kty: 'oct', kid: uri, alg: 'A256GCM', k: b64u(channelKey) } };
  let loggedChannelHeader = false;
  for (let i = 0; i < 25; i++) {
    const req = new KMS.Request({ method: 'retrieve', uri: `/resources/${i}`, extra: randomValue(0) });
    const jwe: string = await req.wrap(ctx);
    if (!loggedChannelHeader) {
      console.log(`node-kms common message protected header: ${Buffer.from(jwe.split('.')[0]!, 'base64url').toString()}`);
      loggedChannelHeader = true;
    }
    const dec = await fastCodec.decryptChannel(jwe, channelKey);
    assert.deepEqual(dec.header, { enc: 'A256GCM', alg: 'dir', kid: uri });
    assert.deepEqual(JSON.parse(Buffer.from(dec.plaintext).toString('utf8')), req.body);
    // fastCodec's answer under the channel key → node-kms decrypts it
    const reply = { status: 200, requestId: req.requestId, value: randomValue(0) };
    const replyJwe = await fastCodec.encryptChannel(new TextEncoder().encode(JSON.stringify(reply)), channelKey, uri);
    assert.deepEqual(await new KMS.Response(replyJwe).unwrap(ctx), JSON.parse(JSON.stringify(reply)));
  }

  // node-jose the way node-kms calls it, with random binary payloads of 0..2000 bytes
  const rsaJwk = await nodeJose.JWK.asKey(staticJwk);
  const octJwk = await nodeJose.JWK.asKey({ kty: 'oct', kid: uri, alg: 'A256GCM', k: b64u(channelKey) });
  for (let i = 0; i < 40; i++) {
    const payload = Buffer.from(randomPayload());
    const viaRsa: string = await nodeJose.JWE.createEncrypt({ compact: true, contentAlg: 'A256GCM' }, rsaJwk).final(payload);
    assert.ok(sameBytes((await fastCodec.decryptStatic(viaRsa, staticPrivate)).plaintext, payload), at(`node-jose RSA #${i}`));
    const viaOct: string = await nodeJose.JWE.createEncrypt({ compact: true, contentAlg: 'A256GCM' }, octJwk).final(payload);
    assert.ok(sameBytes((await fastCodec.decryptChannel(viaOct, channelKey)).plaintext, payload), at(`node-jose dir #${i}`));
    const sig = await fastCodec.signStatic(payload, staticPrivate, STATIC_KID);
    assert.ok(Buffer.compare((await nodeJose.JWS.createVerify(bare).verify(sig)).payload, payload) === 0, at(`node-jose verify #${i}`));
    // node-jose decrypts fastCodec's dir messages with its oct JWK
    const out = await fastCodec.encryptChannel(payload, channelKey, uri);
    assert.ok(Buffer.compare((await nodeJose.JWE.createDecrypt(octJwk).decrypt(out)).plaintext, payload) === 0, at(`node-jose decrypt #${i}`));
  }
});

test('key inputs: KeyObject/CryptoKey conversion and rejections agree with jose', async () => {
  const msg = new TextEncoder().encode('{"method":"create","uri":"/ecdhe"}');
  const pkcs8 = staticPrivate.export({ format: 'der', type: 'pkcs8' });
  const subtle = webcrypto.subtle;
  const oaep1 = await subtle.importKey('pkcs8', pkcs8, { name: 'RSA-OAEP', hash: 'SHA-1' }, false, ['decrypt']);
  const oaep256 = await subtle.importKey('pkcs8', pkcs8, { name: 'RSA-OAEP', hash: 'SHA-256' }, false, ['decrypt']);
  const pss = await subtle.importKey('pkcs8', pkcs8, { name: 'RSA-PSS', hash: 'SHA-256' }, false, ['sign']);
  const jwe1 = await encryptStatic(msg, staticPublic, STATIC_KID);
  const jwe256 = await new CompactEncrypt(msg).setProtectedHeader({ alg: 'RSA-OAEP-256', enc: 'A256GCM', kid: STATIC_KID }).encrypt(staticPublic);
  const asKey = (k: unknown): AsymmetricKey => k as AsymmetricKey;
  const agree = async (label: string, jwe: string, key: AsymmetricKey): Promise<boolean> => {
    const j = await outcome(() => joseCodec.decryptStatic(jwe, key));
    const f = await outcome(() => fastCodec.decryptStatic(jwe, key));
    assert.equal(f.ok, j.ok, `${label}: fast ${f.ok} vs jose ${j.ok}`);
    if (f.ok && j.ok) assert.ok(sameBytes(f.plaintext, j.plaintext), label);
    return f.ok;
  };
  assert.equal(await agree('CryptoKey SHA-1 / RSA-OAEP', jwe1, asKey(oaep1)), true);
  assert.equal(await agree('CryptoKey SHA-256 / RSA-OAEP-256', jwe256, asKey(oaep256)), true);
  assert.equal(await agree('CryptoKey SHA-1 / RSA-OAEP-256', jwe256, asKey(oaep1)), false);
  assert.equal(await agree('CryptoKey SHA-256 / RSA-OAEP', jwe1, asKey(oaep256)), false);
  assert.equal(await agree('CryptoKey RSA-PSS for decryption', jwe1, asKey(pss)), false);
  assert.equal(await agree('public key for decryption', jwe1, staticPublic), false);
  const small = generateKeyPairSync('rsa', { modulusLength: 1024 });
  const jweSmall = forge({
    header: { alg: 'RSA-OAEP', enc: 'A256GCM', kid: STATIC_KID },
    cek: Buffer.alloc(32, 1),
    plaintext: msg,
    ek: b64u(publicEncrypt({ key: small.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.alloc(32, 1))),
  });
  assert.equal(await agree('1024-bit RSA key', jweSmall, small.privateKey), false);

  // PS256 with a CryptoKey; rejections for a public key, a small key and a wrong CryptoKey
  const viaCryptoKey = await fastCodec.signStatic(msg, asKey(pss), STATIC_KID);
  assert.ok(sameBytes((await compactVerify(viaCryptoKey, staticPublic, { algorithms: ['PS256'] })).payload, msg));
  for (const [label, key] of [
    ['public key', staticPublic],
    ['1024-bit key', small.privateKey],
    ['RSA-OAEP CryptoKey', oaep1],
  ] as const) {
    const j = await outcome(async () => ({ plaintext: new TextEncoder().encode(await new CompactSign(msg).setProtectedHeader({ alg: 'PS256', kid: 'k' }).sign(asKey(key))), header: {} }));
    const f = await outcome(async () => ({ plaintext: new TextEncoder().encode(await fastCodec.signStatic(msg, asKey(key), 'k')), header: {} }));
    assert.equal(j.ok, false, `jose rejects signing with ${label}`);
    assert.equal(f.ok, false, `fastCodec rejects signing with ${label}`);
  }

  // channel keys must be 32-byte Uint8Arrays
  const good = await fastCodec.encryptChannel(msg, bytes(32), 'kid');
  for (const bad of [bytes(16), bytes(31), bytes(33), 'x'.repeat(32) as unknown as Uint8Array]) {
    await assert.rejects(fastCodec.encryptChannel(msg, bad, 'kid'));
    await assert.rejects(fastCodec.decryptChannel(good, bad));
  }
  // non-string input
  await assert.rejects(fastCodec.decryptChannel(42 as unknown as string, bytes(32)));
  await assert.rejects(fastCodec.decryptStatic(undefined as unknown as string, staticPrivate));
});

test('read once: a message opens only as the kind its header names, and what routed it is what was checked', async () => {
  const key = bytes(32);
  const kid = channelKid();
  const channelMessage = await joseCodec.encryptChannel(new TextEncoder().encode('{"a":1}'), key, kid);
  const staticMessage = await encryptStatic(new TextEncoder().encode('{"b":2}'), staticPublic, STATIC_KID);
  const read = readOrThrow(channelMessage);
  assert.deepEqual(read.header, { alg: 'dir', enc: 'A256GCM', kid });
  assert.throws(() => read.openStatic(staticPrivate), Error);
  assert.equal(new TextDecoder().decode(read.openChannel(key).plaintext), '{"a":1}');
  const readStatic = readOrThrow(staticMessage);
  assert.deepEqual(readStatic.header, { alg: 'RSA-OAEP', enc: 'A256GCM', kid: STATIC_KID });
  assert.throws(() => readStatic.openChannel(key), Error);
  assert.equal(new TextDecoder().decode(readStatic.openStatic(staticPrivate).plaintext), '{"b":2}');
  // A header the codec refuses is not read at all (the core then resets the message).
  for (const compact of ['a.b.c.d.e', 'a.b.c', 42, forge({ header: { alg: 'dir', enc: 'A256GCM', kid, zip: 'DEF' }, cek: key, plaintext: bytes(3) })]) {
    assert.equal(fastCodec.read(compact as string), undefined);
  }
  // The segments of a read cannot be swapped for others: there is no way to reach them.
  assert.deepEqual(Object.keys(read), ['header']);
});

test('a channel key changed in place (wiped) is never used as it was: its messages stop opening', async () => {
  const key = bytes(32);
  const original = Buffer.from(key);
  const kid = channelKid();
  const message = await fastCodec.encryptChannel(new TextEncoder().encode('x'), key, kid);
  assert.equal(new TextDecoder().decode((await fastCodec.decryptChannel(message, key)).plaintext), 'x');
  key.fill(0);
  await assert.rejects(fastCodec.decryptChannel(message, key));
  // Encrypting under it now uses what it holds now (zeros), as jose does.
  const underZeros = await fastCodec.encryptChannel(new TextEncoder().encode('y'), key, kid);
  assert.equal(new TextDecoder().decode((await joseCodec.decryptChannel(underZeros, new Uint8Array(32))).plaintext), 'y');
  await assert.rejects(joseCodec.decryptChannel(underZeros, original));
  key.set(original);
  assert.equal(new TextDecoder().decode((await fastCodec.decryptChannel(message, key)).plaintext), 'x');
});

// --- ECDHE: agreeChannelKey against the protocol's WebCrypto derivation ---------------------------

const P256_P = BigInt('0xffffffff00000001000000000000000000000000ffffffffffffffffffffffff');
const coordinate = (s: string): bigint => BigInt(`0x${Buffer.from(s, 'base64url').toString('hex') || '0'}`);
const encodeCoordinate = (n: bigint, length = 32): string => Buffer.from(n.toString(16).padStart(length * 2, '0'), 'hex').toString('base64url');

/** Point variants: [label, x, y]; the original point in another encoding, another point, or none. */
function pointVariant(x: string, y: string): [string, unknown, unknown] {
  const flip = (s: string): string => {
    const b = Buffer.from(s, 'base64url');
    b[int(b.length)]! ^= 1 << int(8);
    return b.toString('base64url');
  };
  switch (int(16)) {
    case 0: return ['bit-flip-x', flip(x), y];
    case 1: return ['bit-flip-y', x, flip(y)];
    case 2: return ['y+1 (off the curve)', x, encodeCoordinate((coordinate(y) + 1n) % P256_P)];
    case 3: return ['y+p (33 bytes)', x, encodeCoordinate(coordinate(y) + P256_P, 33)];
    case 4: return ['p-y (the other point with this x)', x, encodeCoordinate(P256_P - coordinate(y))];
    case 5: return ['truncated', x.slice(0, int(x.length)), y];
    case 6: return ['padding', `${x}=`, y];
    case 7: return ['standard alphabet', x.replace(/-/g, '+').replace(/_/g, '/'), y.replace(/-/g, '+').replace(/_/g, '/')];
    case 8: return ['whitespace', `${x.slice(0, 7)} ${x.slice(7)}`, y];
    case 9: return ['leading zero byte', encodeCoordinate(coordinate(x), 33), y];
    case 10: return ['zeros', encodeCoordinate(0n), encodeCoordinate(0n)];
    case 11: return ['empty', '', pick(['', y])];
    case 12: return ['not strings', pick([1, null, undefined, {}, [x]]), y];
    case 13: return ['swapped', y, x];
    case 14: return ['invalid characters', `${x.slice(0, 5)}!${x.slice(6)}`, y];
    default: return ['ok', x, y];
  }
}

test('ECDHE: agreeChannelKey derives the key WebCrypto derives, and takes exactly the points WebCrypto takes', async () => {
  const kinds = new Map<string, [number, number]>();
  for (let i = 0; i < 300; i++) {
    const client = await generateEphemeralKeyPair();
    const [label, x, y] = i < 100 ? ['ok', client.publicJwk.x, client.publicJwk.y] : pointVariant(client.publicJwk.x, client.publicJwk.y);
    const where = at(`#${i} ${label}: ${JSON.stringify({ x, y })}`);
    const byWebCrypto = await importEcPublicKey({ kty: 'EC', crv: 'P-256', x: x as string, y: y as string }).then(() => true, () => false);
    let agreed: ReturnType<typeof agreeChannelKey> | undefined;
    try {
      agreed = agreeChannelKey({ x: x as string, y: y as string });
    } catch (err) {
      assert.ok(err instanceof Error && err.message === 'not a P-256 public key', where);
    }
    // Stricter on one point only: coordinates that are not strings (WebIDL would convert them;
    // the request schema lets only strings through to here).
    const expected = typeof x === 'string' && typeof y === 'string' && byWebCrypto;
    assert.equal(agreed !== undefined, expected, `accepts ⟺ WebCrypto accepts: ${where}`);
    const [yes, no] = kinds.get(label) ?? [0, 0];
    kinds.set(label, agreed ? [yes + 1, no] : [yes, no + 1]);
    if (!agreed) continue;
    assert.deepEqual(Object.keys(agreed.publicJwk), ['kty', 'crv', 'x', 'y'], where);
    assert.equal(agreed.key.length, 32, where);
    // The client derives the same key from the server's public half, when the point was its own.
    const samePoint = typeof x === 'string' && typeof y === 'string' && coordinate(x.replace(/[^A-Za-z0-9_-]/g, '')) === coordinate(client.publicJwk.x) && coordinate(y.replace(/[^A-Za-z0-9_-]/g, '')) === coordinate(client.publicJwk.y);
    if (samePoint) {
      const byClient = await deriveChannelKey(client.privateKey, await importEcPublicKey(agreed.publicJwk));
      assert.ok(sameBytes(agreed.key, byClient), `the two sides derive one key: ${where}`);
    }
  }
  console.log(`ECDHE points: ${[...kinds].map(([k, [yes, no]]) => `${k} ${yes}/${yes + no}`).join(', ')} accepted`);
  assert.equal(kinds.get('ok')?.[1] ?? 0, 0, 'every genuine point is accepted');
  assert.ok([...kinds].some(([, [, no]]) => no > 0), 'refusals exercised');
});

test('ECDHE: a fresh server key every time; the error says nothing of the point', () => {
  const client = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' }) as { x: string; y: string };
  const a = agreeChannelKey(client);
  const b = agreeChannelKey(client);
  assert.notDeepEqual(a.publicJwk, b.publicJwk);
  assert.ok(!sameBytes(a.key, b.key));
  const off = { x: client.x, y: encodeCoordinate((coordinate(client.y) + 1n) % P256_P) };
  assert.throws(() => agreeChannelKey(off), (err: unknown) => err instanceof Error && !err.message.includes(off.x) && !err.message.includes(off.y));
});

test('IVs are fresh: 5,000 encryptions (across IV-pool refills) never repeat one', async () => {
  const key = bytes(32);
  const seen = new Set<string>();
  for (let i = 0; i < 5000; i++) seen.add((await fastCodec.encryptChannel(new Uint8Array(0), key, 'k')).split('.')[2]!);
  assert.equal(seen.size, 5000);
});

test('error messages carry no key material', async () => {
  const key = bytes(32);
  const jwe = await fastCodec.encryptChannel(new TextEncoder().encode('secret'), key, 'kid');
  const wrong = bytes(32);
  const err = await fastCodec.decryptChannel(jwe, wrong).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof Error);
  for (const k of [key, wrong]) {
    for (const enc of ['hex', 'base64', 'base64url'] as const) assert.ok(!err.message.includes(Buffer.from(k).toString(enc)));
  }
  assert.ok(!/secret/.test(err.message));
});

test('throughput (print only): 2,000 dir decrypt + encrypt round trips, fastCodec vs joseCodec', async () => {
  const key = bytes(32);
  const kid = 'kms://kms.example.com/ecdhe/2f9a1c3e-8b7d-4e6f-a5c4-1d2e3f4a5b6c';
  const payload = new TextEncoder().encode(JSON.stringify({ status: 200, requestId: 'r', blob: 'x'.repeat(540) })); // ≈ 600 B
  const N = 2000;
  const run = async (codec: MessageCodec): Promise<number> => {
    const inbound = await codec.encryptChannel(payload, key, kid);
    for (let i = 0; i < 100; i++) await codec.encryptChannel((await codec.decryptChannel(inbound, key)).plaintext, key, kid); // warm-up
    const t0 = performance.now();
    for (let i = 0; i < N; i++) {
      const { plaintext } = await codec.decryptChannel(inbound, key);
      await codec.encryptChannel(plaintext, key, kid);
    }
    return N / ((performance.now() - t0) / 1000);
  };
  const fast = await run(fastCodec);
  const jose = await run(joseCodec);
  console.log(
    `throughput, ${payload.length} B dir/A256GCM decrypt + encrypt: fastCodec ${Math.round(fast)} round trips/s, ` +
      `joseCodec ${Math.round(jose)} round trips/s (×${(fast / jose).toFixed(1)})`,
  );
});
