/**
 * The one sealed format of the keyring: AES-256-GCM as `version (1) | iv (12) | tag (16) | body`.
 * CMKs under the root key and key material under a CMK both use it, whether the AES runs here
 * (node:crypto) or inside an HSM (PKCS#11 CKM_AES_GCM): the bytes are the same either way, so a
 * CMK row does not say where its root key lives, and existing rows stay readable.
 */
import { createCipheriv, createDecipheriv, type KeyObject } from 'node:crypto';
import { IV_BYTES, nextIv } from '@openkms/protocol/aes-gcm';

export { IV_BYTES };
export const SEALED_VERSION = 1;
export const TAG_BYTES = 16;

export interface SealedParts {
  iv: Uint8Array;
  tag: Uint8Array;
  body: Uint8Array;
}

export function packSealed({ iv, tag, body }: SealedParts): Uint8Array {
  return new Uint8Array(Buffer.concat([Buffer.from([SEALED_VERSION]), iv, tag, body]));
}

export function unpackSealed(sealed: Uint8Array): SealedParts {
  const buf = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  if (buf.length < 1 + IV_BYTES + TAG_BYTES || buf[0] !== SEALED_VERSION) throw new Error('sealed value has an unknown format');
  return { iv: buf.subarray(1, 1 + IV_BYTES), tag: buf.subarray(1 + IV_BYTES, 1 + IV_BYTES + TAG_BYTES), body: buf.subarray(1 + IV_BYTES + TAG_BYTES) };
}

/** `key`: 32 bytes, or a KeyObject of them (a CMK, made once: it spares the cipher importing the bytes). */
export function seal(key: Uint8Array | KeyObject, plaintext: Uint8Array, aad: string): Uint8Array {
  // Used at once: copied into the cipher and into the sealed bytes (packSealed) before any other IV is cut.
  const iv = nextIv();
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad, 'utf8'));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return packSealed({ iv, tag: cipher.getAuthTag(), body });
}

export function unseal(key: Uint8Array | KeyObject, sealed: Uint8Array, aad: string): Uint8Array {
  const { iv, tag, body } = unpackSealed(sealed);
  const decipher = createDecipheriv('aes-256-gcm', key, iv);
  decipher.setAAD(Buffer.from(aad, 'utf8'));
  decipher.setAuthTag(tag);
  return Buffer.concat([decipher.update(body), decipher.final()]);
}
