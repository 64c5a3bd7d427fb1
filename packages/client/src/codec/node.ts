/**
 * The SDK's codec on `node:crypto` (what `#codec` is on Node; see client-codec.ts): common messages
 * sealed and opened with synchronous AES-256-GCM, and the KMS's PS256 signatures verified with
 * synchronous RSA-PSS, instead of `jose`, which sends every one through WebCrypto's async queue.
 *
 * Sealing writes exactly what `jose`'s CompactEncrypt writes for the same input: the protected
 * header `{"alg":"dir","enc":"A256GCM","kid":<channel URI>[,"cty":…]}` in that member order, an empty
 * encrypted key, a random 96-bit IV, the ciphertext and the 128-bit tag, the AAD being the ASCII of
 * the protected header segment (RFC 7516 §5.1 step 14). The KMS and node-kms read members in any
 * order; the order is kept anyway so both variants send the same bytes.
 *
 * Opening a JWE and verifying a JWS accept what `jose` (restricted to `dir`/`A256GCM`, and to
 * `PS256`: RSASSA-PSS, SHA-256, MGF1-SHA-256, a 32-byte salt) accepts, except where they are
 * deliberately stricter, by the rules of strict-jose.ts in @openkms/protocol, as the server's codec:
 *   1. Header members: exactly `alg` (and `enc` in a JWE) plus optionally `kid` and `cty`, both
 *      strings: no `zip`, `crit`, `b64`, `jku`, … (`jose` ignores unknown members, inflates
 *      `zip: "DEF"` and honours `b64: false`). The KMS signs with the header `{alg, kid}` only.
 *   2. Encoding: every segment canonical unpadded base64url, and the header valid UTF-8 JSON with
 *      no BOM (`jose` accepts padding, whitespace and non-canonical trailing bits).
 * Each side reads the other's output, and over tampered inputs the two accept the same
 * (test/codec/channel.test.ts, test/codec/static-signature.test.ts).
 *
 * Failures are Errors with fixed messages (never key material, never plaintext) and the `code` of
 * the `jose` error for the same class of failure, so the SDK's ANSWER_INVALID keeps the same cause
 * code in Node and in a browser: ERR_JWE_DECRYPTION_FAILED when a message does not authenticate
 * under the key (a bad tag, ciphertext, IV or header, or another key),
 * ERR_JWS_SIGNATURE_VERIFICATION_FAILED when a signature does not verify, ERR_JOSE_ALG_NOT_ALLOWED
 * for another `alg` or `enc`, ERR_JWE_INVALID / ERR_JWS_INVALID for anything malformed; a TypeError
 * for an argument or a key of the wrong type, as `jose` throws.
 */
import { KeyObject, constants, createCipheriv, verify as cryptoVerify, type webcrypto } from 'node:crypto';
import { isCanonicalBase64url, protectedHeaderProblem, type AsymmetricKey, type Decrypted, type ProtectedHeader } from '@openkms/protocol';
import { IV_BYTES, TAG_BYTES, gcmOpen, nextIv } from '@openkms/protocol/aes-gcm';
import type { ClientCodec } from './client-codec.js';

const ENC = 'A256GCM';
const KEY_BYTES = 32;

type FailureCode = 'ERR_JWE_INVALID' | 'ERR_JWE_DECRYPTION_FAILED' | 'ERR_JWS_INVALID' | 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' | 'ERR_JOSE_ALG_NOT_ALLOWED';

/** A JWE's or a JWS's own code for a malformed input. */
type Shape = { invalid: 'ERR_JWE_INVALID' | 'ERR_JWS_INVALID'; name: 'JWE' | 'JWS' };
const JWE: Shape = { invalid: 'ERR_JWE_INVALID', name: 'JWE' };
const JWS: Shape = { invalid: 'ERR_JWS_INVALID', name: 'JWS' };

function fail(code: FailureCode, message: string): never {
  throw Object.assign(new Error(message), { code });
}

/** Decodes one segment after checking it is canonical (Buffer's decoder alone skips bad characters). */
function decodeSegment(segment: string, what: string, shape = JWE): Buffer {
  if (!isCanonicalBase64url(segment)) fail(shape.invalid, `invalid ${shape.name} ${what} encoding`);
  return Buffer.from(segment, 'base64url');
}

/** Fatal on bad UTF-8; a BOM is kept as U+FEFF, which JSON.parse then refuses. */
const headerDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The protected header of a JWE (`enc` = A256GCM) or a JWS (`enc` undefined), checked by strict-jose's rules. */
function parseHeader(segment: string, shape: Shape, algs: readonly string[], enc?: string): ProtectedHeader {
  let header: unknown;
  try {
    header = JSON.parse(headerDecoder.decode(decodeSegment(segment, 'protected header', shape)));
  } catch {
    return fail(shape.invalid, `invalid ${shape.name} protected header`);
  }
  const problem = protectedHeaderProblem(header, algs, enc);
  if (problem === 'alg not allowed' || problem === 'enc not allowed') fail('ERR_JOSE_ALG_NOT_ALLOWED', `${shape.name} ${problem}`);
  if (problem !== undefined) fail(shape.invalid, `invalid ${shape.name} protected header: ${problem}`);
  return header as ProtectedHeader;
}

function channelKey(key: unknown): Uint8Array {
  if (!(key instanceof Uint8Array)) throw new TypeError('channel key must be a Uint8Array');
  if (key.byteLength !== KEY_BYTES) fail('ERR_JWE_INVALID', 'channel key must be 32 bytes');
  return key;
}

/** Buffer view of a Uint8Array, and back, without copying. */
const view = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
const bytesOf = (buffer: Buffer): Uint8Array => new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);

