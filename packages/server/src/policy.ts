/**
 * Who may do what (PROTOCOL.md §5), as plain functions over plain data. The one piece that needs
 * storage, walking KRO authIds, takes the loader as an argument so it stays testable without one.
 */
import type { PeerPrincipal, Principal } from './identity/principal.js';
import type { AuthorizationRow, CmkRow, KeyRow } from './model.js';

/** How deep KRO authIds are followed (PROTOCOL.md §1). */
export const MAX_KRO_DEPTH = 8;
/**
 * How many resources one check may visit. Depth alone does not bound the work: a user could link
 * thousands of KROs at every level. Past this the answer is "not authorized" (fail closed).
 */
export const MAX_KRO_VISITS = 256;

export type AuthorizationLoader = (resourceId: string) => Promise<AuthorizationRow[]>;

/**
 * True when `principal` is authorized on the resource: directly by its authId, or through a KRO
 * authId naming another resource of this KMS on which it is authorized (transitively, cycles
 * ignored, at most MAX_KRO_DEPTH hops and MAX_KRO_VISITS resources). An anonymous principal is
 * authorized on its own resource.
 */
export async function isAuthorized(
  principal: Principal,
  resourceId: string,
  load: AuthorizationLoader,
  selfResourcePrefix: string,
): Promise<boolean> {
  if (principal.kind === 'anonymous') return principal.resourceId === resourceId;
  if (principal.kind !== 'user') return false;
  const seen = new Set<string>([resourceId]);
  let frontier = [resourceId];
  let visits = 0;
  for (let depth = 0; depth <= MAX_KRO_DEPTH && frontier.length > 0; depth++) {
    const next: string[] = [];
    for (const id of frontier) {
      if (++visits > MAX_KRO_VISITS) return false;
      for (const auth of await load(id)) {
        if (auth.authId === principal.id) return true;
        if (auth.authId?.startsWith(selfResourcePrefix)) {
          const kro = auth.authId.slice(selfResourcePrefix.length);
          if (!seen.has(kro)) {
            seen.add(kro);
            next.push(kro);
          }
        }
      }
    }
    frontier = next;
  }
  return false;
}

/** An unbound key is readable (and bindable) only by its creator, from the creating client. */
export function ownsUnboundKey(principal: Principal, key: KeyRow, clientId: string): boolean {
  return principal.kind === 'user' && key.userId === principal.id && key.clientId === clientId;
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

/** The CMKs a principal may list: all for kmsAdmin, its own organisation's for orgAgent. */
export function visibleCmks(principal: Principal, cmks: CmkRow[]): CmkRow[] {
  return cmks.filter((c) => mayAdministerCmks(principal, c.assignedOrgId));
}

/** What an anonymous bearer may do: read its resource's keys, ping, and close its channel. */
export const ANONYMOUS_OPERATIONS: ReadonlySet<string> = new Set([
  'retrieveKey',
  'retrieveResourceKeys',
  'ping',
  'deleteEphemeralKey',
]);

/**
 * The federated operations (PROTOCOL.md §6): what a peer KMS may do for one of its users here,
 * and, the same list seen from the other side, what a user may ask of this KMS about a peer's
 * objects (reads, and authorization management that is forwarded to the peer).
 */
export const PEER_USER_OPERATIONS: ReadonlySet<string> = new Set([
  'retrieveKey',
  'retrieveResourceKeys',
  'retrieveAuthorizations',
  'createAuthorizations',
  'deleteAuthorization',
  'deleteAuthorizationByAuthId',
  'bulkDeleteAuthorizations',
]);

/** What a peer KMS may do for itself: keep its channel, push invalidations. */
export const PEER_OPERATIONS: ReadonlySet<string> = new Set(['ping', 'deleteEphemeralKey', 'receiveInvalidations']);

/**
 * Whether `principal` may use an operation at all (the operation then applies its own checks).
 * `via` is the peer KMS the request came through: a peer channel may only do what §6 lists.
 */
export function mayUseOperation(principal: Principal, op: string, via?: PeerPrincipal): boolean {
  if (via) return principal.kind === 'user' ? PEER_USER_OPERATIONS.has(op) : PEER_OPERATIONS.has(op);
  if (principal.kind === 'anonymous') return ANONYMOUS_OPERATIONS.has(op);
  return principal.kind === 'user';
}
