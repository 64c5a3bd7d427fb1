/** Draft 4.7.8–4.7.11: create, retrieve and delete authorizations (the viral model). */
import { randomUUID } from 'node:crypto';
import {
  KmsError,
  Limits,
  Status,
  bulkDeleteAuthorizationsSchema,
  createAuthorizationsSchema,
  objectRef,
  validate,
} from '@openkms/protocol';
import { isUserId, normalizeUserId } from '../identity/users.js';
import type { AuthorizationRow } from '../model.js';
import type { Context, Deps, Handler } from './context.js';
import { liveResource, localId, requireAuthorized, userPrincipal } from './guards.js';
import { authorizationRep } from './representations.js';

/**
 * An authId as stored: a user id (`local@domain`, the first domain when it has no `@`), or the
 * absolute URI of a KRO (whose principals are then authorized too). A KRO of this KMS must exist.
 */
export async function normalizeAuthId(deps: Deps, raw: string, field: string, mustExist = false): Promise<string> {
  if (raw.startsWith('kms://') || raw.startsWith('/')) {
    const ref = objectRef(raw, 'resources', deps.authority);
    if (!ref) throw KmsError.badRequest(`invalid field ${field}: not a user id or a resource URI`);
    // Only a new link must name a live KRO; an old one can always be looked up and removed.
    if (mustExist && ref.authority === deps.authority && !(await deps.store.getResource(ref.id))) {
      throw KmsError.badRequest(`invalid field ${field}: no such resource`);
    }
    return `kms://${ref.authority}/resources/${ref.id}`;
  }
  const id = normalizeUserId(raw, deps.config.domains[0]!);
  if (!isUserId(id)) throw KmsError.badRequest(`invalid field ${field}: not a user id`);
  return id;
}

const authIdsOf = (rows: AuthorizationRow[]) => rows.flatMap((r) => (r.authId === null ? [] : [r.authId]));

export interface NewAuthorizations {
  rows: AuthorizationRow[];
  /** Bearers of the anonymous ones, by authorization id: returned once, never stored. */
  bearers: Map<string, string>;
}

/** Builds the rows for `authIds` plus `anonymous` anonymous authorizations on one resource. */
export async function newAuthorizations(
  deps: Deps,
  resource: { id: string; expiresAt: number | null },
  authIds: string[],
  anonymous: number,
  roleUri: string | null,
  field: string,
): Promise<NewAuthorizations> {
  if (anonymous > Limits.maxAnonymous) throw KmsError.tooLarge(`anonymous: at most ${Limits.maxAnonymous} per request`);
  const now = deps.now();
  const ids = new Set<string>();
  for (const raw of authIds) ids.add(await normalizeAuthId(deps, raw, field, true));
  const rows: AuthorizationRow[] = [...ids].map((authId) => ({ id: randomUUID(), resourceId: resource.id, authId, roleUri, createdAt: now }));
  const bearers = new Map<string, string>();
  const bearerExpiry = resource.expiresAt ?? now + deps.config.lifetimes.anonymousBearerMax * 1000;
  for (let i = 0; i < anonymous; i++) {
    const row: AuthorizationRow = { id: randomUUID(), resourceId: resource.id, authId: null, roleUri, createdAt: now };
    rows.push(row);
    bearers.set(row.id, await deps.bearers.issue({ authorizationId: row.id, resourceId: resource.id, expiresAt: bearerExpiry }));
  }
  return { rows, bearers };
}

