/**
 * The three fixed JOSE shapes of the KMS wire, behind one small interface so that the hot path can
 * use a faster implementation for exactly these shapes without touching callers:
 *   - ECDHE requests: JWE `RSA-OAEP` (or `RSA-OAEP-256`) / `A256GCM`, under the KMS static key;
 *   - ECDHE responses, resets and other static-key answers: JWS `PS256` by the static key;
 *   - common messages, both ways: JWE `dir` / `A256GCM` under the channel (ephemeral) key.
 * `joseCodec` is the reference implementation on the `jose` library (WebCrypto, browser-safe).
 */
import {
  CompactEncrypt,
  CompactSign,
  compactDecrypt,
  compactVerify,
  decodeProtectedHeader,
  type CryptoKey,
  type KeyObject,
} from 'jose';

export type AsymmetricKey = CryptoKey | KeyObject;

export interface ProtectedHeader {
  alg?: unknown;
  enc?: unknown;
  kid?: unknown;
  cty?: unknown;
  [member: string]: unknown;
}

export interface Decrypted {
  plaintext: Uint8Array;
  header: ProtectedHeader;
}

export interface MessageCodec {
  /** Decrypts an ECDHE request with the static private key. Throws on any failure. */
  decryptStatic(compact: string, privateKey: AsymmetricKey): Promise<Decrypted>;
  /** Signs `payload` as a compact JWS PS256 with header {alg, kid}. */
  signStatic(payload: Uint8Array, privateKey: AsymmetricKey, kid: string): Promise<string>;
  /** Encrypts a common message with the 32-byte channel key; `cty` marks a nested JWS. */
  encryptChannel(plaintext: Uint8Array, key: Uint8Array, kid: string, cty?: string): Promise<string>;
  /** Decrypts a common message with the 32-byte channel key. Throws on any failure. */
  decryptChannel(compact: string, key: Uint8Array): Promise<Decrypted>;
}

/** Compact serialisations the KMS accepts: 3 (JWS) or 5 (JWE) base64url segments. */
export function segmentCount(compact: string): number {
  let n = 1;
  for (let i = 0; i < compact.length; i++) if (compact.charCodeAt(i) === 46) n++;
  return n;
}

/** The protected header of a compact JWE/JWS, or undefined when it is not decodable JSON. */
export function peekHeader(compact: string): ProtectedHeader | undefined {
  try {
    const header = decodeProtectedHeader(compact) as ProtectedHeader;
    return header && typeof header === 'object' && !Array.isArray(header) ? header : undefined;
  } catch {
    return undefined;
  }
}

export const STATIC_KEY_ALGS = ['RSA-OAEP', 'RSA-OAEP-256'] as const;

export const joseCodec: MessageCodec = {
  async decryptStatic(compact, privateKey) {
    const { plaintext, protectedHeader } = await compactDecrypt(compact, privateKey, {
      keyManagementAlgorithms: [...STATIC_KEY_ALGS],
      contentEncryptionAlgorithms: ['A256GCM'],
    });
    return { plaintext, header: protectedHeader as ProtectedHeader };
  },
  async signStatic(payload, privateKey, kid) {
    return new CompactSign(payload).setProtectedHeader({ alg: 'PS256', kid }).sign(privateKey);
  },
  async encryptChannel(plaintext, key, kid, cty) {
    const header: { alg: string; enc: string; kid: string; cty?: string } = { alg: 'dir', enc: 'A256GCM', kid };
    if (cty !== undefined) header.cty = cty;
    return new CompactEncrypt(plaintext).setProtectedHeader(header).encrypt(key);
  },
  async decryptChannel(compact, key) {
    const { plaintext, protectedHeader } = await compactDecrypt(compact, key, {
      keyManagementAlgorithms: ['dir'],
      contentEncryptionAlgorithms: ['A256GCM'],
    });
    return { plaintext, header: protectedHeader as ProtectedHeader };
  },
};

/** Verifies a compact JWS PS256 with a public key (clients and peers use it on static-key answers). */
export async function verifyStatic(compact: string, publicKey: AsymmetricKey): Promise<Decrypted> {
  const { payload, protectedHeader } = await compactVerify(compact, publicKey, { algorithms: ['PS256'] });
  return { plaintext: payload, header: protectedHeader as ProtectedHeader };
}

/** Encrypts an ECDHE request to the KMS static public key (clients and peers). */
export async function encryptStatic(
  plaintext: Uint8Array,
  publicKey: AsymmetricKey,
  kid: string,
  cty?: string,
): Promise<string> {
  const header: { alg: string; enc: string; kid: string; cty?: string } = { alg: 'RSA-OAEP', enc: 'A256GCM', kid };
  if (cty !== undefined) header.cty = cty;
  return new CompactEncrypt(plaintext).setProtectedHeader(header).encrypt(publicKey);
}
