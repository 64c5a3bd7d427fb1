import { KmsError } from '@openkms/protocol';
import { decodeJwt, importJWK } from 'jose';
import type { CryptoKey, JWK, JWTVerifyGetKey } from 'jose';
import { defaultOf } from '../config/options.js';
import { mapClaims, type ClaimMapping } from './claims.js';
import { createIntrospector, type Introspector } from './introspection.js';
import { createKeySource } from './jwks.js';
import { IDP_ALGORITHMS, looksLikeJwt, toKmsError, verifyJwt } from './jwt.js';
import type { IdentityConfig, TokenVerifier, VerifiedToken } from './principal.js';
import { ProviderError, type ProviderCall } from './provider.js';
import { TokenCache } from './token-cache.js';
import { CACHE_MAX_ENTRIES, MAX_CACHE_MS, MAX_TOKEN_BYTES, NO_EXP_CACHE_MS } from '../limits.js';

export interface TokenVerifierOptions {
  /** Directory of kms.json: `jwksFile` is relative to it. */
  baseDir: string;
  /** Clock in epoch ms (injectable so expiry is testable without sleeping). */
  now?: () => number;
  /** Public key of the built-in development issuer (`kms token`), when it is enabled. */
  devPublicJwk?: JWK;
  devIssuer?: string;
  devAudience?: string;
  /**
   * Told why the IdP could not be used (down, misconfigured), for the operator's log. The text
   * never contains a token or a secret. Clients only see 'identity provider unreachable/misconfigured'.
   * `call` says which call to the IdP failed (metrics count them by it).
   */
  onProviderError?: (detail: string, call: ProviderCall) => void;
}


const DEV_ALGORITHMS = ['PS256', 'RS256'];
/** Tokens of the development issuer are minted by dev-issuer.ts, whose layout is fixed. */
const DEV_CLAIMS: ClaimMapping = { userClaim: 'sub', rolesClaim: 'roles' };

interface Checked {
  token: VerifiedToken;
  /** Epoch ms until which the result may be reused without checking again. */
  cacheUntil: number;
}

interface DevIssuer {
  issuer: string;
  audience: string;
  alg: string;
  key: () => Promise<CryptoKey | Uint8Array>;
}

/**
 * Builds the access-token check of the KMS (OPERATING.md, "Identity in production").
 *
 * Routing: a bearer that looks like a JWT is verified locally — with the development issuer's key
 * when its (unverified) `iss` names that issuer, else against the IdP's JWKS; when no JWKS is
 * configured it goes to introspection. Anything else is an opaque token for introspection.
 * Routing on the unverified `iss` is safe: the chosen path then requires that very issuer.
 *
 * Failures are KmsError 401 with a short reason. When the IdP itself cannot be reached we still
 * answer 401 ('identity provider unreachable'): the protocol's 5xx codes describe this KMS or a
 * peer KMS failing, the client's remedy (get a working credential, retry later) is the one for
 * 401, and the distinct reason plus onProviderError tell the operator it was not the user's fault.
 *
 * Failed verifications are not cached. Caching them would turn a transient IdP outage into
 * minutes of refusals, and a token that just failed is cheap to refuse again locally (malformed,
 * wrong issuer, bad signature); the costly case — opaque tokens hammering introspection — is
 * damped by sharing one in-flight check between concurrent requests with the same token.
 */
