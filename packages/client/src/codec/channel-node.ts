/**
 * The channel codec on `node:crypto` (what `#channel-codec` is on Node; see channel-codec.ts):
 * common messages sealed and opened with synchronous AES-256-GCM instead of `jose`, which sends
 * every message through WebCrypto's async queue.
 *
 * Sealing writes exactly what `jose`'s CompactEncrypt writes for the same input: the protected
 * header `{"alg":"dir","enc":"A256GCM","kid":<channel URI>[,"cty":…]}` in that member order, an empty
 * encrypted key, a random 96-bit IV, the ciphertext and the 128-bit tag, the AAD being the ASCII of
 * the protected header segment (RFC 7516 §5.1 step 14). The KMS and node-kms read members in any
 * order; the order is kept anyway so both variants send the same bytes.
 *
 * Opening accepts what `jose` (restricted to `dir`/`A256GCM`) accepts, except where it is
 * deliberately stricter, by the rules of strict-jose.ts in @openkms/protocol, as the server's codec:
 *   1. Header members: exactly `alg` and `enc` plus optionally `kid` and `cty`, both strings (no
 *      `zip`, `crit`, `jku`, …: `jose` ignores unknown members and inflates `zip: "DEF"`).
 *   2. Encoding: every segment canonical unpadded base64url, and the header valid UTF-8 JSON with
 *      no BOM (`jose` accepts padding, whitespace and non-canonical trailing bits).
 * Each side decrypts the other's output, and over tampered inputs the two accept the same
 * (test/codec/channel-codec.test.ts).
 *
 * Failures are Errors with fixed messages (never key material, never plaintext) and the `code` of
 * the `jose` error for the same class of failure, so the SDK's ANSWER_INVALID keeps the same cause
 * code in Node and in a browser: ERR_JWE_DECRYPTION_FAILED when the message does not authenticate
 * under the key (a bad tag, ciphertext, IV or header, or another key), ERR_JOSE_ALG_NOT_ALLOWED for
 * another `alg` or `enc`, ERR_JWE_INVALID for anything malformed; a TypeError for an argument of the
 * wrong type, as `jose` throws.
 */
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { isCanonicalBase64url, protectedHeaderProblem, type Decrypted, type ProtectedHeader } from '@openkms/protocol';
import type { ChannelCodec } from './channel-codec.js';

const ALGS = ['dir'] as const;
const ENC = 'A256GCM';
const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;

type FailureCode = 'ERR_JWE_INVALID' | 'ERR_JWE_DECRYPTION_FAILED' | 'ERR_JOSE_ALG_NOT_ALLOWED';

function fail(code: FailureCode, message: string): never {
  throw Object.assign(new Error(message), { code });
}

/** Decodes one segment after checking it is canonical (Buffer's decoder alone skips bad characters). */
function decodeSegment(segment: string, what: string): Buffer {
  if (!isCanonicalBase64url(segment)) fail('ERR_JWE_INVALID', `invalid JWE ${what} encoding`);
  return Buffer.from(segment, 'base64url');
}

/** Fatal on bad UTF-8; a BOM is kept as U+FEFF, which JSON.parse then refuses. */
const headerDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function parseHeader(segment: string): ProtectedHeader {
  let header: unknown;
  try {
    header = JSON.parse(headerDecoder.decode(decodeSegment(segment, 'protected header')));
  } catch {
    return fail('ERR_JWE_INVALID', 'invalid JWE protected header');
  }
  const problem = protectedHeaderProblem(header, ALGS, ENC);
  if (problem === 'alg not allowed' || problem === 'enc not allowed') fail('ERR_JOSE_ALG_NOT_ALLOWED', `JWE ${problem}`);
  if (problem !== undefined) fail('ERR_JWE_INVALID', `invalid JWE protected header: ${problem}`);
  return header as ProtectedHeader;
}

