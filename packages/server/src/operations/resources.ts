/** Draft 4.7.3–4.7.4: create a resource (KRO) and retrieve it. */
import { randomUUID } from 'node:crypto';
import { KmsError, Status, createResourceSchema, validate } from '@openkms/protocol';
import type { KeyBind, ResourceRow } from '../model.js';
import { newAuthorizations } from './authorizations.js';
import type { Handler } from './context.js';
import { liveResource, localId, requireAuthorized, userPrincipal } from './guards.js';
import { bindFailure } from './keys.js';
import { MAX_TTL_SECONDS } from '../limits.js';
import { authorizationRep, resourceRep } from './representations.js';

export const createResource: Handler = async (ctx, deps) => {
  const body = validate(createResourceSchema, ctx.request);
  const user = userPrincipal(ctx.principal);
  const now = deps.now();
  const ttl = body.ttl ?? 0;
  const maxTtl = deps.config.lifetimes.maxResourceTtl || MAX_TTL_SECONDS;
  if (ttl > maxTtl) throw KmsError.badRequest(`invalid field ttl: must be between 0 and ${maxTtl} seconds`);
  const resource: ResourceRow = { id: randomUUID(), creator: user.id, createdAt: now, expiresAt: ttl > 0 ? now + ttl * 1000 : null };

  // The creator is always authorized (draft 4.7.3), whatever the request lists.
  const authIds = [user.id, ...(body.authIds ?? body.userIds ?? [])];
  const field = body.authIds ? 'authIds' : 'userIds';
  const created = await newAuthorizations(deps, resource, authIds, body.anonymous ?? 0, null, field);
  if (created.rows.length > deps.config.limits.maxAuthorizationsPerResource) {
    throw KmsError.tooLarge(`${field}: a resource holds at most ${deps.config.limits.maxAuthorizationsPerResource} authorizations`);
  }

  const keyIds = [...new Set((body.keyUris ?? []).map((uri) => localId(deps, uri, 'keys', 'keyUris')))];
  const binds: KeyBind[] = keyIds.map((id) => ({
    id,
    userId: user.id,
    clientId: ctx.request.client.clientId,
    bindDate: now,
    expiresAt: now + deps.config.lifetimes.boundKey * 1000,
    now,
  }));
  bindFailure(await deps.store.createResource(resource, created.rows, binds), 'keyUris');

  const rep = resourceRep(deps.authority, resource, keyIds, created.rows.map((r) => r.id));
  const response: Record<string, unknown> = { status: Status.CREATED, resource: rep };
  // Anonymous bearers exist only in this answer (they are not stored), so it carries them.
  if (created.bearers.size > 0) {
    response.authorizations = created.rows.map((row) => authorizationRep(deps.authority, row, created.bearers.get(row.id)));
  }
  return response as { status: number };
};

export const retrieveResource: Handler = async (ctx, deps) => {
  const resource = await liveResource(deps, ctx.id);
  await requireAuthorized(deps, ctx.principal, ctx.id);
  const [keys, authorizations] = await Promise.all([deps.store.listResourceKeys(ctx.id), deps.store.listAuthorizations(ctx.id)]);
  return {
    status: Status.OK,
    resource: resourceRep(
      deps.authority,
      resource,
      keys.map((k) => k.id),
      authorizations.map((a) => a.id),
    ),
  };
};
