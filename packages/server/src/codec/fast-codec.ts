/**
 * `fastCodec`: the three fixed JOSE shapes of the KMS wire (PROTOCOL.md §4, ARCHITECTURE.md "The hot
 * path") on raw `node:crypto`, synchronously, without `jose`'s WebCrypto queue:
 *   - `decryptStatic`:  compact JWE `RSA-OAEP` (SHA-1, as jose/node-jose) or `RSA-OAEP-256` / `A256GCM`;
 *   - `signStatic`:     compact JWS `PS256` (RSA-PSS, SHA-256, MGF1-SHA-256, salt 32), header {alg, kid};
 *   - `encryptChannel` / `decryptChannel`: compact JWE `dir` / `A256GCM` under a 32-byte key;
 *   - `read`: a compact JWE's protected header read and checked once, for the core to route the
 *     message by (`alg`, `kid`) and then to decrypt it with the key it names, without decoding the
 *     header a second time (`decryptStatic` and `decryptChannel` are `read` and then that decryption);
 *   - `agreeChannelKey`: the server's half of the ECDHE handshake (P-256, HKDF-SHA-256), the same
 *     derivation as the protocol's WebCrypto `deriveChannelKey`.
 *
 * It is proven against `joseCodec` (and `agreeChannelKey` against the protocol's WebCrypto ECDHE) by
 * test/fast-codec.test.ts: each side decrypts/verifies the other's
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
  createECDH,
  createPublicKey,
  createSecretKey,
  constants,
  hkdfSync,
  privateDecrypt,
  randomBytes,
  sign as cryptoSign,
  webcrypto,
} from 'node:crypto';
import { STATIC_KEY_ALGS, type AsymmetricKey, type Decrypted, type MessageCodec, type ProtectedHeader } from '@openkms/protocol';
import { IV_BYTES, TAG_BYTES, gcmOpen, nextIv } from '@openkms/protocol/aes-gcm';

const ENC = 'A256GCM';
const KEY_BYTES = 32;

const fail = (message: string): never => {
  throw new Error(message);
};

/**
 * Strict base64url decode: Node's `Buffer.from(s, 'base64url')` silently skips invalid characters,
 * accepts padding, the standard alphabet's `+` and `/`, and ignores trailing bits. Encoding what it
 * decoded gives the one canonical unpadded text of those bytes, which contains none of that: so
 * `s` is canonical base64url (only `A-Z a-z 0-9 - _`, length mod 4 ≠ 1, zero unused trailing bits)
 * exactly when it comes back unchanged. One decode and one encode, half the cost of checking the
 * alphabet with a regular expression first (this runs over every byte of every message).
 */
