/**
 * Unsealed material kept for reuse (Keyring.unsealKept): an object key is retrieved again and
 * again, and unsealing it each time is an AES-GCM call per key per request. What unsealing the
 * same sealed bytes under the same CMK for the same aad gives cannot differ (the opening is a
 * function of the CMK's key, which never changes, the sealed bytes and the aad), so an entry needs
 * no word from other nodes to stay true: it is used only when the row just read from storage
 * carries exactly those bytes under that CMK. A row gone, expired or re-sealed is the caller's to
 * see (it reads the row first); it never reaches here, or does not match.
 *
 * Bounded in count and in age, and wiped when dropped, so material of keys destroyed meanwhile
 * (the sweeper's crypto-shredding) does not stay in memory for long either. Each caller gets its
 * own copy of the bytes, which it may wipe.
 */
import { performance } from 'node:perf_hooks';

/** A copy of the bytes (not `slice()`: on a Buffer that is a view of the same memory). */
const copyOf = (bytes: Uint8Array): Uint8Array => new Uint8Array(bytes);

interface Entry {
  cmkId: string;
  sealed: Buffer;
  bytes: Uint8Array;
  keptAt: number;
}

export class KeptMaterial {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly maxEntries: number,
    private readonly maxAgeMs: number,
    /** A monotonic clock in ms (the age bound is memory hygiene, not a rule of the protocol). */
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!Number.isInteger(maxEntries) || maxEntries < 1 || !(maxAgeMs > 0)) throw new RangeError('KeptMaterial: need maxEntries >= 1 and maxAgeMs > 0');
  }

  /** A copy of what `sealed` under `cmkId` for `aad` unsealed to, when it is kept and young enough. */
  get(aad: string, cmkId: string, sealed: Uint8Array): Uint8Array | undefined {
    const entry = this.entries.get(aad);
    if (entry === undefined) return undefined;
    if (this.now() - entry.keptAt >= this.maxAgeMs) {
      this.drop(aad, entry);
      return undefined;
    }
    if (entry.cmkId !== cmkId || !entry.sealed.equals(sealed)) return undefined;
    return copyOf(entry.bytes);
  }

  /** Keeps a copy of `bytes`, what `sealed` under `cmkId` for `aad` unsealed to. */
  set(aad: string, cmkId: string, sealed: Uint8Array, bytes: Uint8Array): void {
    const known = this.entries.get(aad);
    if (known !== undefined) this.drop(aad, known);
    while (this.entries.size >= this.maxEntries) {
      const [oldest, entry] = this.entries.entries().next().value!;
      this.drop(oldest, entry);
    }
    this.entries.set(aad, { cmkId, sealed: Buffer.from(sealed), bytes: copyOf(bytes), keptAt: this.now() });
  }

  get size(): number {
    return this.entries.size;
  }

  /** Drops and wipes everything kept. */
  clear(): void {
    for (const [aad, entry] of this.entries) this.drop(aad, entry);
  }

  private drop(aad: string, entry: Entry): void {
    entry.bytes.fill(0);
    this.entries.delete(aad);
  }
}
