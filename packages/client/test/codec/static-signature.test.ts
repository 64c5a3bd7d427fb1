/**
 * Differential test of the signature half of the SDK's two codecs (src/codec/node.ts on
 * node:crypto, src/codec/web.ts on jose) against `jose`'s compactVerify restricted to `PS256`, as the
 * SDK verifies the KMS's handshake answers, resets and the signatures nested in answers to a peer
 * KMS. The key is the one discovery.ts makes (a CryptoKey imported from the KMS's JWK for PS256).
 * Reproduce a failure with STATIC_SIGNATURE_SEED=<seed>.
 *
 * Round trips: what jose signs, and what node:crypto signs with the PS256 parameters (RSASSA-PSS,
 * SHA-256, MGF1-SHA-256, a 32-byte salt), every side verifies, with the same payload and header.
 *
 * Tampered inputs, the oracle: a variant accepts ⟺ jose accepts ∧ (node variant only) the input is
 * strictly well-formed: three canonical unpadded base64url segments, a protected header with no
 * members besides alg, kid (string) and cty (string) (inputs.ts, computed independently). A
 * signature that does not verify is ERR_JWS_SIGNATURE_VERIFICATION_FAILED on every side.
 */
import assert from 'node:assert/strict';
import { constants, generateKeyPairSync, sign as cryptoSign, webcrypto, type KeyObject } from 'node:crypto';
import { test } from 'node:test';
import { CompactSign, compactVerify, importJWK, type CryptoKey } from 'jose';
import type { AsymmetricKey, Decrypted, ProtectedHeader } from '@openkms/protocol';
import type { ClientCodec } from '../../src/codec/client-codec.js';
import { clientCodec as nodeCodec } from '../../src/codec/node.js';
import { clientCodec as webCodec } from '../../src/codec/web.js';
import { seededRandom } from '../support.js';
import { Differential, type Variant } from './differential.js';
import { b64u, codeOf, codecInputs, headerSegment, outcome, sameBytes, strictlyWellFormed, type Header } from './inputs.js';

const random = seededRandom('STATIC_SIGNATURE_SEED');
const { rand, int, pick, at } = random;
const { randomText, randomPayload, flipBit, segmentTamper, extraMembers } = codecInputs(random);
const strict = (compact: string) => strictlyWellFormed(compact, 3, ['alg', 'kid', 'cty']);

const SIGNATURE_FAILED = 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED';
const KID = 'kms://kms.a.example';

const VARIANTS: ReadonlyArray<readonly [Variant, ClientCodec]> = [
  ['node', nodeCodec],
  ['web', webCodec],
];

const staticKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
const publicJwk = staticKey.publicKey.export({ format: 'jwk' });
/** The verification key exactly as discovery.ts imports it from the discovery document. */
const verifyKey = (await importJWK({ kty: 'RSA', n: publicJwk.n, e: publicJwk.e }, 'PS256')) as CryptoKey;

/** The reference: jose's own calls, not the protocol's verifyStatic the web variant wraps. */
const jose = {
  sign: (payload: Uint8Array, kid: string): Promise<string> => new CompactSign(payload).setProtectedHeader({ alg: 'PS256', kid }).sign(staticKey.privateKey),
  async verify(compact: string, key: AsymmetricKey): Promise<Decrypted> {
    const { payload, protectedHeader } = await compactVerify(compact, key, { algorithms: ['PS256'] });
    return { plaintext: payload, header: protectedHeader as ProtectedHeader };
  },
};

/**
 * A JWS signed with node:crypto over any header and payload segment (as written, UTF-8), PS256's
 * parameters unless others are given, so a tampered variant carries a real signature.
 */
function forge(o: { header: Header; payloadSeg: string; key?: KeyObject; hash?: string; saltLength?: number; pkcs1?: boolean }): string {
  const h = headerSegment(o.header);
  const padding = o.pkcs1 ? constants.RSA_PKCS1_PADDING : constants.RSA_PKCS1_PSS_PADDING;
  const signature = cryptoSign(o.hash ?? 'sha256', Buffer.from(`${h}.${o.payloadSeg}`, 'utf8'), { key: o.key ?? staticKey.privateKey, padding, saltLength: o.saltLength ?? 32 });
  return `${h}.${o.payloadSeg}.${signature.toString('base64url')}`;
}

