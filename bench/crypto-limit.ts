/**
 * The crypto limit: what one core can do per second with raw `node:crypto` and no KMS around it
 * (ARCHITECTURE.md "The hot path"). The KMS figures are reported as ratios against these, measured in
 * the same process just before, so a slow or busy machine moves both sides alike.
 *
 *   common message: AES-256-GCM decrypt of the request + JSON.parse + JSON.stringify of the answer +
 *                   AES-256-GCM encrypt of it (createDecipheriv / createCipheriv on Buffers, no JOSE
 *                   parsing or base64url);
 *   handshake:      RSA-OAEP (SHA-1) decrypt of a 32-byte CEK + AES-256-GCM decrypt of the request +
 *                   JSON + import of the client's P-256 JWK + P-256 key generation + ECDH + HKDF-SHA-256
 *                   + export of the server's public JWK + RSA-PSS (PS256) signature of the answer.
 *
 * The payloads are the real ones of this run (the benchmark's own request plaintexts and the KMS's
 * answers), so the sizes match what the KMS handles.
 */
import {
  constants,
  createCipheriv,
  createDecipheriv,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
  randomFillSync,
  sign,
  type KeyObject,
} from 'node:crypto';
import { median, syncOpsPerSec } from './load.js';

export interface Limit {
  /** Median of the runs, operations per second on one core. */
  opsPerSec: number;
  runs: number[];
}

export interface CommonInputs {
  /** The request as the KMS decrypts it (JSON text bytes). */
  request: Uint8Array;
  /** The answer the KMS sends back (a JSON object; its requestId is replaced per message). */
  answer: Record<string, unknown>;
  /** The channel URI (the JWE kid), for a header of the real size as AAD. */
  kid: string;
}

export interface HandshakeInputs {
  staticKey: KeyObject;
  kid: string;
  /** The handshake request plaintext (JSON text bytes, with the client's public P-256 JWK). */
  request: Uint8Array;
  /** The answer of a real handshake (its `key.jwk` and requestId are replaced per message). */
  answer: Record<string, unknown>;
}

const b64u = (value: unknown): string => Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');

function gcmSeal(key: Uint8Array, aad: Buffer, plaintext: Uint8Array): { iv: Buffer; ct: Buffer; tag: Buffer } {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  return { iv, ct, tag: c.getAuthTag() };
}

function gcmOpen(key: Uint8Array, aad: Buffer, sealed: { iv: Buffer; ct: Buffer; tag: Buffer }): Buffer {
  const d = createDecipheriv('aes-256-gcm', key, sealed.iv, { authTagLength: 16 });
  d.setAAD(aad);
  d.setAuthTag(sealed.tag);
  const out = d.update(sealed.ct);
  d.final();
  return out;
}

/** IVs cut from a pool, as the KMS's codec does (a randomBytes(12) per message would dominate). */
function ivSource(): () => Buffer {
  const pool = Buffer.allocUnsafeSlow(12 * 341);
  let offset = pool.length;
  return () => {
    if (offset + 12 > pool.length) {
      randomFillSync(pool);
      offset = 0;
    }
    offset += 12;
    return pool.subarray(offset - 12, offset);
  };
}

/** One common message, as a function to call repeatedly. */
export function commonOp(inputs: CommonInputs): () => void {
  const key = randomBytes(32);
  const aad = Buffer.from(b64u({ alg: 'dir', enc: 'A256GCM', kid: inputs.kid }), 'latin1');
  const sealed = gcmSeal(key, aad, inputs.request);
  const nextIv = ivSource();
  return () => {
    const request = JSON.parse(gcmOpen(key, aad, sealed).toString('utf8')) as { requestId?: unknown };
    const out = Buffer.from(JSON.stringify({ ...inputs.answer, requestId: request.requestId }), 'utf8');
    const c = createCipheriv('aes-256-gcm', key, nextIv(), { authTagLength: 16 });
    c.setAAD(aad);
    c.update(out);
    c.final();
    c.getAuthTag();
  };
}

/** One handshake, as a function to call repeatedly. */
export function handshakeOp(inputs: HandshakeInputs): () => void {
  const publicKey = createPublicKey(inputs.staticKey);
  const cek = randomBytes(32);
  const encryptedKey = publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, cek);
  const aad = Buffer.from(b64u({ alg: 'RSA-OAEP', enc: 'A256GCM', kid: inputs.kid }), 'latin1');
  const sealed = gcmSeal(cek, aad, inputs.request);
  const signedHeader = b64u({ alg: 'PS256', kid: inputs.kid });
  const empty = new Uint8Array(0);
  const answerKey = (inputs.answer.key ?? {}) as Record<string, unknown>;
  return () => {
    const opened = privateDecrypt({ key: inputs.staticKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, encryptedKey);
    const request = JSON.parse(gcmOpen(opened, aad, sealed).toString('utf8')) as {
      requestId?: unknown;
      jwk: { x: string; y: string };
    };
    const clientPublic = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: request.jwk.x, y: request.jwk.y }, format: 'jwk' });
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const shared = diffieHellman({ privateKey: pair.privateKey, publicKey: clientPublic });
    hkdfSync('sha256', shared, empty, empty, 32);
    const jwk = pair.publicKey.export({ format: 'jwk' });
    const payload = JSON.stringify({
      ...inputs.answer,
      requestId: request.requestId,
      key: { ...answerKey, jwk: { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y } },
    });
    const input = `${signedHeader}.${Buffer.from(payload, 'utf8').toString('base64url')}`;
    sign('sha256', Buffer.from(input, 'latin1'), { key: inputs.staticKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
  };
}

/** Median ops/s of `runs` synchronous runs of `ms` each, after a short warm-up. */
export function measureLimit(op: () => void, runs: number, ms: number): Limit {
  syncOpsPerSec(op, Math.min(200, ms), 4); // warm-up: JIT, key caches
  const results: number[] = [];
  for (let i = 0; i < runs; i++) results.push(syncOpsPerSec(op, ms, 4));
  return { opsPerSec: median(results), runs: results };
}
