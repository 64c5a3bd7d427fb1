/**
 * What was unsealed from a storage row, kept while the row still holds the same sealed bytes, so a
 * hot row is read but not decrypted and parsed again. Each entry is stamped with the row's IV and
 * GCM tag (`sealing.ts`): every seal draws a fresh IV, so a row rewritten anywhere (another node, a
 * re-fetch, a CMK rotation) carries another stamp and misses. A stamp equal to one this cache
 * holds is a row this node already decrypted and authenticated: a database writer who puts an old
 * sealed value back gets what that value decrypted to, exactly as without the cache. Bounded in
 * entries and in bytes (the sealed length, a measure of the value's size); least recently used out.
 */
import { IV_BYTES, TAG_BYTES } from './sealing.js';

const STAMP_BYTES = 1 + IV_BYTES + TAG_BYTES;

interface Entry<V> {
  stamp: string;
  value: V;
  bytes: number;
}

export class UnsealedCache<V> {
  private readonly entries = new Map<string, Entry<V>>();
  private bytes = 0;

  constructor(
    private readonly maxEntries: number,
    private readonly maxBytes: number,
  ) {}

  /** The value unsealed from `sealed` for `id`, if this cache holds it. */
  get(id: string, sealed: Uint8Array): V | undefined {
    const entry = this.entries.get(id);
    if (!entry) return undefined;
    if (entry.stamp !== stampOf(sealed)) {
      this.delete(id);
      return undefined;
    }
    // Most recently used last.
    this.entries.delete(id);
    this.entries.set(id, entry);
    return entry.value;
  }

  set(id: string, sealed: Uint8Array, value: V): void {
    const bytes = sealed.byteLength;
    if (bytes > this.maxBytes) return;
    this.delete(id);
    this.entries.set(id, { stamp: stampOf(sealed), value, bytes });
    this.bytes += bytes;
    for (const [oldest, entry] of this.entries) {
      if (this.entries.size <= this.maxEntries && this.bytes <= this.maxBytes) break;
      this.entries.delete(oldest);
      this.bytes -= entry.bytes;
    }
  }

  delete(id: string): void {
    const entry = this.entries.get(id);
    if (!entry) return;
    this.entries.delete(id);
    this.bytes -= entry.bytes;
  }

  get size(): number {
    return this.entries.size;
  }
}

function stampOf(sealed: Uint8Array): string {
  return Buffer.from(sealed.buffer, sealed.byteOffset, Math.min(STAMP_BYTES, sealed.byteLength)).toString('latin1');
}