/** Protected headers the KMS does not write, each properly signed: [label, header, payload segment]. */
function headerVariant(payloadSeg: string): [string, string] {
  const base = { alg: 'PS256', kid: KID };
  switch (int(16)) {
    case 0: case 1: case 2: {
      const [label, members] = extraMembers();
      return [`member:${label}`, forge({ header: { ...base, ...members }, payloadSeg })];
    }
    case 3: return ['unencoded-payload', forge({ header: { ...base, b64: false, crit: ['b64'] }, payloadSeg: pick(['{"status":200}', 'plain text', payloadSeg]) })];
    case 4: return ['enc', forge({ header: { ...base, enc: 'A256GCM' }, payloadSeg })];
    case 5: return ['alg-other', forge({ header: { ...base, alg: pick(['RS256', 'PS384', 'PS512', 'ps256', 'none', 'HS256', '', 1, null]) }, payloadSeg })];
    case 6: return ['no-alg', forge({ header: { kid: KID }, payloadSeg })];
    case 7: return ['not-an-object', forge({ header: pick(['[]', '"PS256"', '1', 'null', '{', `[${JSON.stringify(base)}]`, '']), payloadSeg })];
    case 8: return ['bom', forge({ header: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(base))]), payloadSeg })];
    case 9: return ['bad-utf8', forge({ header: Buffer.from(`{"alg":"PS256","kid":"\xff\xfe"}`, 'latin1'), payloadSeg })];
    // valid: every side accepts these
    case 10: return ['ok:member-order', forge({ header: { kid: KID, alg: 'PS256' }, payloadSeg })];
    case 11: return ['ok:no-kid', forge({ header: { alg: 'PS256' }, payloadSeg })];
    case 12: return ['ok:cty-unicode-kid', forge({ header: { ...base, kid: randomText(12), cty: 'JWT' }, payloadSeg })];
    case 13: return ['ok:json-whitespace', forge({ header: JSON.stringify(base, null, 2), payloadSeg })];
    case 14: return ['ok:escaped', forge({ header: JSON.stringify(base).replace('"PS256"', '"\\u0050S256"'), payloadSeg })];
    default: return ['ok:duplicate-member', forge({ header: `{"alg":"RS256","alg":"PS256","kid":"${KID}"}`, payloadSeg })];
  }
}

// --- tests ------------------------------------------------------------------------------------------

test('what jose signs and what node:crypto signs with PS256\'s parameters, every side verifies: 300 random payloads (empty to 64 KB, unicode)', async () => {
  for (let i = 0; i < 300; i++) {
    const payload = randomPayload(i === 0 ? 0 : undefined);
    const kid = rand() < 0.8 ? KID : randomText(int(30));
    const where = at(`#${i}: ${payload.length} bytes, kid ${JSON.stringify(kid)}`);
    const signed = [await jose.sign(payload, kid), forge({ header: { alg: 'PS256', kid }, payloadSeg: b64u(payload) })];
    assert.equal(signed[0]!.split('.')[0], signed[1]!.split('.')[0], `the KMS's header: ${where}`);
    for (const compact of signed) {
      const reference = await jose.verify(compact, verifyKey);
      assert.ok(sameBytes(reference.plaintext, payload), where);
      for (const [variant, codec] of VARIANTS) {
        for (const key of [verifyKey, staticKey.publicKey]) {
          const verified = await codec.verifyStatic(compact, key);
          assert.ok(sameBytes(verified.plaintext, payload), `${variant}: ${where}`);
          assert.deepEqual(verified.header, { alg: 'PS256', kid }, `${variant}: ${where}`);
        }
      }
    }
  }
});

test('tampered inputs: each variant accepts exactly what jose accepts (the node variant being stricter on headers and encoding only)', async () => {
  const differential = new Differential(SIGNATURE_FAILED, at);
  for (let i = 0; i < 700; i++) {
    const payload = randomPayload(rand() < 0.9 ? int(300) : undefined);
    const payloadSeg = b64u(payload);
    const base = rand() < 0.5 ? await jose.sign(payload, KID) : forge({ header: { alg: 'PS256', kid: KID }, payloadSeg });
    let kind: string;
    let compact: string;
    const r = int(20);
    if (r < 9) {
      [kind, compact] = segmentTamper(base);
    } else if (r < 15) {
      [kind, compact] = headerVariant(payloadSeg);
      kind = `header:${kind}`;
    } else if (r === 15) {
      kind = 'other-key';
      compact = forge({ header: { alg: 'PS256', kid: KID }, payloadSeg, key: otherKey.privateKey });
    } else if (r === 16) {
      const saltLength = pick([0, 20, 31, 33, 64, constants.RSA_PSS_SALTLEN_MAX_SIGN]);
      kind = `salt:${saltLength}`;
      compact = forge({ header: { alg: 'PS256', kid: KID }, payloadSeg, saltLength });
    } else if (r === 17) {
      kind = 'pkcs1-v1.5-signature';
      compact = forge({ header: { alg: 'PS256', kid: KID }, payloadSeg, pkcs1: true });
    } else if (r === 18) {
      const hash = pick(['sha384', 'sha512', 'sha1']);
      kind = `hash:${hash}`;
      compact = forge({ header: { alg: 'PS256', kid: KID }, payloadSeg, hash });
    } else {
      const n = pick([0, 1, 255, 257, 512]);
      const [h, p, s] = base.split('.') as [string, string, string];
      const signature = Buffer.from(s, 'base64url');
      kind = `signature-length:${n}`;
      compact = `${h}.${p}.${(n <= 256 ? signature.subarray(0, n) : Buffer.concat([signature, random.bytes(n - 256)])).toString('base64url')}`;
    }
    for (const [variant, codec] of VARIANTS) await differential.check({ variant, kind, compact, strict: strict(compact), reference: () => jose.verify(compact, verifyKey), mine: () => codec.verifyStatic(compact, verifyKey) });
  }
  differential.report();
});

