/** Checks shared by several operations; each throws the KmsError the profile fixes. */
import { KmsError, objectRef, type Collection } from '@openkms/protocol';
import { isAuthorized } from '../policy.js';
import type { Principal } from '../identity/principal.js';
import type { RowSource } from '../cached-rows.js';
import type { ResourceRow } from '../model.js';
import type { Deps } from './context.js';

/** A live resource (past its TTL it is gone for everyone: 404). `rows`: where it is read (cachedFirst). */
export async function liveResource(deps: Deps, id: string, field = 'resource', rows: RowSource = deps.store): Promise<ResourceRow> {
  const row = await rows.getResource(id);
  if (!row || (row.expiresAt !== null && row.expiresAt <= deps.now())) throw KmsError.notFound(`${field}: no such resource`);
  return row;
}

export async function requireAuthorized(deps: Deps, principal: Principal, resourceId: string, rows: RowSource = deps.store): Promise<void> {
  const ok = await isAuthorized(principal, resourceId, (id) => rows.listAuthorizations(id), `kms://${deps.authority}/resources/`);
  if (!ok) throw KmsError.forbidden('not authorized on this resource');
}

/**
 * Runs a read's checks on the cached rows (cached-rows.ts) and, when they refuse (403, 404) on a
 * row served from memory, once more on rows read from storage (which the cache then holds): what
 * this node has not yet heard of (a grant, a bind, a resource made a moment ago on another node)
 * must not refuse a request; what it has is either what storage holds or a change younger than the
 * change feed's delay. A refusal decided on rows just read from storage is not read twice (a user
 * asking for unknown keys costs one read each). `decide` must only read.
 */
export async function cachedFirst<T>(deps: Deps, decide: (rows: RowSource) => Promise<T>): Promise<T> {
  if (!deps.rows.active) return decide(deps.store);
  const rows = deps.rows.decision();
  try {
    return await decide(rows);
  } catch (err) {
    // Decided on storage's rows alone (nothing was in memory): storage's refusal, not read twice.
    if (!(err instanceof KmsError && (err.status === 403 || err.status === 404)) || !rows.fromMemory) throw err;
    return decide(deps.rows.fresh);
  }
}

/**
 * The id of an object of this KMS named by a request member (`resourceUri`, a `keyUris` entry).
 * A malformed URI is a 400 naming the field; another KMS's object is a 404 until federation
 * serves it.
 */
export function localId(deps: Deps, uri: string, collection: Collection, field: string): string {
  const ref = objectRef(uri, collection, deps.authority);
  if (!ref) throw KmsError.badRequest(`invalid field ${field}: not a ${collection} URI`);
  if (ref.authority !== deps.authority) throw KmsError.notFound(`${field}: unknown KMS authority ${ref.authority}`);
  return ref.id;
}

export function userPrincipal(principal: Principal): Extract<Principal, { kind: 'user' }> {
  if (principal.kind !== 'user') throw KmsError.forbidden('only users may do this');
  return principal;
}
