import { KmsError, Limits, isPlainText } from '@openkms/protocol';
import type { VerifiedToken } from './principal.js';

/** Which claims of a verified token (or introspection answer) carry the user, roles and org. */
export interface ClaimMapping {
  userClaim: string;
  rolesClaim: string;
  orgClaim?: string;
}

/**
 * Maps the claims of a token that has already been verified to what the KMS needs. Only the user
 * id is mandatory; roles and org are best-effort because IdPs disagree on their shape.
 */
export function mapClaims(claims: Record<string, unknown>, mapping: ClaimMapping, expiresAt: number): VerifiedToken {
  const userId = claims[mapping.userClaim];
  if (userId === undefined || userId === null || userId === '') {
    throw new KmsError('CREDENTIAL_INVALID', 'credential has no user id');
  }
  if (!isId(userId)) throw new KmsError('CREDENTIAL_INVALID', 'credential user id invalid');

  const result: VerifiedToken = { userId, roles: parseRoles(claims[mapping.rolesClaim]), expiresAt };
  if (mapping.orgClaim !== undefined) {
    const org = claims[mapping.orgClaim];
    if (isId(org)) result.orgId = org;
  }
  return result;
}

/** Roles as an array of strings (Keycloak, Azure AD) or a space-separated string (scope-like). */
export function parseRoles(value: unknown): string[] {
  let roles: unknown[];
  if (Array.isArray(value)) roles = value;
  else if (typeof value === 'string') roles = value.split(/\s+/);
  else return [];
  // Non-string members are dropped rather than failing the token: a role we cannot read grants nothing.
  return roles.filter((r): r is string => typeof r === 'string' && r.length > 0 && isId(r));
}

/**
 * Ids end up in channel ownership, ACLs and the audit log: short, and plain text (no control
 * character, no lone surrogate, which storage would not keep as it was hashed).
 */
function isId(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= Limits.maxIdChars && isPlainText(value);
}
