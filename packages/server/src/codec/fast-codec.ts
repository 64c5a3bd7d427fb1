/**
 * `fastCodec`: the three fixed JOSE shapes of the KMS wire (PROTOCOL.md §4, ARCHITECTURE.md "The hot
 * path") on raw `node:crypto`, synchronously, without `jose`'s WebCrypto queue:
 *   - `decryptStatic`:  compact JWE `RSA-OAEP` (SHA-1, as jose/node-jose) or `RSA-OAEP-256` / `A256GCM`;
 *   - `signStatic`:     compact JWS `PS256` (RSA-PSS, SHA-256, MGF1-SHA-256, salt 32), header {alg, kid};
 *   - `encryptChannel` / `decryptChannel`: compact JWE `dir` / `A256GCM` under a 32-byte key.
 *
 * It is proven against `joseCodec` by test/fast-codec.test.ts: each side decrypts/verifies the other's
 * output, and over tampered inputs it accepts exactly what `jose` (with the same algorithm
 * restrictions) accepts, except where it is deliberately stricter:
 *
 *   1. Header members. The protected header must be a JSON object whose members are exactly `alg`
 *      and `enc` (with the expected values) plus optionally `kid` and `cty`, both strings. Anything
 *      else (`zip`, `crit`, `jku`, `jwk`, `x5u`, `x5c`, `epk`, `p2s`, `typ`, `__proto__`, ...) is
 *      rejected; `jose` ignores unknown members and even inflates `zip: "DEF"`. The real client
 *      (`node-kms` 0.4.1 on `node-jose` 2.2) sends nothing more: its ECDHE request header is
 *      `{"enc":"A256GCM","alg":"RSA-OAEP","kid":"<static kid>"}` (node-jose puts only the key's `kid`
 *      in the header; the JWK's `x5c` is not copied) and its common messages carry
 *      `{"enc":"A256GCM","alg":"dir","kid":"kms://.../ecdhe/..."}`. Member order is not significant.
 *   2. Encoding. Every segment must be canonical unpadded base64url: only `A-Z a-z 0-9 - _`, no `=`,
 *      no whitespace, length mod 4 ≠ 1 and zero unused trailing bits. `jose` (via `atob`) accepts
 *      padding, embedded whitespace and non-canonical trailing bits in the IV/ciphertext/tag
 *      segments, which would make ciphertexts malleable in their encoding. A UTF-8 BOM before the
 *      header JSON is rejected too (`jose`'s TextDecoder strips it).
 *   3. Key input. `decryptStatic` takes only an RSA private key (node KeyObject, or a CryptoKey that
 *      `jose` would accept for the alg), modulus ≥ 2048 bits, as `jose` requires.
 *
 * Errors are plain `Error`s with fixed messages: never key material, never which crypto step failed
 * (an undecryptable CEK falls through to AES-GCM with a random CEK, as `jose` does, so a bad
 * encrypted key and a bad tag fail alike).
 */
import {
  KeyObject,
  createCipheriv,
  createDecipheriv,
  constants,
  privateDecrypt,
  randomBytes,
  randomFillSync,
  sign as cryptoSign,
  webcrypto,
} from 'node:crypto';
import { STATIC_KEY_ALGS, type AsymmetricKey, type Decrypted, type MessageCodec, type ProtectedHeader } from '@openkms/protocol';

const ENC = 'A256GCM';
const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;

/** Canonical unpadded base64url alphabet; length and trailing bits are checked separately. */
const B64URL = /^[A-Za-z0-9_-]*$/;
/** Value of a base64url character (only called on characters that passed `B64URL`). */
function sextet(c: number): number {
  if (c >= 97) return c - 71; // a-z → 26..51
  if (c >= 65) return c - 65; // A-Z → 0..25
  if (c >= 48) return c + 4; // 0-9 → 52..61
  return c === 45 ? 62 : 63; // '-' → 62, '_' → 63
}

const fail = (message: string): never => {
  throw new Error(message);
};

/**
 * Strict base64url decode: Node's `Buffer.from(s, 'base64url')` silently skips invalid characters,
 * accepts padding and ignores trailing bits, so the alphabet, the length and the unused bits of the
 * last character are checked first. Returns a Buffer (no copy beyond the decode itself).
 */
function decodeSegment(segment: string, what: string): Buffer {
  const rem = segment.length & 3;
  if (rem === 1 || !B64URL.test(segment)) fail(`invalid JOSE ${what} encoding`);
  if (rem !== 0) {
    const last = sextet(segment.charCodeAt(segment.length - 1));
    if ((rem === 2 ? last & 0x0f : last & 0x03) !== 0) fail(`invalid JOSE ${what} encoding`);
  }
  return Buffer.from(segment, 'base64url');
}

const headerDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Parses and checks the protected header: a JSON object with exactly `alg` (one of `algs`) and
 * `enc` = A256GCM, and optionally `kid` and `cty` (strings); no other member. See the file comment
 * for why this is stricter than `jose` and why it still accepts everything `node-kms` sends.
 */
