/**
 * AES-256-GCM on Node for the JOSE codecs and the keyring (`@openkms/protocol/aes-gcm`, a subpath
 * of its own: the browser-safe entry never imports `node:crypto`).
 *
 * IVs: a `randomBytes(12)` per IV costs a call into OpenSSL's generator
 * each time, more than the rest of a message's header work and, measured on the server's create of
 * 100 keys, a quarter of its CPU; so IVs are cut from a pool refilled by one `randomFillSync`
 * every 341 IVs, as `crypto.randomUUID` does for its ids. An IV is a view of the pool: the caller
 * uses it at once, synchronously (copies it into a cipher and into its output), before the pool
 * can be refilled, and no IV is handed out twice.
 */
import { createDecipheriv, randomFillSync, type KeyObject } from 'node:crypto';

export const IV_BYTES = 12;
export const TAG_BYTES = 16;

const pool = Buffer.allocUnsafeSlow(IV_BYTES * 341);
let offset = pool.length;

/** The next fresh 12-byte IV (a view: use it before the next call). */
export function nextIv(): Buffer {
  if (offset + IV_BYTES > pool.length) {
    randomFillSync(pool);
    offset = 0;
  }
  const iv = pool.subarray(offset, offset + IV_BYTES);
  offset += IV_BYTES;
  return iv;
}

/**
 * The plaintext of `ciphertext` under `key`, `iv` and `aad` (ASCII: a JWE's protected header
 * segment), or undefined when the tag does not authenticate them. The caller has checked the IV
 * and tag lengths (and says so in its own words when they are off).
 */
export function gcmOpen(key: Uint8Array | KeyObject, iv: Uint8Array, aad: string, ciphertext: Uint8Array, tag: Uint8Array): Buffer | undefined {
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
    decipher.setAAD(Buffer.from(aad, 'latin1'));
    decipher.setAuthTag(tag);
    const out = decipher.update(ciphertext);
    const rest = decipher.final(); // throws when the tag does not match
    return rest.length === 0 ? out : Buffer.concat([out, rest]);
  } catch {
    return undefined;
  }
}
