/** The draft's Administrative API: CMK rotation, CMK state, CMK listing. */
import { KmsError, Status, absoluteUri, createCmkSchema, formatDate, listCmksSchema, updateCmkSchema, validate } from '@openkms/protocol';
import { hasRoleFor, mayAdministerCmks, visibleCmks } from '../policy.js';
import type { CmkRow } from '../model.js';
import type { Deps, Handler } from './context.js';

function cmkRep(deps: Deps, row: CmkRow) {
  return { uri: absoluteUri(deps.authority, 'cmk', row.id), state: row.state, assignedOrgId: row.assignedOrgId, createDate: formatDate(row.createdAt) };
}

/** create /cmk: a new active CMK for the scope; the previous one turns inactive but still unseals. */
export const createCmk: Handler = async (ctx, deps) => {
  const { assignedOrgId } = validate(createCmkSchema, ctx.request);
  if (!mayAdministerCmks(ctx.principal, assignedOrgId ?? null)) throw KmsError.forbidden('requires kmsAdmin, or orgAgent of the assigned organisation');
  const rep = cmkRep(deps, await deps.keyring.createCmk(assignedOrgId ?? null, deps.now()));
  return { status: Status.CREATED, ...rep, key: rep };
};

/** update /cmk/<id> with `state`. */
export const updateCmk: Handler = async (ctx, deps) => {
  const { state } = validate(updateCmkSchema, ctx.request);
  const row = await deps.store.getCmk(ctx.id);
  if (!row) throw KmsError.notFound('no such CMK');
  if (!mayAdministerCmks(ctx.principal, row.assignedOrgId)) throw KmsError.forbidden('requires kmsAdmin, or orgAgent of the assigned organisation');
  // New keys always need a global active CMK: retire it by creating its successor instead.
  if (state === 'inactive' && row.state === 'active' && row.assignedOrgId === null) {
    throw KmsError.badRequest('invalid field state: the global active CMK is retired by creating a new one');
  }
  await deps.store.setCmkState(row.id, state);
  await deps.keyring.refresh();
  const rep = cmkRep(deps, (await deps.store.getCmk(row.id))!);
  return { status: Status.OK, ...rep, key: rep };
};

/** retrieve /cmk (optionally `assignedOrgId`), or retrieve /cmk/<id>. */
export const listCmks: Handler = async (ctx, deps) => {
  const { assignedOrgId } = validate(listCmksSchema, ctx.request);
  if (!hasRoleFor(ctx.principal, 'listCmks')) throw KmsError.forbidden('requires kmsAdmin or orgAgent');
  let rows = visibleCmks(ctx.principal, await deps.store.listCmks(assignedOrgId));
  if (ctx.id) rows = rows.filter((r) => r.id === ctx.id);
  return { status: Status.OK, keys: rows.map((r) => cmkRep(deps, r)) };
};
