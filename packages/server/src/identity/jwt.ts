import { KmsError } from '@openkms/protocol';
import { errors, jwtVerify } from 'jose';
import type { JWTPayload, JWTVerifyGetKey, JWTVerifyOptions, KeyObject, CryptoKey } from 'jose';
import { ProviderError } from './provider.js';

/**
 * Signature algorithms accepted from an IdP. Never `none`, and never HS*: with a symmetric
 * algorithm anyone holding the *public* key (published in the JWKS) could mint tokens.
 */
export const IDP_ALGORITHMS = ['RS256', 'PS256', 'ES256', 'EdDSA'] as const;

/** Three base64url segments, as in a compact JWS (the signature of an `alg: none` token is empty). */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

export function looksLikeJwt(token: string): boolean {
  return COMPACT_JWS.test(token);
}

export interface JwtCheck {
  issuer: string;
  audience: string;
  algorithms: readonly string[];
  clockToleranceSeconds: number;
  now: number;
}

/**
 * jose's jwtVerify with our policy: issuer, audience, allowed algorithms, `exp` required, `nbf`
 * honoured, the injected clock. Returns the verified claims or throws (jose or provider errors;
 * see toKmsError).
 */
export async function verifyJwt(
  token: string,
  key: JWTVerifyGetKey | CryptoKey | KeyObject | Uint8Array,
  check: JwtCheck,
): Promise<JWTPayload> {
  const options: JWTVerifyOptions = {
    issuer: check.issuer,
    audience: check.audience,
    algorithms: [...check.algorithms],
    requiredClaims: ['exp'],
    clockTolerance: check.clockToleranceSeconds,
    currentDate: new Date(check.now),
  };
  try {
    // The two calls differ only in the key's type; TypeScript needs them apart to pick an overload.
    return typeof key === 'function'
      ? (await jwtVerify(token, key, options)).payload
      : (await jwtVerify(token, key, options)).payload;
  } catch (err) {
    // An IdP may publish several keys a token could match (no `kid`, e.g. during rotation); jose
    // then hands us the candidates to try in turn.
    if (err instanceof errors.JWKSMultipleMatchingKeys) return tryCandidates(token, err, options);
    throw err;
  }
}

async function tryCandidates(
  token: string,
  candidates: errors.JWKSMultipleMatchingKeys,
  options: JWTVerifyOptions,
): Promise<JWTPayload> {
  for await (const key of candidates) {
    try {
      return (await jwtVerify(token, key, options)).payload;
    } catch (err) {
      if (!(err instanceof errors.JWSSignatureVerificationFailed)) throw err;
    }
  }
  throw new errors.JWSSignatureVerificationFailed();
}

/**
 * One place that turns a failed check into what the client sees: always a 401 with a short,
 * fixed reason — never the token, a claim value or key material. Unexpected errors also become
 * 401 'credential invalid': an authentication check that cannot complete must deny.
 */
export function toKmsError(err: unknown): KmsError {
  if (err instanceof KmsError) return err;
  if (err instanceof ProviderError) return new KmsError('CREDENTIAL_INVALID', err.reason);
  if (err instanceof errors.JWTExpired) return new KmsError('CREDENTIAL_INVALID', 'credential expired');
  if (err instanceof errors.JWTClaimValidationFailed) {
    switch (err.claim) {
      case 'aud':
        return new KmsError('CREDENTIAL_INVALID', 'credential audience not accepted');
      case 'iss':
        return new KmsError('CREDENTIAL_INVALID', 'credential issuer not accepted');
      case 'nbf':
        return new KmsError('CREDENTIAL_INVALID', 'credential not yet valid');
      case 'exp':
        return new KmsError('CREDENTIAL_INVALID', err.reason === 'missing' ? 'credential has no expiry' : 'credential invalid');
      default:
        return new KmsError('CREDENTIAL_INVALID', 'credential invalid');
    }
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return new KmsError('CREDENTIAL_INVALID', 'credential algorithm not accepted');
  return new KmsError('CREDENTIAL_INVALID', 'credential invalid');
}
