/**
 * The answering side of a federated read (draft 3.3 step 8, PROTOCOL.md §6). A peer KMS asks, for
 * one of its users, for a key or a KRO's keys; this KMS answers only if that user is authorized on
 * the KRO (directly or through a KRO authId), and then releases the KRO's bound keys — without who
 * created them — and only the authorizations of principals in the peer's domains.
 */
import { KmsError, Status, absoluteUri, formatDate, parseDate, retrieveKeysSchema, validate, type KmsResponse } from '@openkms/protocol';
import { kroOf, walkKros } from '../authorization-graph.js';
import { domainOf } from '../identity/users.js';
import { MAX_RELEASED_KEYS } from '../limits.js';
import type { AuthorizationRow, KeyRow } from '../model.js';
import type { Context, Deps, Handler } from '../operations/context.js';
import { liveResource, requireAuthorized } from '../operations/guards.js';
import { keyAad } from '../operations/keys.js';
import { peerKeyRep } from '../operations/representations.js';

/** The peer's users authorized on the KRO, directly or through KRO authIds, each once. */
async function peerAuthorizations(deps: Deps, resourceId: string, domains: readonly string[]): Promise<AuthorizationRow[]> {
  const prefix = `kms://${deps.authority}/resources/`;
  const found = new Map<string, AuthorizationRow>();
  // Past the walk's bounds the peer gets the users found so far: it can only under-authorize.
  await walkKros([resourceId], async (id) => {
    const rows = await deps.store.listAuthorizations(id);
    for (const row of rows) {
      if (row.authId !== null && row.authId.includes('@') && domains.includes(domainOf(row.authId)) && !found.has(row.authId)) found.set(row.authId, row);
    }
    return rows.flatMap((row) => kroOf(row.authId, prefix) ?? []);
  });
  return [...found.values()];
}

async function release(ctx: Context, deps: Deps, resourceId: string): Promise<KmsResponse> {
  const peer = ctx.peer!;
  await liveResource(deps, resourceId);
  await requireAuthorized(deps, ctx.principal, resourceId);
  const { boundBefore } = validate(retrieveKeysSchema, ctx.request);
  const rows = await deps.store.listResourceKeys(resourceId, {
    boundBefore: boundBefore === undefined ? undefined : parseDate(boundBefore),
    limit: MAX_RELEASED_KEYS + 1,
  });
  let page: KeyRow[] = rows;
  let next: string | undefined;
  if (rows.length > MAX_RELEASED_KEYS) {
    page = rows.slice(0, MAX_RELEASED_KEYS);
    // Keys sharing the page's last bindDate move to the next page whole.
    const cut = page[page.length - 1]!.bindDate!;
    const shortened = page.filter((k) => k.bindDate! > cut);
    if (shortened.length > 0) {
      page = shortened;
      // boundBefore excludes its own instant: one millisecond later keeps the keys bound at `cut`.
      next = formatDate(cut + 1);
    } else {
      // 500 keys bound in one millisecond: the page cannot be split by date.
      next = formatDate(cut);
    }
  }
  const keys = await Promise.all(page.map(async (row) => peerKeyRep(deps.authority, row, await deps.keyring.unseal(row.cmkId, row.sealed, keyAad(row.id)))));
  const authorizations = (await peerAuthorizations(deps, resourceId, peer.domains)).map((row) => ({
    uri: absoluteUri(deps.authority, 'authorizations', row.id),
    authId: row.authId!,
    createDate: formatDate(row.createdAt),
    resourceUri: absoluteUri(deps.authority, 'resources', resourceId),
  }));
  await deps.store.recordPeerFetch(resourceId, peer.authority, deps.now());
  const resource: Record<string, unknown> = { uri: absoluteUri(deps.authority, 'resources', resourceId), keys, authorizations };
  if (next !== undefined) resource.next = next;
  return { status: Status.OK, resource };
}

/** retrieve /keys/<id> from a peer for its user: the whole KRO the key is bound to. */
export const releaseKey: Handler = async (ctx, deps) => {
  const key = await deps.store.getKey(ctx.id);
  if (!key) throw KmsError.notFound('no such key');
  // An unbound key belongs to its creator's client alone: never released.
  if (key.resourceId === null) throw KmsError.forbidden('the key is not bound to a resource');
  return release(ctx, deps, key.resourceId);
};

/** retrieve /resources/<id>/keys from a peer for its user. */
export const releaseResourceKeys: Handler = (ctx, deps) => release(ctx, deps, ctx.id);
