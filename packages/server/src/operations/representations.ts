/** Draft 4.4 object representations, always with absolute URIs (PROTOCOL.md §1). */
import { absoluteUri, formatDate, type AuthorizationRep, type KeyRep, type ResourceRep } from '@openkms/protocol';
import type { Secret } from '../secret.js';
import type { AuthorizationRow, KeyRow, ResourceRow } from '../model.js';

/** A key as its own KMS's users see it. */
export function keyRep(authority: string, row: KeyRow, material: Secret): KeyRep {
  const { uri, jwk, createDate, expirationDate, resourceUri, bindDate } = peerKeyRep(authority, row, material);
  const rep: KeyRep = { uri, jwk, userId: row.userId, clientId: row.clientId, createDate, expirationDate };
  if (resourceUri !== undefined) rep.resourceUri = resourceUri;
  if (bindDate !== undefined) rep.bindDate = bindDate;
  return rep;
}

/**
 * A key as released to a peer KMS (PROTOCOL.md §6): the same representation without who created
 * it (`userId`, `clientId`): this KMS never reveals its users to a peer.
 */
export function peerKeyRep(authority: string, row: KeyRow, material: Secret): Omit<KeyRep, 'userId' | 'clientId'> {
  const rep: Omit<KeyRep, 'userId' | 'clientId'> = {
    uri: absoluteUri(authority, 'keys', row.id),
    jwk: { kty: 'oct', kid: row.id, k: Buffer.from(material.reveal()).toString('base64url') },
    createDate: formatDate(row.createdAt),
    expirationDate: formatDate(row.expiresAt),
  };
  if (row.resourceId !== null) rep.resourceUri = absoluteUri(authority, 'resources', row.resourceId);
  if (row.bindDate !== null) rep.bindDate = formatDate(row.bindDate);
  return rep;
}

export function authorizationRep(authority: string, row: AuthorizationRow, bearer?: string): AuthorizationRep {
  const rep: AuthorizationRep = {
    uri: absoluteUri(authority, 'authorizations', row.id),
    createDate: formatDate(row.createdAt),
    resourceUri: absoluteUri(authority, 'resources', row.resourceId),
  };
  if (row.authId !== null) rep.authId = row.authId;
  if (bearer !== undefined) rep.bearer = bearer;
  if (row.roleUri !== null) rep.roleUri = row.roleUri;
  return rep;
}

export function resourceRep(
  authority: string,
  row: ResourceRow,
  keyIds: string[],
  authorizationIds: string[],
): ResourceRep {
  const rep: ResourceRep = {
    uri: absoluteUri(authority, 'resources', row.id),
    keyUris: keyIds.map((id) => absoluteUri(authority, 'keys', id)),
    authorizationUris: authorizationIds.map((id) => absoluteUri(authority, 'authorizations', id)),
    createDate: formatDate(row.createdAt),
  };
  if (row.expiresAt !== null) rep.expirationDate = formatDate(row.expiresAt);
  return rep;
}
