/** Checks shared by several operations; each throws the KmsError the profile fixes. */
import { KmsError, objectRef, type Collection } from '@openkms/protocol';
import { isAuthorized } from '../policy.js';
import type { Principal } from '../identity/principal.js';
import type { ResourceRow } from '../model.js';
import type { Deps } from './context.js';

/** A live resource (past its TTL it is gone for everyone: 404). */
export async function liveResource(deps: Deps, id: string, field = 'resource'): Promise<ResourceRow> {
  const row = await deps.store.getResource(id);
  if (!row || (row.expiresAt !== null && row.expiresAt <= deps.now())) throw KmsError.notFound(`${field}: no such resource`);
  return row;
}

export async function requireAuthorized(deps: Deps, principal: Principal, resourceId: string): Promise<void> {
  const ok = await isAuthorized(principal, resourceId, (id) => deps.store.listAuthorizations(id), `kms://${deps.authority}/resources/`);
  if (!ok) throw KmsError.forbidden('not authorized on this resource');
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