function parseHeader(segment: string, algs: readonly string[]): ProtectedHeader {
  const bytes = decodeSegment(segment, 'header');
  let header: unknown;
  try {
    header = JSON.parse(headerDecoder.decode(bytes));
  } catch {
    return fail('invalid JWE protected header');
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    return fail('invalid JWE protected header');
  }
  const h = header as Record<string, unknown>;
  for (const name of Object.keys(h)) {
    switch (name) {
      case 'alg':
      case 'enc':
        break;
      case 'kid':
      case 'cty':
        if (typeof h[name] !== 'string') fail('invalid JWE protected header');
        break;
      default:
        fail('unsupported JWE protected header member');
    }
  }
  const alg = h.alg;
  if (typeof alg !== 'string' || !algs.includes(alg)) fail('JWE "alg" not allowed');
  if (h.enc !== ENC) fail('JWE "enc" not allowed');
  return h as ProtectedHeader;
}

/** Splits a compact JWE into its segments; throws unless there are exactly 5. */
function splitJwe(compact: unknown): string[] {
  if (typeof compact !== 'string') return fail('compact JWE must be a string');
  const parts = compact.split('.');
  if (parts.length !== 5) fail('invalid compact JWE');
  return parts;
}

/** AES-256-GCM decrypt of the last three segments; returns a Uint8Array view (no copy). */
function gcmDecrypt(cek: Uint8Array, headerSegment: string, ivSeg: string, ctSeg: string, tagSeg: string): Uint8Array {
  const iv = decodeSegment(ivSeg, 'IV');
  if (iv.length !== IV_BYTES) fail('invalid JWE IV length');
  const tag = decodeSegment(tagSeg, 'tag');
  if (tag.length !== TAG_BYTES) fail('invalid JWE tag length');
  const ciphertext = decodeSegment(ctSeg, 'ciphertext');
  let out: Buffer;
  try {
    const decipher = createDecipheriv('aes-256-gcm', cek, iv, { authTagLength: TAG_BYTES });
    // The AAD is the ASCII of the protected header segment (validated base64url, so latin1 = ASCII).
    decipher.setAAD(Buffer.from(headerSegment, 'latin1'));
    decipher.setAuthTag(tag);
    out = decipher.update(ciphertext);
    const rest = decipher.final();
    if (rest.length !== 0) out = Buffer.concat([out, rest]);
  } catch {
    return fail('JWE decryption failed');
  }
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

function checkChannelKey(key: unknown): Uint8Array {
  if (!(key instanceof Uint8Array) || key.byteLength !== KEY_BYTES) {
    return fail('channel key must be a 32-byte Uint8Array');
  }
  return key;
}

// --- asymmetric keys -------------------------------------------------------------------------------

type Usage = 'decrypt' | 'sign';
/** Node 20 exposes the CryptoKey class only as a global (not as `webcrypto.CryptoKey`). */
const CryptoKeyClass = (globalThis as { CryptoKey?: abstract new () => webcrypto.CryptoKey }).CryptoKey;
const isCryptoKey = (key: unknown): key is webcrypto.CryptoKey =>
  CryptoKeyClass !== undefined && key instanceof CryptoKeyClass;

/** Validated node KeyObjects per input key (KeyObject or CryptoKey) and usage; keys are immutable. */
const keyCache = new WeakMap<object, { decrypt?: KeyObject; sign?: KeyObject }>();

function minModulus(key: KeyObject): void {
  const bits = key.asymmetricKeyDetails?.modulusLength;
  if (typeof bits !== 'number' || bits < 2048) fail('RSA key must be 2048 bits or larger');
}

/** A CryptoKey must be what `jose` would accept: algorithm name/hash and usage. */
function checkCryptoKey(key: webcrypto.CryptoKey, name: string, hash: string, usage: Usage): void {
  const algorithm = key.algorithm as { name?: string; hash?: { name?: string } };
  if (algorithm.name !== name || algorithm.hash?.name !== hash || !key.usages.includes(usage)) {
    fail(`CryptoKey does not support this operation`);
  }
}

function privateKeyObject(input: AsymmetricKey, usage: Usage): KeyObject {
  const entry = keyCache.get(input as object);
  const cached = entry?.[usage];
  if (cached) return cached;
  let key: KeyObject;
  if (input instanceof KeyObject) key = input;
  else if (isCryptoKey(input)) key = KeyObject.from(input);
  else return fail('private key must be a KeyObject or CryptoKey');
  if (key.type !== 'private') fail('a private key is required');
  const type = key.asymmetricKeyType;
  if (usage === 'decrypt' ? type !== 'rsa' : type !== 'rsa' && type !== 'rsa-pss') fail('an RSA key is required');
  minModulus(key);
  if (usage === 'sign' && isCryptoKey(input)) checkCryptoKey(input, 'RSA-PSS', 'SHA-256', 'sign');
  if (entry) entry[usage] = key;
  else keyCache.set(input as object, { [usage]: key });
  return key;
}


// --- the codec -------------------------------------------------------------------------------------

function decryptStatic(compact: string, privateKey: AsymmetricKey): Decrypted {
  const [h, ek, iv, ct, tag] = splitJwe(compact) as [string, string, string, string, string];
  const header = parseHeader(h, STATIC_KEY_ALGS);
  const key = privateKeyObject(privateKey, 'decrypt');
  const sha256 = header.alg === 'RSA-OAEP-256';
  if (isCryptoKey(privateKey)) checkCryptoKey(privateKey, 'RSA-OAEP', sha256 ? 'SHA-256' : 'SHA-1', 'decrypt');
  if (ek.length === 0) fail('missing JWE encrypted key');
  const encryptedKey = decodeSegment(ek, 'encrypted key');
  // Like jose: a CEK that does not decrypt or has the wrong length is replaced by a random one, so
  // the failure surfaces (in the same way and at the same point) as an AES-GCM tag mismatch.
  let cek: Buffer;
  try {
    cek = privateDecrypt(
      { key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: sha256 ? 'sha256' : 'sha1' },
      encryptedKey,
    );
    if (cek.length !== KEY_BYTES) cek = randomBytes(KEY_BYTES);
  } catch {
    cek = randomBytes(KEY_BYTES);
  }
  try {
    return { plaintext: gcmDecrypt(cek, h, iv, ct, tag), header };
  } finally {
    cek.fill(0);
  }
}

function decryptChannel(compact: string, key: Uint8Array): Decrypted {
  const [h, ek, iv, ct, tag] = splitJwe(compact) as [string, string, string, string, string];
  const header = parseHeader(h, ['dir']);
  if (ek.length !== 0) fail('unexpected JWE encrypted key');
  return { plaintext: gcmDecrypt(checkChannelKey(key), h, iv, ct, tag), header };
}

/** base64url of the ASCII/UTF-8 JSON text (the header is small; one Buffer, no intermediate copies). */
const b64uJson = (value: unknown): string => Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');

/** Buffer view of a Uint8Array without copying. */
const view = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);

