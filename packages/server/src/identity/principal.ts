/**
 * Who a request speaks for. Designed for federation from the start: a principal is a user of one
 * of this KMS's domains, an anonymous authorization (a KMS-issued bearer), or a peer KMS.
 */
export interface UserPrincipal {
  kind: 'user';
  /** `local@domain`, lower-cased domain. */
  id: string;
  domain: string;
  roles: readonly string[];
  /** The organisation for admin (CMK) operations; the user's domain unless the IdP says otherwise. */
  orgId: string;
  /** When the credential that proved it stops being valid (epoch ms). */
  expiresAt: number;
  /**
   * Compliance access (PROTOCOL.md §4, `credential.onBehalfOf`): the `orgAgent` whose bearer this
   * request carried, reading as this user. The request is evaluated as the user; the operation
   * table lets it read only (caller `agent`); the agent owns the channel and is audited as the
   * principal, the user as onBehalfOf.
   */
  agent?: string;
}

export interface AnonymousPrincipal {
  kind: 'anonymous';
  /** Absolute URI of the anonymous authorization the bearer stands for. */
  authorizationUri: string;
  authorizationId: string;
  resourceId: string;
  expiresAt: number;
}

export interface PeerPrincipal {
  kind: 'peer';
  /** The peer KMS's authority, e.g. `kms.b.example`. */
  authority: string;
  domains: readonly string[];
  expiresAt: number;
}

export type Principal = UserPrincipal | AnonymousPrincipal | PeerPrincipal;

/** The stable identifier recorded as a channel's owner and in the audit log. */
export function principalId(p: Principal): string {
  switch (p.kind) {
    case 'user':
      return p.id;
    case 'anonymous':
      return p.authorizationUri;
    case 'peer':
      return `kms://${p.authority}`;
  }
}

/**
 * Who proved itself by the request's credential: the owner of the channel it may use and the
 * audited principal. The same as principalId() except under compliance access, where it is the agent.
 */
export function credentialHolder(p: Principal): string {
  return p.kind === 'user' && p.agent !== undefined ? p.agent : principalId(p);
}

/** The audit record's two identities: who proved itself, and the user it acted for (or null). */
export function auditIdentity(p: Principal): { principal: string; onBehalfOf: string | null } {
  return { principal: credentialHolder(p), onBehalfOf: p.kind === 'user' && p.agent !== undefined ? p.id : null };
}

/** What an access-token check yields, before the KMS maps it to a principal. */
export interface VerifiedToken {
  /** The configured user-id claim's value (e.g. `sub` or `email`). */
  userId: string;
  roles: string[];
  orgId?: string;
  /** Epoch ms after which the token must not be accepted. */
  expiresAt: number;
}

export interface TokenVerifier {
  /** Checks a bearer access token. Throws KmsError 401 when it is missing, invalid or expired. */
  verify(bearer: string): Promise<VerifiedToken>;
  /**
   * What an earlier `verify` of the bearer whose `TokenCache.keyOf` is `key` found, while it may
   * still be used without checking again; no I/O. Lets the authenticator take a known bearer by
   * one digest, before deciding whose it is (identity/authenticator.ts).
   */
  cached?(key: string): VerifiedToken | undefined;
  close?(): void;
}

/** The `identity` section of kms.json (OPERATING.md, "Identity in production"). */
export interface IdentityConfig {
  /** Expected `iss` of access tokens from the organisation's IdP. */
  issuer?: string;
  /** A KMS-only audience: tokens minted for other services are refused (draft 4.2). */
  audience?: string;
  /** JWKS by URL. */
  jwksUri?: string;
  /** JWKS from a file (path relative to kms.json). */
  jwksFile?: string;
  /** Find `jwks_uri` through `<issuer>/.well-known/openid-configuration`. */
  discovery?: boolean;
  /** RFC 7662 introspection, for opaque tokens. */
  introspection?: { endpoint: string; clientId: string; clientSecret: string };
  /** Claim holding the user id; default `sub`. */
  userClaim?: string;
  /** Claim holding the roles (array or space-separated string); default `roles`. */
  rolesClaim?: string;
  /** Claim holding the organisation id for admin operations; default: the user's domain. */
  orgClaim?: string;
  /** Allowed clock skew in seconds; default 30. */
  clockToleranceSeconds?: number;
  /** The built-in development issuer behind `kms token`. */
  dev?: { enabled: boolean; keyFile: string };
}
