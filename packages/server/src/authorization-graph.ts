/**
 * The authorization graph (PROTOCOL.md §1): a KRO authId links one resource to another, whose
 * principals are then authorized too. One bounded breadth-first walk over it serves every
 * question asked of it — is a principal authorized (policy), which of a peer's users are
 * (federated release), which KROs reach a changed one (invalidation push) — so the bounds and
 * the cycle handling are the same everywhere. Pure: the caller supplies each step's neighbours.
 */
import { MAX_KRO_DEPTH, MAX_KRO_VISITS } from './limits.js';

/** How a walk ended: it ran out of resources, a step asked to stop, or it hit a bound. */
export type WalkEnd = 'done' | 'stopped' | 'bounded';

/**
 * Visits `start` and the resources linked to it, breadth first, each once (cycles are ignored),
 * at most MAX_KRO_DEPTH hops from `start` and MAX_KRO_VISITS resources in all. `step(id)` is
 * called once per visited resource and returns the ids of the resources next to it, or 'stop'.
 * Depth alone does not bound the work: a user could link thousands of KROs at every level.
 */
export async function walkKros(start: readonly string[], step: (id: string) => Promise<readonly string[] | 'stop'>): Promise<WalkEnd> {
  const seen = new Set<string>(start);
  let frontier = [...seen];
  let visits = 0;
  for (let depth = 0; depth <= MAX_KRO_DEPTH && frontier.length > 0; depth++) {
    const next: string[] = [];
    for (const id of frontier) {
      if (++visits > MAX_KRO_VISITS) return 'bounded';
      const neighbours = await step(id);
      if (neighbours === 'stop') return 'stopped';
      for (const n of neighbours) {
        if (!seen.has(n)) {
          seen.add(n);
          next.push(n);
        }
      }
    }
    frontier = next;
  }
  return frontier.length > 0 ? 'bounded' : 'done';
}

/** The resource id a KRO authId of this KMS names (`kms://<authority>/resources/<id>`), if it is one. */
export function kroOf(authId: string | null, selfResourcePrefix: string): string | undefined {
  return authId?.startsWith(selfResourcePrefix) ? authId.slice(selfResourcePrefix.length) : undefined;
}