export function createTokenVerifier(config: IdentityConfig, options: TokenVerifierOptions): TokenVerifier {
  const now = options.now ?? Date.now;
  const tolerance = config.clockToleranceSeconds ?? defaultOf('identity.clockToleranceSeconds');
  const toleranceMs = tolerance * 1000;
  const mapping = claimMapping(config);
  validate(config, tolerance);

  const dev = devIssuer(options, config);
  const cache = new TokenCache<VerifiedToken>(CACHE_MAX_ENTRIES);
  /**
   * Moves when the IdP's key set changes (a key rotated in or out): every result checked before is
   * dropped, since it may rest on a key the IdP no longer publishes, and a check that began before
   * is not cached when it ends.
   */
  let keySet = 0;
  const keys: JWTVerifyGetKey | undefined = createKeySource(config, options.baseDir, now, () => {
    keySet++;
    cache.clear();
  });
  const introspect: Introspector | undefined = config.introspection ? createIntrospector(config.introspection) : undefined;
  if (!dev && !keys && !introspect) {
    throw new Error('identity: no way to verify access tokens; configure identity.issuer with a JWKS source or introspection, or the development issuer');
  }

  const inFlight = new Map<string, Promise<VerifiedToken>>();

  function report(err: unknown): void {
    if (!(err instanceof ProviderError) || !options.onProviderError) return;
    try {
      options.onProviderError(err.message, err.call);
    } catch {
      // A failing logger must not change the answer to the client.
    }
  }

  function cacheUntil(expiresAt: number, at: number): number {
    // jose accepts a token until exp + tolerance; a cached result must not outlive that.
    return Math.min(expiresAt + toleranceMs, at + MAX_CACHE_MS);
  }

  async function checkJwt(bearer: string, at: number): Promise<Checked> {
    let iss: unknown;
    try {
      iss = decodeJwt(bearer).iss;
    } catch {
      throw new KmsError('CREDENTIAL_INVALID', 'credential invalid');
    }
    if (dev && iss === dev.issuer) {
      const claims = await verifyJwt(bearer, await dev.key(), {
        issuer: dev.issuer,
        audience: dev.audience,
        algorithms: [dev.alg],
        clockToleranceSeconds: tolerance,
        now: at,
      });
      const expiresAt = (claims.exp as number) * 1000;
      return { token: mapClaims(claims, DEV_CLAIMS, expiresAt), cacheUntil: cacheUntil(expiresAt, at) };
    }
    if (keys && config.issuer !== undefined && config.audience !== undefined) {
      // Refuse foreign issuers before touching the JWKS: they would only trigger key refetches.
      if (iss !== config.issuer) throw new KmsError('CREDENTIAL_INVALID', 'credential issuer not accepted');
      const claims = await verifyJwt(bearer, keys, {
        issuer: config.issuer,
        audience: config.audience,
        algorithms: IDP_ALGORITHMS,
        clockToleranceSeconds: tolerance,
        now: at,
      });
      const expiresAt = (claims.exp as number) * 1000;
      return { token: mapClaims(claims, mapping, expiresAt), cacheUntil: cacheUntil(expiresAt, at) };
    }
    if (introspect) return checkIntrospected(bearer, introspect, at);
    throw new KmsError('CREDENTIAL_INVALID', 'credential issuer not accepted');
  }

  async function checkIntrospected(bearer: string, ask: Introspector, at: number): Promise<Checked> {
    const answer = await ask(bearer);
    if (answer.active !== true) throw new KmsError('CREDENTIAL_INVALID', 'credential invalid');

    const { exp, nbf, iss, aud } = answer;
    if (exp !== undefined && !isNumericDate(exp)) throw new KmsError('CREDENTIAL_INVALID', 'credential invalid');
    if (nbf !== undefined && !isNumericDate(nbf)) throw new KmsError('CREDENTIAL_INVALID', 'credential invalid');
    // Same tolerance rules as jose applies to JWTs.
    if (exp !== undefined && exp * 1000 <= at - toleranceMs) throw new KmsError('CREDENTIAL_INVALID', 'credential expired');
    if (nbf !== undefined && nbf * 1000 > at + toleranceMs) throw new KmsError('CREDENTIAL_INVALID', 'credential not yet valid');
    // `iss` and `aud` are optional in RFC 7662; when the IdP states them they must fit.
    if (iss !== undefined && config.issuer !== undefined && iss !== config.issuer) {
      throw new KmsError('CREDENTIAL_INVALID', 'credential issuer not accepted');
    }
    if (aud !== undefined && !audienceIncludes(aud, config.audience)) {
      throw new KmsError('CREDENTIAL_INVALID', 'credential audience not accepted');
    }

    if (exp === undefined) {
      // No stated lifetime: accept for a short while, then ask the IdP again (it may revoke).
      const expiresAt = at + NO_EXP_CACHE_MS;
      return { token: mapClaims(answer, mapping, expiresAt), cacheUntil: expiresAt };
    }
    const expiresAt = exp * 1000;
    return { token: mapClaims(answer, mapping, expiresAt), cacheUntil: cacheUntil(expiresAt, at) };
  }

  async function checkFresh(bearer: string, key: string): Promise<VerifiedToken> {
    const at = now();
    const set = keySet;
    let checked: Checked;
    try {
      if (looksLikeJwt(bearer)) checked = await checkJwt(bearer, at);
      else if (introspect) checked = await checkIntrospected(bearer, introspect, at);
      else throw new KmsError('CREDENTIAL_INVALID', 'credential invalid');
    } catch (err) {
      report(err);
      throw toKmsError(err);
    }
    if (set === keySet) cache.set(key, checked.token, checked.cacheUntil, at);
    return checked.token;
  }

  return {
    async verify(bearer: string): Promise<VerifiedToken> {
      if (typeof bearer !== 'string' || bearer.length === 0) throw new KmsError('CREDENTIAL_INVALID', 'credential missing');
      if (bearer.length > MAX_TOKEN_BYTES || Buffer.byteLength(bearer, 'utf8') > MAX_TOKEN_BYTES) {
        throw new KmsError('CREDENTIAL_INVALID', 'credential too large');
      }
      const key = TokenCache.keyOf(bearer);
      const cached = cache.get(key, now());
      if (cached) return copy(cached);

      let pending = inFlight.get(key);
      if (!pending) {
        pending = checkFresh(bearer, key).finally(() => inFlight.delete(key));
        inFlight.set(key, pending);
      }
      return copy(await pending);
    },
    cached(key: string): VerifiedToken | undefined {
      const cached = cache.get(key, now());
      return cached && copy(cached);
    },
    close(): void {
      cache.clear();
      inFlight.clear();
    },
  };
}

