/**
 * Bearers of anonymous authorizations (draft 4.4.2): JWTs signed PS256 by the KMS static key,
 * `iss` = kms://<authority>, `sub` = the authorization URI, `resourceUri`, `exp`. A bearer only
 * stands for its authorization: the authorization must still exist when it is presented, so
 * deleting the authorization revokes it.
 */
import { SignJWT, decodeJwt, jwtVerify, type CryptoKey, type KeyObject } from 'jose';
import { KmsError, absoluteUri, objectRef } from '@openkms/protocol';

export interface AnonymousClaims {
  authorizationId: string;
  resourceId: string;
  /** Epoch ms. */
  expiresAt: number;
}

export class AnonymousBearers {
  readonly issuer: string;

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

  async verify(bearer: string): Promise<AnonymousClaims> {
    try {
      const { payload } = await jwtVerify(bearer, this.publicKey, {
        algorithms: ['PS256'],
        issuer: this.issuer,
        currentDate: new Date(this.now()),
        requiredClaims: ['sub', 'exp'],
      });
      const auth = objectRef(String(payload.sub), 'authorizations', this.authority);
      const resource = objectRef(String(payload.resourceUri), 'resources', this.authority);
      if (!auth || !resource || auth.authority !== this.authority || resource.authority !== this.authority) throw new Error('claims');
      return { authorizationId: auth.id, resourceId: resource.id, expiresAt: payload.exp! * 1000 };
    } catch {
      throw KmsError.unauthorized('anonymous bearer invalid or expired');
    }
  }
}