function decodeSegment(segment: string, what: string): Buffer {
  const bytes = Buffer.from(segment, 'base64url');
  if (bytes.toString('base64url') !== segment) fail(`invalid JOSE ${what} encoding`);
  return bytes;
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

/** The five segments of a compact JWE: protected header, encrypted key, IV, ciphertext, tag. */
type Segments = readonly [string, string, string, string, string];

/** Splits a compact JWE into its segments; throws unless there are exactly 5. */
function splitJwe(compact: unknown): Segments {
  if (typeof compact !== 'string') return fail('compact JWE must be a string');
  const parts = compact.split('.');
  if (parts.length !== 5) fail('invalid compact JWE');
  return parts as unknown as Segments;
}

/** AES-256-GCM decrypt of the last three segments; returns a Uint8Array view (no copy). */
function gcmDecrypt(cek: Uint8Array | KeyObject, headerSegment: string, ivSeg: string, ctSeg: string, tagSeg: string): Uint8Array {
  const iv = decodeSegment(ivSeg, 'IV');
  if (iv.length !== IV_BYTES) fail('invalid JWE IV length');
  const tag = decodeSegment(tagSeg, 'tag');
  if (tag.length !== TAG_BYTES) fail('invalid JWE tag length');
  const ciphertext = decodeSegment(ctSeg, 'ciphertext');
  // The AAD is the ASCII of the protected header segment (validated base64url).
  const out = gcmOpen(cek, iv, headerSegment, ciphertext, tag) ?? fail('JWE decryption failed');
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

function checkChannelKey(key: unknown): Uint8Array {
  if (!(key instanceof Uint8Array) || key.byteLength !== KEY_BYTES) {
    return fail('channel key must be a 32-byte Uint8Array');
  }
  return key;
}

/**
 * node KeyObjects of channel keys, by the key's bytes: a cipher made from a KeyObject does not
 * import raw key bytes again on every message (about a sixth of an AES-GCM call on 600 bytes).
 * A channel keeps its key's bytes for its life, so one KeyObject serves all of its messages. The
 * copy kept beside it notices bytes changed in place since (a wiped key): such a key is imported
 * again, never served from what it was.
 */
const channelKeys = new WeakMap<Uint8Array, { bytes: Buffer; key: KeyObject }>();

function channelKeyObject(input: unknown): KeyObject {
  const bytes = checkChannelKey(input);
  const known = channelKeys.get(bytes);
  if (known !== undefined && known.bytes.equals(bytes)) return known.key;
  const made = { bytes: Buffer.from(bytes), key: createSecretKey(bytes) };
  channelKeys.set(bytes, made);
  return made.key;
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

/** Every key-management algorithm a message of the wire may name: a channel's, or the static key's. */
const WIRE_ALGS: readonly string[] = ['dir', ...STATIC_KEY_ALGS];

/**
 * A compact JWE whose protected header was read and checked once (`ReceivedJwe.read`, as the
 * file comment says): the core routes the message by its `header` (`alg`, `kid`), then opens it
 * under the key it names. The segments stay private, so what is decrypted is what was read.
 */
export class ReceivedJwe {
  readonly #segments: Segments;

  private constructor(
    segments: Segments,
    /** The checked protected header: `alg` (dir, RSA-OAEP, RSA-OAEP-256), `enc`, and `kid`/`cty` when present. */
    readonly header: ProtectedHeader,
  ) {
    this.#segments = segments;
  }

  /** Reads a compact JWE of the wire; throws a fixed Error when the codec would refuse its shape or header. */
  static read(compact: unknown): ReceivedJwe {
    const segments = splitJwe(compact);
    return new ReceivedJwe(segments, parseHeader(segments[0], WIRE_ALGS));
  }

  /** Decrypts a common message (`dir`) under its 32-byte channel key. */
  openChannel(key: Uint8Array): Decrypted {
    const [h, ek, iv, ct, tag] = this.#segments;
    if (this.header.alg !== 'dir') fail('JWE "alg" not allowed');
    if (ek.length !== 0) fail('unexpected JWE encrypted key');
    return { plaintext: gcmDecrypt(channelKeyObject(key), h, iv, ct, tag), header: this.header };
  }

  /** Decrypts an ECDHE request (`RSA-OAEP`, `RSA-OAEP-256`) with the static private key. */
  openStatic(privateKey: AsymmetricKey): Decrypted {
    const [h, ek, iv, ct, tag] = this.#segments;
    const { header } = this;
    if (!STATIC_KEY_ALGS.includes(header.alg as (typeof STATIC_KEY_ALGS)[number])) fail('JWE "alg" not allowed');
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
}

/** Reads a compact JWE that may only name one of `algs` (the header check of the one-shot decrypts). */
function readAs(compact: string, algs: readonly string[]): ReceivedJwe {
  const read = ReceivedJwe.read(compact);
  if (!algs.includes(read.header.alg as string)) fail('JWE "alg" not allowed');
  return read;
}

function decryptStatic(compact: string, privateKey: AsymmetricKey): Decrypted {
  return readAs(compact, STATIC_KEY_ALGS).openStatic(privateKey);
}

function decryptChannel(compact: string, key: Uint8Array): Decrypted {
  return readAs(compact, ['dir']).openChannel(key);
}

/** base64url of the ASCII/UTF-8 JSON text (the header is small; one Buffer, no intermediate copies). */
const b64uJson = (value: unknown): string => Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');

/** Buffer view of a Uint8Array without copying. */
const view = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);


/**
 * The protected header segment of a channel's answers, and its bytes (the AAD), by kid: the same
 * for every answer on a channel, so it is encoded once per channel, not per message. Bounded, the
 * oldest dropped first; a dropped one is encoded again.
 */
const MAX_CHANNEL_HEADERS = 10_000;
const channelHeaders = new Map<string, { segment: string; aad: Buffer }>();

function channelHeader(kid: string, cty: string | undefined): { segment: string; aad: Buffer } {
  // Same member order as joseCodec: {alg, enc, kid[, cty]}. A nested answer (a peer's) is not kept.
  if (cty !== undefined) {
    const segment = b64uJson({ alg: 'dir', enc: ENC, kid, cty });
    return { segment, aad: Buffer.from(segment, 'latin1') };
  }
  let known = channelHeaders.get(kid);
  if (known === undefined) {
    const segment = b64uJson({ alg: 'dir', enc: ENC, kid });
    known = { segment, aad: Buffer.from(segment, 'latin1') };
    if (channelHeaders.size >= MAX_CHANNEL_HEADERS) channelHeaders.delete(channelHeaders.keys().next().value!);
    channelHeaders.set(kid, known);
  }
  return known;
}

function encryptChannel(plaintext: Uint8Array, key: Uint8Array, kid: string, cty?: string): string {
  if (!(plaintext instanceof Uint8Array)) fail('plaintext must be a Uint8Array');
  if (typeof kid !== 'string' || (cty !== undefined && typeof cty !== 'string')) fail('kid and cty must be strings');
  const header = channelHeader(kid, cty);
  const iv = nextIv();
  const cipher = createCipheriv('aes-256-gcm', channelKeyObject(key), iv, { authTagLength: TAG_BYTES });
  cipher.setAAD(header.aad);
  const ct = cipher.update(view(plaintext));
  const rest = cipher.final(); // empty for GCM
  const ctText = rest.length === 0 ? ct.toString('base64url') : Buffer.concat([ct, rest]).toString('base64url');
  return `${header.segment}..${iv.toString('base64url')}.${ctText}.${cipher.getAuthTag().toString('base64url')}`;
}

/** The PS256 protected header segment of the last kid signed for (the static key's, nearly always). */
let signedHeader = { kid: '', segment: '' };

function signStatic(payload: Uint8Array, privateKey: AsymmetricKey, kid: string): string {
  if (!(payload instanceof Uint8Array)) fail('payload must be a Uint8Array');
  if (typeof kid !== 'string') fail('kid must be a string');
  const key = privateKeyObject(privateKey, 'sign');
  // Exactly what jose's CompactSign produces for setProtectedHeader({ alg: 'PS256', kid }).
  if (signedHeader.kid !== kid || signedHeader.segment === '') signedHeader = { kid, segment: b64uJson({ alg: 'PS256', kid }) };
  const input = `${signedHeader.segment}.${view(payload).toString('base64url')}`;
  const signature = cryptoSign('sha256', Buffer.from(input, 'latin1'), {
    key,
    padding: constants.RSA_PKCS1_PSS_PADDING,
    saltLength: 32, // RFC 7518 §3.5: salt = hash length; MGF1 uses the same hash (SHA-256)
  });
  return `${input}.${signature.toString('base64url')}`;
}

// --- ECDHE -----------------------------------------------------------------------------------------

/** A P-256 public key as the wire carries it (PROTOCOL.md §4). */
export interface EcPoint {
  x: string;
  y: string;
}

const EMPTY = new Uint8Array(0);

/** P-256 coordinates are 32 bytes; an uncompressed point is 0x04 | x | y. */
const COORDINATE_BYTES = 32;

/**
 * The server's half of the ECDHE handshake (PROTOCOL.md §4), synchronously on node:crypto instead
 * of six WebCrypto calls through its job queue: reads the client's P-256 point, makes the server's
 * key pair, and derives K_ephemeral = HKDF-SHA-256(salt empty, IKM = the ECDH shared secret's
 * x-coordinate, info empty, 32 bytes). Only `x` and `y` are read (coordinateOf), and OpenSSL
 * refuses a point off the curve or a coordinate past the field (the test checks this takes exactly
 * the points WebCrypto's JWK import takes). Throws a fixed Error for a point it cannot use, never why.
 *
 * On `crypto.ECDH`, not a KeyObject pair: Node 20 can deadlock exporting the JWK of a key that
 * `generateKeyPairSync` made when a garbage collection during the export destroys the key's
 * generation job, which takes the mutex the export holds (seen here: a KMS frozen after some
 * 34,000 handshakes, in KeyGenJob's destructor under ExportJWK). ECDH has neither the job nor the
 * export, and reads the point without a JWK import.
 */
export function agreeChannelKey(client: EcPoint): { key: Uint8Array; publicJwk: { kty: 'EC'; crv: 'P-256'; x: string; y: string } } {
  if (typeof client?.x !== 'string' || typeof client.y !== 'string') return fail('not a P-256 public key');
  const x = coordinateOf(client.x);
  const y = coordinateOf(client.y);
  if (!x || !y) return fail('not a P-256 public key');
  const server = createECDH('prime256v1');
  const own = server.generateKeys();
  let shared: Buffer;
  try {
    shared = server.computeSecret(Buffer.concat([UNCOMPRESSED, x, y]));
  } catch {
    return fail('not a P-256 public key');
  }
  const key = new Uint8Array(hkdfSync('sha256', shared, EMPTY, EMPTY, KEY_BYTES));
  shared.fill(0);
  return {
    key,
    publicJwk: { kty: 'EC', crv: 'P-256', x: own.subarray(1, 1 + COORDINATE_BYTES).toString('base64url'), y: own.subarray(1 + COORDINATE_BYTES).toString('base64url') },
  };
}

const UNCOMPRESSED = Buffer.from([0x04]);

/**
 * A JWK coordinate as the 32 bytes of an uncompressed point, read as JWK import reads it: a
 * big-endian number, so leading zero bytes may be there or not; more than 32 bytes of it is none.
 */
function coordinateOf(encoded: string): Buffer | undefined {
  const bytes = Buffer.from(encoded, 'base64url');
  let start = 0;
  while (start < bytes.length && bytes[start] === 0) start++;
  if (bytes.length - start > COORDINATE_BYTES) return undefined;
  const out = Buffer.alloc(COORDINATE_BYTES);
  bytes.copy(out, COORDINATE_BYTES - (bytes.length - start), start);
  return out;
}

/**
 * The `node:crypto` codec. The work is synchronous; the methods return promises only to satisfy
 * `MessageCodec` (a throw becomes a rejection, as with `joseCodec`). `read` is synchronous and
 * answers undefined for a message whose header this codec refuses (core/open.ts).
 */
export const fastCodec: MessageCodec & { read(compact: string): ReceivedJwe | undefined } = {
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
  read(compact) {
    try {
      return ReceivedJwe.read(compact);
    } catch {
      return undefined;
    }
  },
};