/** Callers get their own copy: a caller mutating roles must not change what the cache holds. */
function copy(token: VerifiedToken): VerifiedToken {
  return { ...token, roles: [...token.roles] };
}

function isNumericDate(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

function audienceIncludes(aud: unknown, audience: string | undefined): boolean {
  if (audience === undefined) return false;
  if (typeof aud === 'string') return aud === audience;
  return Array.isArray(aud) && aud.includes(audience);
}

function claimMapping(config: IdentityConfig): ClaimMapping {
  for (const name of ['userClaim', 'rolesClaim', 'orgClaim'] as const) {
    const value = config[name];
    if (value !== undefined && (typeof value !== 'string' || value.length === 0)) {
      throw new Error(`identity: ${name} must be a non-empty string`);
    }
  }
  const mapping: ClaimMapping = { userClaim: config.userClaim ?? defaultOf('identity.userClaim'), rolesClaim: config.rolesClaim ?? defaultOf('identity.rolesClaim') };
  if (config.orgClaim !== undefined) mapping.orgClaim = config.orgClaim;
  return mapping;
}

/** Config mistakes fail at startup with a message naming the setting, never at the first request. */
function validate(config: IdentityConfig, tolerance: number): void {
  if (typeof tolerance !== 'number' || !Number.isFinite(tolerance) || tolerance < 0) {
    throw new Error('identity: clockToleranceSeconds must be a non-negative number');
  }
  const sources = [
    config.jwksFile !== undefined && 'jwksFile',
    config.jwksUri !== undefined && 'jwksUri',
    config.discovery === true && 'discovery',
  ].filter((s): s is string => typeof s === 'string');
  if (sources.length > 1) {
    throw new Error(`identity: configure only one of jwksFile, jwksUri, discovery (found ${sources.join(', ')})`);
  }
  const usesIdp = config.issuer !== undefined || sources.length > 0 || config.introspection !== undefined;
  if (usesIdp && (typeof config.audience !== 'string' || config.audience.length === 0)) {
    // Without an audience, a token the IdP minted for any other service would open the KMS (draft 4.2).
    throw new Error('identity: audience is required when an issuer, JWKS or introspection is configured');
  }
  if (sources.length > 0 && (typeof config.issuer !== 'string' || config.issuer.length === 0)) {
    throw new Error(`identity: issuer is required with ${sources[0]}`);
  }
  if (config.issuer !== undefined && sources.length === 0 && config.introspection === undefined) {
    throw new Error('identity: issuer is set but no jwksFile, jwksUri, discovery or introspection to verify its tokens');
  }
}

function devIssuer(options: TokenVerifierOptions, config: IdentityConfig): DevIssuer | undefined {
  const jwk = options.devPublicJwk;
  if (jwk === undefined) return undefined;
  const { devIssuer: issuer, devAudience: audience } = options;
  if (!issuer || !audience) throw new Error('identity: the development issuer needs devIssuer and devAudience');
  if (issuer === config.issuer) throw new Error('identity: the development issuer must differ from identity.issuer');
  if (jwk.kty !== 'RSA' || typeof jwk.n !== 'string' || typeof jwk.e !== 'string') {
    throw new Error('identity: the development issuer key must be an RSA public JWK');
  }
  const alg = jwk.alg ?? 'PS256';
  if (!DEV_ALGORITHMS.includes(alg)) throw new Error('identity: the development issuer key must be PS256 or RS256');
  // Only the public members: should a private JWK be passed, `d` is never imported or kept here.
  const publicJwk: JWK = { kty: 'RSA', n: jwk.n, e: jwk.e };
  let imported: Promise<CryptoKey | Uint8Array> | undefined;
  return {
    issuer,
    audience,
    alg,
    key: () => {
      imported ??= importJWK(publicJwk, alg).catch((err: unknown) => {
        imported = undefined;
        throw err;
      });
      return imported;
    },
  };
}