function decryptChannel(compact: unknown, key: Uint8Array): Decrypted {
  if (typeof compact !== 'string') fail('ERR_JWE_INVALID', 'compact JWE must be a string');
  const parts = compact.split('.');
  if (parts.length !== 5) fail('ERR_JWE_INVALID', 'invalid compact JWE');
  const [headerSegment, encryptedKey, ivSegment, ciphertextSegment, tagSegment] = parts as [string, string, string, string, string];
  const header = parseHeader(headerSegment, JWE, ['dir'], ENC);
  if (encryptedKey !== '') fail('ERR_JWE_INVALID', 'unexpected JWE encrypted key for alg dir');
  const cek = channelKey(key);
  const iv = decodeSegment(ivSegment, 'IV');
  if (iv.length !== IV_BYTES) fail('ERR_JWE_INVALID', 'invalid JWE IV length');
  const tag = decodeSegment(tagSegment, 'tag');
  if (tag.length !== TAG_BYTES) fail('ERR_JWE_INVALID', 'invalid JWE tag length');
  const ciphertext = decodeSegment(ciphertextSegment, 'ciphertext');
  // The header segment passed the base64url check: it is ASCII, the AAD.
  const plaintext = gcmOpen(cek, iv, headerSegment, ciphertext, tag) ?? fail('ERR_JWE_DECRYPTION_FAILED', 'JWE decryption failed');
  return { plaintext: bytesOf(plaintext), header };
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

// --- the KMS's signatures --------------------------------------------------------------------------

/** Node 20 exposes the CryptoKey class only as a global (not as `webcrypto.CryptoKey`). */
const CryptoKeyClass = (globalThis as { CryptoKey?: abstract new () => webcrypto.CryptoKey }).CryptoKey;
const isCryptoKey = (key: unknown): key is webcrypto.CryptoKey => CryptoKeyClass !== undefined && key instanceof CryptoKeyClass;

/** Checked KeyObjects per key given (the SDK passes one CryptoKey per KMS, for as long as it runs); keys are immutable. */
const verifyKeys = new WeakMap<object, KeyObject>();

/**
 * The node KeyObject of a PS256 verification key, refused as `jose` refuses it (a TypeError): a
 * CryptoKey must be RSA-PSS with SHA-256 and the `verify` usage; the key must be a public RSA key
 * of at least 2048 bits.
 */
function verifyKey(input: AsymmetricKey): KeyObject {
  const cached = verifyKeys.get(input as object);
  if (cached) return cached;
  let key: KeyObject;
  if (input instanceof KeyObject) {
    key = input;
  } else if (isCryptoKey(input)) {
    const algorithm = input.algorithm as { name?: string; hash?: { name?: string } };
    if (algorithm.name !== 'RSA-PSS' || algorithm.hash?.name !== 'SHA-256' || !input.usages.includes('verify')) {
      throw new TypeError('CryptoKey does not support PS256 verification');
    }
    key = KeyObject.from(input);
  } else {
    throw new TypeError('verification key must be a KeyObject or a CryptoKey');
  }
  if (key.type !== 'public' || (key.asymmetricKeyType !== 'rsa' && key.asymmetricKeyType !== 'rsa-pss')) throw new TypeError('PS256 verification needs a public RSA key');
  const bits = key.asymmetricKeyDetails?.modulusLength;
  if (typeof bits !== 'number' || bits < 2048) throw new TypeError('PS256 requires key modulusLength to be 2048 bits or larger');
  verifyKeys.set(input as object, key);
  return key;
}

/**
 * The checks run in `jose`'s order where it decides the error: the header, the key, the signature
 * over the segments as they are, and only then the payload is decoded. The payload and signature
 * segments must be canonical before they are signing input or signature.
 */
function verifyStatic(compact: unknown, publicKey: AsymmetricKey): Decrypted {
  if (typeof compact !== 'string') fail('ERR_JWS_INVALID', 'compact JWS must be a string');
  const parts = compact.split('.');
  if (parts.length !== 3) fail('ERR_JWS_INVALID', 'invalid compact JWS');
  const [headerSegment, payloadSegment, signatureSegment] = parts as [string, string, string];
  const header = parseHeader(headerSegment, JWS, ['PS256']);
  const key = verifyKey(publicKey);
  if (!isCanonicalBase64url(payloadSegment)) fail('ERR_JWS_INVALID', 'invalid JWS payload encoding');
  const signature = decodeSegment(signatureSegment, 'signature', JWS);
  // Both segments passed the base64url check, so their latin1 bytes are their ASCII.
  const signingInput = Buffer.from(`${headerSegment}.${payloadSegment}`, 'latin1');
  let verified = false;
  try {
    // RFC 7518 §3.5: the salt is as long as the hash; MGF1 uses the same hash (node's default).
    verified = cryptoVerify('sha256', signingInput, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature);
  } catch {
    verified = false;
  }
  if (!verified) fail('ERR_JWS_SIGNATURE_VERIFICATION_FAILED', 'signature verification failed');
  return { plaintext: bytesOf(Buffer.from(payloadSegment, 'base64url')), header };
}

/** The work is synchronous; the methods return promises for the interface (a throw becomes a rejection, as with jose). */
export const clientCodec: ClientCodec = {
  async encryptChannel(plaintext, key, kid, cty) {
    return encryptChannel(plaintext, key, kid, cty);
  },
  async decryptChannel(compact, key) {
    return decryptChannel(compact, key);
  },
  async verifyStatic(compact, publicKey) {
    return verifyStatic(compact, publicKey);
  },
};
