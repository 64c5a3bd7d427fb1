/**
 * The answering side of a federated read (draft 3.3 step 8, PROTOCOL.md §6). A peer KMS asks, for
 * one of its users, for a key or a KRO's keys; this KMS answers only if that user is authorized on
 * the KRO (directly or through a KRO authId), and then releases the KRO's bound keys — without who
 * created them — and only the authorizations of principals in the peer's domains.
 */
import { KmsError, Status, absoluteUri, formatDate, parseDate, retrieveKeysSchema, validate, type KmsResponse } from '@openkms/protocol';
import { domainOf } from '../identity/users.js';
import { MAX_KRO_DEPTH, MAX_KRO_VISITS } from '../policy.js';
import type { AuthorizationRow, KeyRow } from '../store/store.js';
import type { Context, Deps } from '../operations/context.js';
import { liveResource, requireAuthorized } from '../operations/guards.js';

/** Keys in one federated answer; more come with `next` (a boundBefore value). */
export const MAX_RELEASED_KEYS = 500;

/** The peer's users authorized on the KRO, directly or through KRO authIds, as plain records. */
async function peerAuthorizations(deps: Deps, resourceId: string, domains: readonly string[]): Promise<{ row: AuthorizationRow; via: string }[]> {
  const prefix = `kms://${deps.authority}/resources/`;
  const found = new Map<string, { row: AuthorizationRow; via: string }>();
  const seen = new Set([resourceId]);
  let frontier = [resourceId];
  let visits = 0;
  for (let depth = 0; depth <= MAX_KRO_DEPTH && frontier.length > 0; depth++) {
    const next: string[] = [];
    for (const id of frontier) {
      if (++visits > MAX_KRO_VISITS) return [...found.values()];
      for (const row of await deps.store.listAuthorizations(id)) {
        if (row.authId === null) continue;
        if (row.authId.startsWith(prefix)) {
          const kro = row.authId.slice(prefix.length);
          if (!seen.has(kro)) seen.add(kro), next.push(kro);
        } else if (row.authId.includes('@') && domains.includes(domainOf(row.authId)) && !found.has(row.authId)) {
          found.set(row.authId, { row, via: id });
        }
      }
    }
    frontier = next;
  }
  return [...found.values()];
}

export async function releaseToPeer(ctx: Context, deps: Deps, target: { keyId: string } | { resourceId: string }): Promise<KmsResponse> {
  const peer = ctx.peer!;
  let resourceId: string;
  if ('keyId' in target) {
    const key = await deps.store.getKey(target.keyId);
    if (!key) throw KmsError.notFound('no such key');
    // An unbound key belongs to its creator's client alone: never released.
    if (key.resourceId === null) throw KmsError.forbidden('the key is not bound to a resource');
    resourceId = key.resourceId;
  } else {
    resourceId = target.resourceId;
  }
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
  const keys = await Promise.all(
    page.map(async (row) => {
      const material = await deps.keyring.unseal(row.cmkId, row.sealed, `key:${row.id}`);
      return {
        uri: absoluteUri(deps.authority, 'keys', row.id),
        jwk: { kty: 'oct', kid: row.id, k: Buffer.from(material.reveal()).toString('base64url') },
        createDate: formatDate(row.createdAt),
        expirationDate: formatDate(row.expiresAt),
        resourceUri: absoluteUri(deps.authority, 'resources', resourceId),
        bindDate: formatDate(row.bindDate!),
      };
    }),
  );
  const authorizations = (await peerAuthorizations(deps, resourceId, peer.domains)).map(({ row }) => ({
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
