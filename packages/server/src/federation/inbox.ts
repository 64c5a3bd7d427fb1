/**
 * The invalidation inbox (PROTOCOL.md §6): a peer tells this KMS that some of its KROs changed,
 * so the copies held here are out of date. The copies are marked stale in storage, and the
 * invalidation is remembered there at the next invalidation mark, so it holds for every node on
 * the database at once: copies.ts runs every fetch `during()` (which notes the mark when the fetch
 * begins) and stores its answer with that mark, and Store.putCopy refuses it, atomically, when an
 * invalidation of the same KRO, received by any node, came after.
 */
import { KmsError, Status, invalidationsSchema, objectRef, validate } from '@openkms/protocol';
import type { Handler, InvalidationInbox } from '../operations/context.js';
import type { Store } from '../store/store.js';

export class Invalidations implements InvalidationInbox {
  constructor(private readonly store: Pick<Store, 'invalidateCopies' | 'invalidationMark'>) {}

  /** A peer's KROs changed (only its own KROs count: a peer cannot drop another peer's copies). */
  async invalidated(authority: string, resourceUris: readonly string[]): Promise<number> {
    const own = resourceUris.filter((uri) => objectRef(uri, 'resources', '')?.authority === authority && uri.startsWith('kms://'));
    return own.length === 0 ? 0 : this.store.invalidateCopies(authority, own);
  }

  /** Runs a fetch, telling it the mark it began at: what it stores is judged against it (Store.putCopy). */
  async during<T>(fetch: (startedAt: number) => Promise<T>): Promise<T> {
    return fetch(await this.store.invalidationMark());
  }
}

/** `update kms://<this KMS>/federation/invalidations` from a peer. */
export const receiveInvalidations: Handler = async (ctx, deps) => {
  if (ctx.principal.kind !== 'peer') throw KmsError.forbidden('only a peer KMS sends invalidations');
  const { resourceUris } = validate(invalidationsSchema, ctx.request);
  await deps.inbox.invalidated(ctx.principal.authority, resourceUris);
  return { status: Status.NO_CONTENT };
};
