/**
 * The invalidation inbox (PROTOCOL.md §6): a peer tells this KMS that some of its KROs changed,
 * so the copies held here are out of date. The copies are marked stale in storage, and the
 * arrival order is remembered: copies.ts runs every fetch `during()` and asks `overtook()` before
 * it stores or serves an answer, so a fetch that began before an invalidation of the same KRO
 * never keeps what the invalidation overtook.
 */
import { KmsError, Status, invalidationsSchema, objectRef, validate } from '@openkms/protocol';
import { MAX_TRACKED_KROS } from '../limits.js';
import type { Handler, InvalidationInbox } from '../operations/context.js';
import type { Store } from '../store/store.js';

export class Invalidations implements InvalidationInbox {
  /** Invalidations received, counted; and per KRO, the count when it was last invalidated. */
  private count = 0;
  private readonly invalidatedAt = new Map<string, number>();
  /** Fetches under way, by the invalidation count when they began. */
  private readonly fetchesFrom = new Map<number, number>();

  constructor(private readonly store: Pick<Store, 'invalidateCopies'>) {}

  /** A peer's KROs changed (only its own KROs count: a peer cannot drop another peer's copies). */
  async invalidated(authority: string, resourceUris: readonly string[]): Promise<number> {
    const own = resourceUris.filter((uri) => objectRef(uri, 'resources', '')?.authority === authority && uri.startsWith('kms://'));
    if (this.invalidatedAt.size > MAX_TRACKED_KROS) {
      // Bounded memory: an invalidation older than every fetch under way can no longer matter.
      const oldest = Math.min(this.count, ...this.fetchesFrom.keys());
      for (const [uri, at] of this.invalidatedAt) if (at < oldest) this.invalidatedAt.delete(uri);
    }
    for (const uri of own) this.invalidatedAt.set(uri, this.count++);
    return own.length === 0 ? 0 : this.store.invalidateCopies(authority, own);
  }

  /** Runs a fetch, telling it the mark against which `overtook` judges later invalidations. */
  async during<T>(fetch: (startedAt: number) => Promise<T>): Promise<T> {
    const startedAt = this.count;
    this.fetchesFrom.set(startedAt, (this.fetchesFrom.get(startedAt) ?? 0) + 1);
    try {
      return await fetch(startedAt);
    } finally {
      const n = this.fetchesFrom.get(startedAt)! - 1;
      if (n === 0) this.fetchesFrom.delete(startedAt);
      else this.fetchesFrom.set(startedAt, n);
    }
  }

  /** Whether an invalidation of `resourceUri` arrived after a fetch that began at `startedAt`. */
  overtook(resourceUri: string, startedAt: number): boolean {
    return (this.invalidatedAt.get(resourceUri) ?? -1) >= startedAt;
  }
}

/** `update kms://<this KMS>/federation/invalidations` from a peer. */
export const receiveInvalidations: Handler = async (ctx, deps) => {
  if (ctx.principal.kind !== 'peer') throw KmsError.forbidden('only a peer KMS sends invalidations');
  const { resourceUris } = validate(invalidationsSchema, ctx.request);
  await deps.inbox.invalidated(ctx.principal.authority, resourceUris);
  return { status: Status.NO_CONTENT };
};