test('a payload, signature or protected header changed in transit, or another signer, is refused by jose and both variants as ERR_JWS_SIGNATURE_VERIFICATION_FAILED', async () => {
  const counts = new Map<string, number>();
  for (let i = 0; i < 150; i++) {
    const payload = randomPayload(1 + int(2000));
    const [h, p, s] = (await jose.sign(payload, KID)).split('.') as [string, string, string];
    const part = pick(['payload', 'signature', 'header', 'signer'] as const);
    let compact: string;
    switch (part) {
      case 'payload': compact = `${h}.${flipBit(p)}.${s}`; break;
      case 'signature': compact = `${h}.${p}.${flipBit(s)}`; break;
      case 'header': {
        // a header every side accepts, so only the signature tells: another kid, or the members reordered
        const other = rand() < 0.5 ? { alg: 'PS256', kid: 'kms://kms.b.example' } : { kid: KID, alg: 'PS256' };
        compact = `${b64u(JSON.stringify(other))}.${p}.${s}`;
        break;
      }
      default:
        compact = forge({ header: { alg: 'PS256', kid: KID }, payloadSeg: p, key: otherKey.privateKey });
    }
    counts.set(part, (counts.get(part) ?? 0) + 1);
    const where = at(`#${i}, ${part} changed`);
    const sides: Array<readonly [string, (c: string) => Promise<Decrypted>]> = [['jose', (c) => jose.verify(c, verifyKey)], ...VARIANTS.map(([v, codec]) => [v, (c: string) => codec.verifyStatic(c, verifyKey)] as const)];
    for (const [side, verify] of sides) {
      const result = await outcome(() => verify(compact));
      assert.ok(!result.ok, `${side} accepted: ${where}`);
      assert.equal(codeOf(result.error), SIGNATURE_FAILED, `${side}: ${where}: ${String(result.error)}`);
    }
  }
  assert.equal(counts.size, 4, at('every part changed at least once'));
});

test('verification keys: what jose refuses (another algorithm, a private, small or non-RSA key) both variants refuse, the node variant as a TypeError', async () => {
  const compact = await jose.sign(new TextEncoder().encode('{"status":201}'), KID);
  const spki = staticKey.publicKey.export({ format: 'der', type: 'spki' });
  const subtle = webcrypto.subtle;
  const keys: Array<readonly [string, unknown]> = [
    ['the SDK\'s CryptoKey', verifyKey],
    ['a public KeyObject', staticKey.publicKey],
    ['an RSA-OAEP CryptoKey (the SDK\'s encryption key)', await importJWK({ kty: 'RSA', n: publicJwk.n, e: publicJwk.e }, 'RSA-OAEP')],
    ['an RSA-PSS SHA-384 CryptoKey', await subtle.importKey('spki', spki, { name: 'RSA-PSS', hash: 'SHA-384' }, false, ['verify'])],
    ['an RSASSA-PKCS1-v1_5 CryptoKey', await subtle.importKey('spki', spki, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, false, ['verify'])],
    ['a private KeyObject', staticKey.privateKey],
    ['a 1024-bit public key', generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey],
    ['an EC public key', generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey],
    ['raw bytes', new Uint8Array(32)],
  ];
  for (const [label, key] of keys) {
    const expected = label.startsWith('the SDK') || label.startsWith('a public') ? 'verified' : 'refused';
    const reference = await outcome(() => jose.verify(compact, key as AsymmetricKey));
    assert.equal(reference.ok ? 'verified' : 'refused', expected, `jose, ${label}`);
    for (const [variant, codec] of VARIANTS) {
      const mine = await outcome(() => codec.verifyStatic(compact, key as AsymmetricKey));
      assert.equal(mine.ok ? 'verified' : 'refused', expected, `${variant}, ${label}`);
      if (variant === 'node' && !mine.ok) assert.ok(mine.error instanceof TypeError, `node, ${label}: ${String(mine.error)}`);
    }
  }
});
