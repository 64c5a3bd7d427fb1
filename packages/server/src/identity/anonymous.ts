/**
 * Bearers of anonymous authorizations (draft 4.4.2): JWTs signed PS256 by the KMS static key,
 * `iss` = kms://<authority>, `sub` = the authorization URI, `resourceUri`, `exp`. A bearer only
 * stands for its authorization: the authorization must still exist when it is presented, so
 * deleting the authorization revokes it.
 *
 * What a bearer's signature and claims say cannot change, so a bearer is verified once and its
 * claims are kept (by the token's digest, bounded) until its `exp`, to the millisecond jose would
 * first refuse it; whether its authorization and resource still exist is the authenticator's to
 * ask on every use (identity/authenticator.ts).
 */
import { SignJWT, decodeJwt, jwtVerify, type CryptoKey, type KeyObject } from 'jose';
import { KmsError, absoluteUri, objectRef } from '@openkms/protocol';
import { CACHE_MAX_ENTRIES } from '../limits.js';
import { TokenCache } from './token-cache.js';

export interface AnonymousClaims {
  authorizationId: string;
  resourceId: string;
  /** Epoch ms. */
  expiresAt: number;
}

export class AnonymousBearers {
  readonly issuer: string;
  private readonly verified = new TokenCache<AnonymousClaims>(CACHE_MAX_ENTRIES);

  constructor(
    private readonly authority: string,
    private readonly privateKey: KeyObject | CryptoKey,
    private readonly publicKey: KeyObject | CryptoKey,
    private readonly now: () => number,
  ) {
    this.issuer = `kms://${authority}`;
  }

  /** True when `bearer` claims to come from this KMS (it is then never sent to the IdP). */
  isOurs(bearer: string): boolean {
    try {
      return decodeJwt(bearer).iss === this.issuer;
    } catch {
      return false;
    }
  }

  async issue(claims: AnonymousClaims): Promise<string> {
    return new SignJWT({ resourceUri: absoluteUri(this.authority, 'resources', claims.resourceId) })
      .setProtectedHeader({ alg: 'PS256', kid: this.issuer, typ: 'JWT' })
      .setIssuer(this.issuer)
      .setSubject(absoluteUri(this.authority, 'authorizations', claims.authorizationId))
      .setIssuedAt(Math.floor(this.now() / 1000))
      // Rounded up: the resource itself (checked on every use) bounds the bearer to the millisecond.
      .setExpirationTime(Math.ceil(claims.expiresAt / 1000))
      .sign(this.privateKey);
  }

  /** The claims of the bearer whose `TokenCache.keyOf` is `key`, verified before and not expired; no I/O. */
  cached(key: string): AnonymousClaims | undefined {
    return this.verified.get(key, this.now());
  }

  /** Verifies a bearer (signature, issuer, `sub`, `exp`); `key`, its digest, keeps the claims for `cached`. */
  async verify(bearer: string, key = TokenCache.keyOf(bearer)): Promise<AnonymousClaims> {
    const at = this.now();
    const claims = await this.check(bearer, at);
    // jose refuses from the first second whose start is not before exp (exp <= floor(now / 1000)).
    this.verified.set(key, claims, Math.ceil(claims.expiresAt / 1000) * 1000, at);
    return claims;
  }

  private async check(bearer: string, at: number): Promise<AnonymousClaims> {
    try {
      const { payload } = await jwtVerify(bearer, this.publicKey, {
        algorithms: ['PS256'],
        issuer: this.issuer,
        currentDate: new Date(at),
        requiredClaims: ['sub', 'exp'],
      });
      const auth = objectRef(String(payload.sub), 'authorizations', this.authority);
      const resource = objectRef(String(payload.resourceUri), 'resources', this.authority);
      if (!auth || !resource || auth.authority !== this.authority || resource.authority !== this.authority) throw new Error('claims');
      return Object.freeze({ authorizationId: auth.id, resourceId: resource.id, expiresAt: payload.exp! * 1000 });
    } catch {
      throw KmsError.unauthorized('anonymous bearer invalid or expired');
    }
  }
}
