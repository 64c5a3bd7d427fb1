/**
 * AES-GCM IVs for Node (`@openkms/protocol/iv-pool`, a subpath of its own: the browser-safe entry
 * never imports `node:crypto`). A `randomBytes(12)` per IV costs a call into OpenSSL's generator
 * each time, more than the rest of a message's header work and, measured on the server's create of
 * 100 keys, a quarter of its CPU; so IVs are cut from a pool refilled by one `randomFillSync`
 * every 341 IVs, as `crypto.randomUUID` does for its ids. An IV is a view of the pool: the caller
 * uses it at once, synchronously (copies it into a cipher and into its output), before the pool
 * can be refilled, and no IV is handed out twice.
 */
import { randomFillSync } from 'node:crypto';

export const IV_BYTES = 12;

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
