/** `update kms://<this KMS>/federation/invalidations` from a peer: its KROs changed (PROTOCOL.md §6). */
import { KmsError, Status, invalidationsSchema, validate } from '@openkms/protocol';
import type { Operation } from '../operations/context.js';

export const receiveInvalidations: Operation = async (ctx, deps) => {
  if (ctx.principal.kind !== 'peer') throw KmsError.forbidden('only a peer KMS sends invalidations');
  const { resourceUris } = validate(invalidationsSchema, ctx.request);
  // Only the sender's own KROs: a peer cannot make this KMS drop another peer's copies.
  await deps.federation.invalidated(ctx.principal.authority, resourceUris);
  return { status: Status.NO_CONTENT };
};
