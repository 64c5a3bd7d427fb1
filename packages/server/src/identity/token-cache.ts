import * as nodeCrypto from 'node:crypto';

/**
 * SHA-256 of a token, hex: one-shot `crypto.hash` where Node has it (20.12+; half the cost of a
 * Hash object, on every request that carries a bearer), the Hash object before.
 */
const oneShot = (nodeCrypto as { hash?: (algorithm: string, data: string, encoding: 'hex') => string }).hash;
const digest: (token: string) => string = oneShot
  ? (token) => oneShot('sha256', token, 'hex')
  : (token) => nodeCrypto.createHash('sha256').update(token, 'utf8').digest('hex');

/**
 * Verification results by token, so that the requests of a channel (each carries its credential,
 * PROTOCOL.md §4) do not pay a signature check or an introspection round trip each.
 *
 * Keys are SHA-256 digests of the token: the cache never holds a bearer that could be replayed if
 * the process memory were dumped, and every key has the same small size. The size is bounded and
 * the oldest entry is evicted first (a Map iterates in insertion order), so a flood of distinct
 * valid tokens costs memory proportional to the bound, not to the flood.
 */
export class TokenCache<V> {
  private readonly entries = new Map<string, { value: V; validUntil: number }>();

  constructor(private readonly maxEntries = 10_000) {
    if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new Error('TokenCache: maxEntries must be a positive integer');
  }

  static keyOf(token: string): string {
    return digest(token);
  }

  /** The value, while `now` (epoch ms) is before its `validUntil`; expired entries are dropped. */
  get(key: string, now: number): V | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (now >= entry.validUntil) {
      this.entries.delete(key);
      return undefined;
    }
    return entry.value;
  }

  set(key: string, value: V, validUntil: number, now: number): void {
    if (validUntil <= now) return;
    // Re-inserting moves the key to the young end, so eviction stays oldest-first.
    this.entries.delete(key);
    while (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next();
      if (oldest.done) break;
      this.entries.delete(oldest.value);
    }
    this.entries.set(key, { value, validUntil });
  }

  get size(): number {
    return this.entries.size;
  }

  clear(): void {
    this.entries.clear();
  }
}
