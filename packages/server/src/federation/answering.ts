/**
 * The answering side of federated authorization management (PROTOCOL.md §6): a peer KMS asks, for
 * one of its users, to list, create or remove authorizations on a KRO of this KMS. This KMS runs
 * its own operation with its own policy, as if the user were local, with two differences: names
 * must say whose they are, and a peer learns only about principals of its own domains.
 */
import { KmsError, type AuthorizationRep } from '@openkms/protocol';
import { domainOf } from '../identity/users.js';
import type { Context, Handler } from '../operations/context.js';

/** From a peer, an authId must say whose it is: `local@domain` or an absolute KRO URI. */
function refuseAmbiguousAuthIds(ctx: Context): void {
  const given = [...((ctx.request.authIds as unknown[] | undefined) ?? []), ...((ctx.request.userIds as unknown[] | undefined) ?? [])];
  const query = ctx.query.get('authId');
  if (query !== undefined) given.push(query);
  for (const v of given) {
    if (typeof v === 'string' && !v.includes('@') && !v.startsWith('kms://')) {
      throw KmsError.badRequest('invalid field authIds: a peer must send local@domain or an absolute kms:// URI');
    }
  }
}

/** The answer-a-peer handler of a forwarded operation: the local one, on absolute names only. */
export function forPeer(local: Handler): Handler {
  return async (ctx, deps) => {
    refuseAmbiguousAuthIds(ctx);
    return local(ctx, deps);
  };
}

/** Like forPeer, and the answer lists only the authorizations of the peer's own domains. */
export function forPeerListing(local: Handler): Handler {
  return async (ctx, deps) => {
    refuseAmbiguousAuthIds(ctx);
    const response = await local(ctx, deps);
    const domains = ctx.peer?.domains ?? [];
    const listed = (response.authorizations as AuthorizationRep[] | undefined) ?? [];
    // This KMS never reveals its other users (or anonymous bearers) to a peer.
    return { ...response, authorizations: listed.filter((a) => a.authId !== undefined && a.authId.includes('@') && domains.includes(domainOf(a.authId))) };
  };
}