export const createAuthorizations: Handler = async (ctx, deps) => {
  const body = validate(createAuthorizationsSchema, ctx.request);
  const user = userPrincipal(ctx.principal);
  const resourceId = localId(deps, body.resourceUri, 'resources', 'resourceUri');
  const resource = await liveResource(deps, resourceId, 'resourceUri');
  await requireAuthorized(deps, user, resourceId);
  const authIds = body.authIds ?? body.userIds ?? [];
  const field = body.authIds ? 'authIds' : 'userIds';
  if (authIds.length === 0 && !body.anonymous) throw KmsError.badRequest('invalid field authIds: nothing to authorize');
  const created = await newAuthorizations(deps, resource, authIds, body.anonymous ?? 0, body.roleUri ?? null, field);
  const max = deps.config.limits.maxAuthorizationsPerResource;
  const rows = await deps.store.addAuthorizations(resourceId, created.rows, max);
  if (rows === 'over-limit') throw KmsError.tooLarge(`${field}: a resource holds at most ${max} authorizations`);
  await deps.changes.changed([resourceId], authIdsOf(rows));
  return {
    status: Status.CREATED,
    authorizations: rows.map((row) => authorizationRep(deps.authority, row, created.bearers.get(row.id))),
  };
};

export const retrieveAuthorizations: Handler = async (ctx, deps) => {
  await liveResource(deps, ctx.id);
  await requireAuthorized(deps, ctx.principal, ctx.id);
  let rows = await deps.store.listAuthorizations(ctx.id);
  const authId = ctx.query.get('authId');
  if (authId !== undefined) {
    const wanted = await normalizeAuthId(deps, authId, 'authId');
    rows = rows.filter((r) => r.authId === wanted);
  }
  return { status: Status.OK, authorizations: rows.map((row) => authorizationRep(deps.authority, row)) };
};

async function deleteFrom(ctx: Context, deps: Deps, resourceId: string, rows: AuthorizationRow[]) {
  await liveResource(deps, resourceId);
  await requireAuthorized(deps, ctx.principal, resourceId);
  const deleted = await deps.store.deleteAuthorizations(resourceId, rows.map((r) => r.id));
  // Revocation must reach peers holding copies now, not at their staleness bound.
  if (deleted.length > 0) await deps.changes.changed([resourceId], authIdsOf(deleted));
  return deleted.map((row) => authorizationRep(deps.authority, row));
}

/** delete /authorizations/<id> */
export const deleteAuthorization: Handler = async (ctx, deps) => {
  const row = await deps.store.getAuthorization(ctx.id);
  if (!row) throw KmsError.notFound('no such authorization');
  const [deleted] = await deleteFrom(ctx, deps, row.resourceId, [row]);
  if (!deleted) throw KmsError.notFound('no such authorization');
  // Webex clients read `authorizations`; the draft names `authorization`: answer both.
  return { status: Status.OK, authorization: deleted, authorizations: [deleted] };
};

/** delete /resources/<id>/authorizations?authId=<x> */
export const deleteAuthorizationByAuthId: Handler = async (ctx, deps) => {
  const raw = ctx.query.get('authId');
  if (raw === undefined) throw KmsError.badRequest('invalid field uri: authId query parameter missing');
  const authId = await normalizeAuthId(deps, raw, 'authId');
  await liveResource(deps, ctx.id);
  await requireAuthorized(deps, ctx.principal, ctx.id);
  const row = (await deps.store.listAuthorizations(ctx.id)).find((r) => r.authId === authId);
  if (!row) throw KmsError.notFound('no such authorization');
  const [deleted] = await deleteFrom(ctx, deps, ctx.id, [row]);
  if (!deleted) throw KmsError.notFound('no such authorization');
  return { status: Status.OK, authorization: deleted, authorizations: [deleted] };
};

/** delete /authorizations with resourceUri + authIds (bulk) */
export const bulkDeleteAuthorizations: Handler = async (ctx, deps) => {
  const body = validate(bulkDeleteAuthorizationsSchema, ctx.request);
  const resourceId = localId(deps, body.resourceUri, 'resources', 'resourceUri');
  await liveResource(deps, resourceId, 'resourceUri');
  await requireAuthorized(deps, ctx.principal, resourceId);
  const wanted = new Set<string>();
  for (const raw of body.authIds) wanted.add(await normalizeAuthId(deps, raw, 'authIds'));
  const rows = (await deps.store.listAuthorizations(resourceId)).filter((r) => r.authId !== null && wanted.has(r.authId));
  const deleted = await deleteFrom(ctx, deps, resourceId, rows);
  return { status: Status.OK, authorizations: deleted };
};