function channelKey(key: unknown): Uint8Array {
  if (!(key instanceof Uint8Array)) throw new TypeError('channel key must be a Uint8Array');
  if (key.byteLength !== KEY_BYTES) fail('ERR_JWE_INVALID', 'channel key must be 32 bytes');
  return key;
}

/** Buffer view of a Uint8Array, without copying. */
const view = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);

function decryptChannel(compact: unknown, key: Uint8Array): Decrypted {
  if (typeof compact !== 'string') fail('ERR_JWE_INVALID', 'compact JWE must be a string');
  const parts = compact.split('.');
  if (parts.length !== 5) fail('ERR_JWE_INVALID', 'invalid compact JWE');
  const [headerSegment, encryptedKey, ivSegment, ciphertextSegment, tagSegment] = parts as [string, string, string, string, string];
  const header = parseHeader(headerSegment);
  if (encryptedKey !== '') fail('ERR_JWE_INVALID', 'unexpected JWE encrypted key for alg dir');
  const cek = channelKey(key);
  const iv = decodeSegment(ivSegment, 'IV');
  if (iv.length !== IV_BYTES) fail('ERR_JWE_INVALID', 'invalid JWE IV length');
  const tag = decodeSegment(tagSegment, 'tag');
  if (tag.length !== TAG_BYTES) fail('ERR_JWE_INVALID', 'invalid JWE tag length');
  const ciphertext = decodeSegment(ciphertextSegment, 'ciphertext');
  let plaintext: Buffer;
  try {
    const decipher = createDecipheriv('aes-256-gcm', cek, iv, { authTagLength: TAG_BYTES });
    // The header segment passed the base64url check, so its latin1 bytes are its ASCII.
    decipher.setAAD(Buffer.from(headerSegment, 'latin1'));
    decipher.setAuthTag(tag);
    plaintext = decipher.update(ciphertext);
    const rest = decipher.final(); // throws when the tag does not match
    if (rest.length !== 0) plaintext = Buffer.concat([plaintext, rest]);
  } catch {
    return fail('ERR_JWE_DECRYPTION_FAILED', 'JWE decryption failed');
  }
  return { plaintext: new Uint8Array(plaintext.buffer, plaintext.byteOffset, plaintext.byteLength), header };
}

/**
 * IVs are cut from a pool refilled by one `randomFillSync` every 341 IVs (a `randomBytes(12)` per
 * message costs more than the header work). Each IV is used at once, synchronously (copied into the
 * cipher and encoded) before the pool can be refilled, and never twice.
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
  if (!(plaintext instanceof Uint8Array)) throw new TypeError('plaintext must be a Uint8Array');
  if (typeof kid !== 'string' || (cty !== undefined && typeof cty !== 'string')) throw new TypeError('kid and cty must be strings');
  const cek = channelKey(key);
  // jose's member order: {alg, enc, kid[, cty]} (see the file comment).
  const header = cty === undefined ? { alg: 'dir', enc: ENC, kid } : { alg: 'dir', enc: ENC, kid, cty };
  const headerSegment = Buffer.from(JSON.stringify(header), 'utf8').toString('base64url');
  const iv = nextIv();
  const cipher = createCipheriv('aes-256-gcm', cek, iv, { authTagLength: TAG_BYTES });
  cipher.setAAD(Buffer.from(headerSegment, 'latin1'));
  const ciphertext = cipher.update(view(plaintext));
  const rest = cipher.final(); // empty for GCM
  const ciphertextSegment = (rest.length === 0 ? ciphertext : Buffer.concat([ciphertext, rest])).toString('base64url');
  return `${headerSegment}..${iv.toString('base64url')}.${ciphertextSegment}.${cipher.getAuthTag().toString('base64url')}`;
}

/** The work is synchronous; the methods return promises for the interface (a throw becomes a rejection, as with jose). */
export const channelCodec: ChannelCodec = {
  async encryptChannel(plaintext, key, kid, cty) {
    return encryptChannel(plaintext, key, kid, cty);
  },
  async decryptChannel(compact, key) {
    return decryptChannel(compact, key);
  },
};
