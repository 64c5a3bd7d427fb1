/**
 * Credential -> Principal, on every request (PROTOCOL.md §4 "Credentials"). The principal comes
 * from the bearer alone; `credential.userId` is ignored. Bearers issued by this KMS for anonymous
 * authorizations are recognised by their issuer and checked locally; everything else goes to the
 * organisation's IdP through the TokenVerifier (which caches per token).
 *
 * A bearer seen before costs one digest: the verifier's and the anonymous bearers' results are
 * both kept by it (identity/token-cache.ts), so a known bearer is neither decoded to learn whose
 * it is nor verified again. An anonymous one still has its authorization and resource read at
 * every use: deleting either revokes it at once.
 */
import { KmsError, type Credential } from '@openkms/protocol';
import type { Store } from '../store/store.js';
import type { AnonymousBearers, AnonymousClaims } from './anonymous.js';
import { Roles, mayActFor } from '../policy.js';
import type { Principal, TokenVerifier, VerifiedToken } from './principal.js';
import { TokenCache } from './token-cache.js';
import { domainOf, isUserId, normalizeUserId } from './users.js';

export class Authenticator {
  constructor(
    private readonly domains: readonly string[],
    private readonly verifier: TokenVerifier,
    private readonly anonymous: AnonymousBearers,
    private readonly store: Store,
    private readonly now: () => number,
  ) {}

  async authenticate(credential: Credential | undefined): Promise<Principal> {
    const bearer = credential?.bearer;
    if (!bearer) throw KmsError.unauthorized('credential.bearer missing');
    const key = TokenCache.keyOf(bearer);
    const known = this.verifier.cached?.(key);
    if (known) return this.userPrincipal(known);
    const claims = this.anonymous.cached(key);
    if (claims) return this.anonymousPrincipal(claims);
    if (this.anonymous.isOurs(bearer)) return this.anonymousPrincipal(await this.anonymous.verify(bearer, key));
    return this.userPrincipal(await this.verifier.verify(bearer));
  }

  private userPrincipal(token: VerifiedToken): Principal {
    const id = normalizeUserId(token.userId, this.domains[0]!);
    if (!isUserId(id)) throw KmsError.unauthorized('credential names no valid user');
    const domain = domainOf(id);
    if (!this.domains.includes(domain)) throw KmsError.forbidden(`this KMS does not serve domain ${domain}`);
    return { kind: 'user', id, domain, roles: token.roles, orgId: token.orgId ?? domain, expiresAt: token.expiresAt };
  }

  /**
   * Compliance access (PROTOCOL.md §4, `credential.onBehalfOf`): an `orgAgent` naming a user of
   * its organisation reads as that user. Naming itself is its own access. The user's roles are not
   * the agent's: none.
   */
  actingFor(agent: Principal, onBehalfOf: string): Principal {
    if (agent.kind !== 'user') throw KmsError.forbidden('credential.onBehalfOf needs the orgAgent role');
    const id = normalizeUserId(onBehalfOf, this.domains[0]!);
    if (id === agent.id) return agent;
    if (!isUserId(id)) throw KmsError.badRequest('invalid field credential.onBehalfOf: not a user id');
    if (!agent.roles.includes(Roles.orgAgent)) throw KmsError.forbidden('credential.onBehalfOf needs the orgAgent role');
    if (!this.domains.includes(domainOf(id)) || !mayActFor(agent, id, this.domains)) throw KmsError.forbidden(`credential.onBehalfOf ${id} is not a user of your organisation`);
    return { kind: 'user', id, domain: domainOf(id), roles: [], orgId: domainOf(id), expiresAt: agent.expiresAt, agent: agent.id };
  }

  private async anonymousPrincipal(claims: AnonymousClaims): Promise<Principal> {
    const auth = await this.store.getAuthorization(claims.authorizationId);
    if (!auth || auth.resourceId !== claims.resourceId || auth.authId !== null) {
      throw KmsError.unauthorized('anonymous authorization revoked');
    }
    const resource = await this.store.getResource(claims.resourceId);
    if (!resource || (resource.expiresAt !== null && resource.expiresAt <= this.now())) {
      throw KmsError.unauthorized('anonymous authorization expired');
    }
    return {
      kind: 'anonymous',
      authorizationUri: `${this.anonymous.issuer}/authorizations/${auth.id}`,
      authorizationId: auth.id,
      resourceId: auth.resourceId,
      expiresAt: claims.expiresAt,
    };
  }
}
