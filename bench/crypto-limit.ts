/**
 * The crypto limit: what one core can do with raw `node:crypto` and nothing of the KMS around it
 * (ARCHITECTURE.md "The hot path"). Every KMS figure is reported as a ratio against it, measured in
 * the same run, so a slow or busy machine moves both sides alike. It counts operations per
 * CPU-second of the measuring thread (process.cpuUsage around a synchronous loop: nothing else in
 * this process runs meanwhile), so time the machine gives to other processes does not lower it.
 *
 * Each operation is the least the wire requires, compact JOSE included:
 *
 *   common message: split the compact JWE, base64url-decode its header and JSON.parse it (the kid
 *                   names the channel), base64url-decode IV, ciphertext and tag, AES-256-GCM decrypt
 *                   (AAD = the header segment), JSON.parse the request, JSON.stringify the answer,
 *                   AES-256-GCM encrypt it under a fresh IV and serialise it compact (base64url);
 *                   the answer's header segment is the channel's and is encoded once;
 *   handshake:      the same JWE parsing with RSA-OAEP (SHA-1) decryption of the 32-byte CEK, then
 *                   JSON.parse, the client's P-256 point from its JWK's x and y, P-256 key
 *                   generation and ECDH (crypto.ECDH), HKDF-SHA-256, the server's point as JWK x
 *                   and y, JSON.stringify of the answer, base64url and an RSA-PSS (PS256)
 *                   signature, serialised compact.
 *
 * The payloads are this run's real ones (the benchmark's own requests and the KMS's answers), so
 * the sizes match what the KMS handles.
 */
import {
  constants,
  createCipheriv,
  createDecipheriv,
  createECDH,
  createPublicKey,
  hkdfSync,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
  randomFillSync,
  sign,
  type KeyObject,
} from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { median } from './load.js';

export interface Limit {
  /** Median of the runs: operations per CPU-second of one core. */
  perCpuSecond: number;
  runs: number[];
}

export interface CommonInputs {
  /** The request as the KMS decrypts it (JSON text bytes). */
  request: Uint8Array;
  /** The answer the KMS sends back (a JSON object; its requestId is replaced per message). */
  answer: Record<string, unknown>;
  /** The channel URI (the JWE kid). */
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

const b64u = (bytes: Uint8Array | string): string => Buffer.from(bytes).toString('base64url');
const json64 = (value: unknown): string => b64u(JSON.stringify(value));

/** A compact JWE (5 segments) of `plaintext` under `key`, as a client sends it. */
function compactJwe(header: Record<string, unknown>, encryptedKey: Uint8Array, key: Uint8Array, plaintext: Uint8Array): string {
  const protectedHeader = json64(header);
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
  c.setAAD(Buffer.from(protectedHeader, 'latin1'));
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  return [protectedHeader, b64u(encryptedKey), b64u(iv), b64u(ct), b64u(c.getAuthTag())].join('.');
}

/** Parses and decrypts a compact JWE with `cekOf(header, encryptedKey)`: the receiving side's work. */
function openJwe(compact: string, cekOf: (header: { kid?: string }, encryptedKey: Buffer) => Uint8Array): Buffer {
  const [h, ek, iv, ct, tag] = compact.split('.');
  const header = JSON.parse(Buffer.from(h!, 'base64url').toString('utf8')) as { kid?: string };
  const d = createDecipheriv('aes-256-gcm', cekOf(header, Buffer.from(ek!, 'base64url')), Buffer.from(iv!, 'base64url'), { authTagLength: 16 });
  d.setAAD(Buffer.from(h!, 'latin1'));
  d.setAuthTag(Buffer.from(tag!, 'base64url'));
  const out = d.update(Buffer.from(ct!, 'base64url'));
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
  const request = compactJwe({ alg: 'dir', enc: 'A256GCM', kid: inputs.kid }, new Uint8Array(0), key, inputs.request);
  const answerHeader = json64({ alg: 'dir', enc: 'A256GCM', kid: inputs.kid });
  const answerAad = Buffer.from(answerHeader, 'latin1');
  const nextIv = ivSource();
  return () => {
    const opened = JSON.parse(openJwe(request, () => key).toString('utf8')) as { requestId?: unknown };
    const iv = nextIv();
    const c = createCipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
    c.setAAD(answerAad);
    const ct = Buffer.concat([c.update(JSON.stringify({ ...inputs.answer, requestId: opened.requestId }), 'utf8'), c.final()]);
    `${answerHeader}..${iv.toString('base64url')}.${ct.toString('base64url')}.${c.getAuthTag().toString('base64url')}`;
  };
}

/** One handshake, as a function to call repeatedly. */
export function handshakeOp(inputs: HandshakeInputs): () => void {
  const cek = randomBytes(32);
  const encryptedKey = publicEncrypt({ key: createPublicKey(inputs.staticKey), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, cek);
  const request = compactJwe({ alg: 'RSA-OAEP', enc: 'A256GCM', kid: inputs.kid }, encryptedKey, cek, inputs.request);
  const rsaOaep = { key: inputs.staticKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' };
  const pss = { key: inputs.staticKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 };
  const empty = new Uint8Array(0);
  const uncompressed = Buffer.from([0x04]);
  const answerKey = (inputs.answer.key ?? {}) as Record<string, unknown>;
  return () => {
    const opened = JSON.parse(openJwe(request, (_, ek) => privateDecrypt(rsaOaep, ek)).toString('utf8')) as {
      requestId?: unknown;
      jwk: { x: string; y: string };
    };
    // As the KMS does it (fast-codec.ts agreeChannelKey): crypto.ECDH on the point's bytes.
    const clientPoint = Buffer.concat([uncompressed, Buffer.from(opened.jwk.x, 'base64url'), Buffer.from(opened.jwk.y, 'base64url')]);
    const ecdh = createECDH('prime256v1');
    const own = ecdh.generateKeys();
    hkdfSync('sha256', ecdh.computeSecret(clientPoint), empty, empty, 32);
    const jwk = { kty: 'EC', crv: 'P-256', x: own.subarray(1, 33).toString('base64url'), y: own.subarray(33).toString('base64url') };
    const payload = JSON.stringify({ ...inputs.answer, requestId: opened.requestId, key: { ...answerKey, jwk } });
    const input = `${json64({ alg: 'PS256', kid: inputs.kid })}.${b64u(payload)}`;
    `${input}.${sign('sha256', Buffer.from(input, 'latin1'), pss).toString('base64url')}`;
  };
}

/** Operations per CPU-second of `op` run synchronously for about `ms` of wall time. */
function perCpuSecond(op: () => void, ms: number): number {
  let ops = 0;
  const cpu0 = process.cpuUsage();
  const end = performance.now() + ms;
  while (performance.now() < end) {
    for (let i = 0; i < 4; i++) op();
    ops += 4;
  }
  const cpu = process.cpuUsage(cpu0);
  return ops / ((cpu.user + cpu.system) / 1e6);
}

/** Median per-CPU-second rate of `runs` runs of `ms` each, after a short warm-up (JIT, key caches). */
export function measureLimit(op: () => void, runs: number, ms: number): Limit {
  perCpuSecond(op, Math.min(200, ms));
  const results: number[] = [];
  for (let i = 0; i < runs; i++) results.push(perCpuSecond(op, ms));
  return { perCpuSecond: median(results), runs: results };
}
