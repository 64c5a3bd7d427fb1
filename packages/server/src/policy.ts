/**
 * Who may do what (PROTOCOL.md §5), as plain functions over plain data and the operation table.
 * The one piece that needs storage, walking KRO authIds, takes the loader as an argument so it
 * stays testable without one.
 */
import { operation, type Caller, type OperationName } from '@openkms/protocol';
import { kroOf, walkKros } from './authorization-graph.js';
import type { PeerPrincipal, Principal } from './identity/principal.js';
import { domainOf } from './identity/users.js';
import type { AuthorizationRow, CmkRow, KeyRow } from './model.js';

export type AuthorizationLoader = (resourceId: string) => Promise<AuthorizationRow[]>;

/**
 * True when `principal` is authorized on the resource: directly by its authId, or through a KRO
 * authId naming another resource of this KMS on which it is authorized (transitively, cycles
 * ignored, within the bounds of the authorization-graph walk: past them, not authorized). An
 * anonymous principal is authorized on its own resource.
 */
export async function isAuthorized(
  principal: Principal,
  resourceId: string,
  load: AuthorizationLoader,
  selfResourcePrefix: string,
): Promise<boolean> {
  if (principal.kind === 'anonymous') return principal.resourceId === resourceId;
  if (principal.kind !== 'user') return false;
  const end = await walkKros([resourceId], async (id) => {
    const rows = await load(id);
    if (rows.some((auth) => auth.authId === principal.id)) return 'stop';
    return rows.flatMap((auth) => kroOf(auth.authId, selfResourcePrefix) ?? []);
  });
  return end === 'stopped';
}

/**
 * An unbound key is readable (and bindable) only by its creator, from the creating client; its
 * creator's compliance officer (onBehalfOf) reads it from any client (PROTOCOL.md §4 "Compliance").
 */
export function ownsUnboundKey(principal: Principal, key: KeyRow, clientId: string): boolean {
  return principal.kind === 'user' && key.userId === principal.id && (key.clientId === clientId || principal.agent !== undefined);
}

export const Roles = { kmsAdmin: 'kmsAdmin', orgAgent: 'orgAgent' } as const;

/**
 * Administrative API (draft, "Administrative API"): kmsAdmin acts on any CMK; orgAgent only on
 * CMKs assigned to its own organisation (never on unassigned ones).
 */
export function mayAdministerCmks(principal: Principal, assignedOrgId: string | null): boolean {
  if (principal.kind !== 'user') return false;
  if (principal.roles.includes(Roles.kmsAdmin)) return true;
  return principal.roles.includes(Roles.orgAgent) && assignedOrgId !== null && assignedOrgId === principal.orgId;
}

/**
 * Compliance access (PROTOCOL.md §4): whether `agent` may read as the user `userId` (a user of a
 * domain this KMS serves, `domains`). It must hold `orgAgent` and be of the user's organisation.
 * A user id carries only its domain, and a user's organisation is its domain unless its own token
 * says otherwise, so the user is of the agent's organisation when its domain is the agent's
 * organisation id (by default the agent's own domain) — or, when the IdP names organisations by
 * ids that are no domain of this KMS (identity.orgClaim, e.g. a UUID), the agent's own domain.
 */
export function mayActFor(agent: Principal, userId: string, domains: readonly string[]): boolean {
  if (agent.kind !== 'user' || !agent.roles.includes(Roles.orgAgent)) return false;
  const organisation = domains.includes(agent.orgId) ? agent.orgId : agent.domain;
  return domainOf(userId) === organisation;
}

/** The CMKs a principal may list: all for kmsAdmin, its own organisation's for orgAgent. */
export function visibleCmks(principal: Principal, cmks: CmkRow[]): CmkRow[] {
  return cmks.filter((c) => mayAdministerCmks(principal, c.assignedOrgId));
}

/** Who is calling, in the operation table's terms (PROTOCOL.md §5–6). */
export function callerOf(principal: Principal, via?: PeerPrincipal): Caller | undefined {
  if (via) return principal.kind === 'user' ? 'peerUser' : principal.kind === 'peer' ? 'peer' : undefined;
  // A peer principal only ever arrives over its own channel (`via`).
  if (principal.kind === 'user' && principal.agent !== undefined) return 'agent';
  return principal.kind === 'peer' ? undefined : principal.kind;
}

/**
 * Whether `principal` may use an operation at all, as the operation table names its callers (the
 * operation then validates the request and applies its own checks, roles included). `via` is the
 * peer KMS the request came through: a peer channel may only do what §6 lists.
 */
export function mayUseOperation(principal: Principal, op: OperationName, via?: PeerPrincipal): boolean {
  const caller = callerOf(principal, via);
  const spec = operation(op); // undefined only for a name that bypassed the type (fail closed)
  return caller !== undefined && spec !== undefined && (spec.callers as readonly Caller[]).includes(caller);
}

/** Whether a user holds one of the roles the operation table names for an operation. */
export function hasRoleFor(principal: Principal, op: OperationName): boolean {
  return principal.kind === 'user' && operation(op).roles.some((role) => principal.roles.includes(role));
}
