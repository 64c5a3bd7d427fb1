/**
 * Ids of the rows created in bulk (keys): UUIDs of RFC 9562's version 7, whose first 48 bits are
 * the creation time in ms and whose other 74 bits (but version and variant) are random. Random
 * (version 4) ids land on a random page of every index that leads with them — the primary key, and
 * keys by creator — so one create of 100 keys dirtied ~200 index pages, each written to the WAL at
 * COMMIT and made durable; ids in about the order they sort in land on the newest few pages. The
 * time an id carries is its key's createDate, which the key's representation shows anyway; 74
 * random bits keep ids from colliding. Ids are not secrets: every read is authorized.
 */
import { randomFillSync } from 'node:crypto';

const RANDOM_BYTES = 10;

const hex = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');

/** `count` version 7 UUIDs of the instant `now` (epoch ms), from one draw of random bytes. */
export function timeOrderedIds(count: number, now: number = Date.now()): string[] {
  if (!Number.isSafeInteger(now) || now < 0 || now >= 2 ** 48) throw new RangeError('timeOrderedIds: now must be epoch milliseconds');
  const random = randomFillSync(Buffer.allocUnsafe(count * RANDOM_BYTES));
  const time = now.toString(16).padStart(12, '0');
  const ids = new Array<string>(count);
  const bytes = Buffer.allocUnsafe(RANDOM_BYTES);
  for (let i = 0; i < count; i++) {
    random.copy(bytes, 0, i * RANDOM_BYTES, (i + 1) * RANDOM_BYTES);
    bytes[0] = (bytes[0]! & 0x0f) | 0x70; // version 7
    bytes[2] = (bytes[2]! & 0x3f) | 0x80; // variant 10
    const r = hex(bytes);
    ids[i] = `${time.slice(0, 8)}-${time.slice(8)}-${r.slice(0, 4)}-${r.slice(4, 8)}-${r.slice(8)}`;
  }
  return ids;
}