/**
 * Random IVs are cut from a pool refilled by one `randomFillSync` call every 341 IVs (a per-call
 * `randomBytes(12)` costs more than the rest of the header work). Each IV is used synchronously
 * (copied into the cipher context and encoded) before the pool can be refilled, and never reused.
 */
const ivPool = Buffer.allocUnsafeSlow(IV_BYTES * 341);
let ivOffset = ivPool.length;
function nextIv(): Buffer {
  if (ivOffset + IV_BYTES > ivPool.length) {
    randomFillSync(ivPool);
    ivOffset = 0;
  }
  const iv = ivPool.subarray(ivOffset, ivOffset + IV_BYTES);
  ivOffset += IV_BYTES;
  return iv;
}

function encryptChannel(plaintext: Uint8Array, key: Uint8Array, kid: string, cty?: string): string {
  if (!(plaintext instanceof Uint8Array)) fail('plaintext must be a Uint8Array');
  if (typeof kid !== 'string' || (cty !== undefined && typeof cty !== 'string')) fail('kid and cty must be strings');
  // Same member order as joseCodec: {alg, enc, kid[, cty]}.
  const h = b64uJson(cty === undefined ? { alg: 'dir', enc: ENC, kid } : { alg: 'dir', enc: ENC, kid, cty });
  const iv = nextIv();
  const cipher = createCipheriv('aes-256-gcm', checkChannelKey(key), iv, { authTagLength: TAG_BYTES });
  cipher.setAAD(Buffer.from(h, 'latin1'));
  const ct = cipher.update(view(plaintext));
  const rest = cipher.final(); // empty for GCM
  const ctText = rest.length === 0 ? ct.toString('base64url') : Buffer.concat([ct, rest]).toString('base64url');
  return `${h}..${iv.toString('base64url')}.${ctText}.${cipher.getAuthTag().toString('base64url')}`;
}

function signStatic(payload: Uint8Array, privateKey: AsymmetricKey, kid: string): string {
  if (!(payload instanceof Uint8Array)) fail('payload must be a Uint8Array');
  if (typeof kid !== 'string') fail('kid must be a string');
  const key = privateKeyObject(privateKey, 'sign');
  // Exactly what jose's CompactSign produces for setProtectedHeader({ alg: 'PS256', kid }).
  const input = `${b64uJson({ alg: 'PS256', kid })}.${view(payload).toString('base64url')}`;
  const signature = cryptoSign('sha256', Buffer.from(input, 'latin1'), {
    key,
    padding: constants.RSA_PKCS1_PSS_PADDING,
    saltLength: 32, // RFC 7518 §3.5: salt = hash length; MGF1 uses the same hash (SHA-256)
  });
  return `${input}.${signature.toString('base64url')}`;
}

/**
 * The `node:crypto` codec. The work is synchronous; the methods return promises only to satisfy
 * `MessageCodec` (a throw becomes a rejection, as with `joseCodec`).
 */
export const fastCodec: MessageCodec = {
  async decryptStatic(compact, privateKey) {
    return decryptStatic(compact, privateKey);
  },
  async signStatic(payload, privateKey, kid) {
    return signStatic(payload, privateKey, kid);
  },
  async encryptChannel(plaintext, key, kid, cty) {
    return encryptChannel(plaintext, key, kid, cty);
  },
  async decryptChannel(compact, key) {
    return decryptChannel(compact, key);
  },
};
