/**
 * The answering side of federated authorization management (PROTOCOL.md §6): a peer KMS asks, for
 * one of its users, to list, create or remove authorizations on a KRO of this KMS. This KMS runs
 * its own operation with its own policy, as if the user were local, with two differences: names
 * must say whose they are, and a peer learns only about principals of its own domains.
 */
import { KmsError, validate, type AuthorizationRep } from '@openkms/protocol';
import type { z } from 'zod';
import { domainOf } from '../identity/users.js';
import type { Context, Handler } from '../operations/context.js';

/** From a peer, an authId must say whose it is: `local@domain` or an absolute KRO URI. */
function refuseAmbiguousAuthIds(ctx: Context): void {
  const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
  const given = [...list(ctx.request.authIds), ...list(ctx.request.userIds)];
  const query = ctx.query.get('authId');
  if (query !== undefined) given.push(query);
  for (const v of given) {
    if (typeof v === 'string' && !v.includes('@') && !v.startsWith('kms://')) {
      throw KmsError.badRequest('invalid field authIds: a peer must send local@domain or an absolute kms:// URI');
    }
  }
}

/**
 * The answer-a-peer handler of a forwarded operation: the local one, on absolute names only. The
 * request's own members (`schema`, when it has a body) are checked first, as the local one does.
 */
export function forPeer(local: Handler, schema?: z.ZodType): Handler {
  return async (ctx, deps) => {
    if (schema) validate(schema, ctx.request);
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
