import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { createLocalJWKSet, createRemoteJWKSet, errors } from 'jose';
import type { JWTVerifyGetKey } from 'jose';
import type { IdentityConfig } from './principal.js';
import { ProviderError, isRecord, providerFetch, providerUrl } from './provider.js';
import { DISCOVERY_RETRY_MS } from '../limits.js';


/**
 * Where the IdP's signing keys come from: a file, a URL, or OIDC discovery. Returns undefined when
 * none is configured (opaque tokens only, via introspection). `onChange` is told when a remote set,
 * re-read (jose re-reads it when it is 10 minutes old, or for a kid it does not know), differs
 * from the one read before: a key was rotated in or out, so what was verified before may rest on a
 * key the IdP no longer publishes (tokens.ts then drops its results).
 *
 * Config mistakes (unreadable file, bad URL) throw a plain Error at build time, so the server
 * refuses to start rather than refusing every user. Anything that can go wrong at run time — the
 * IdP being down or answering nonsense — is deferred to the first verification and retried later:
 * an IdP outage must never crash the KMS.
 */
export function createKeySource(config: IdentityConfig, baseDir: string, now: () => number, onChange: () => void = () => {}): JWTVerifyGetKey | undefined {
  if (config.jwksFile !== undefined) return fileKeySource(resolve(baseDir, config.jwksFile));
  if (config.jwksUri !== undefined) {
    return guardRemote(createRemoteJWKSet(providerUrl(config.jwksUri, 'jwksUri')), onChange);
  }
  if (config.discovery === true && config.issuer !== undefined) return discoveryKeySource(config.issuer, now, onChange);
  return undefined;
}

function fileKeySource(path: string): JWTVerifyGetKey {
  let jwks: unknown;
  try {
    jwks = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    const why = err instanceof SyntaxError ? 'is not valid JSON' : 'cannot be read';
    throw new Error(`identity: jwksFile ${path} ${why}`);
  }
  try {
    // createLocalJWKSet validates the {keys:[...]} shape now; a bad key file fails at startup.
    return createLocalJWKSet(jwks as Parameters<typeof createLocalJWKSet>[0]);
  } catch {
    throw new Error(`identity: jwksFile ${path} is not a JSON Web Key Set ({"keys": [...]})`);
  }
}

/**
 * Errors a JWKS lookup raises because of the token (no key with its kid/alg, several candidates);
 * jose's JWKSMultipleMatchingKeys carries the candidates, so it must reach the caller untouched.
 * Everything else from a remote set is the IdP's fault.
 */
function isTokenKeyError(err: unknown): boolean {
  return (
    err instanceof errors.JWKSNoMatchingKey ||
    err instanceof errors.JWKSMultipleMatchingKeys ||
    err instanceof errors.JOSENotSupported
  );
}

/** A remote key set whose failures are the IdP's (ProviderError) and whose changes are told (exported for its test). */
export function guardRemote(jwks: ReturnType<typeof createRemoteJWKSet>, onChange: () => void): JWTVerifyGetKey {
  // The set last used, as JSON text: compared only after a lookup, which is only made for a token
  // not verified before (a few per token lifetime), so its cost is not per request.
  let seen: string | undefined;
  const compare = (): void => {
    const set = jwks.jwks();
    if (set === undefined) return;
    const text = JSON.stringify(set);
    if (seen !== undefined && text !== seen) onChange();
    seen = text;
  };
  return async (header, token) => {
    try {
      return await jwks(header, token);
    } catch (err) {
      if (isTokenKeyError(err) || err instanceof ProviderError) throw err;
      const detail = err instanceof errors.JWKSTimeout ? 'timed out' : 'failed or returned an invalid key set';
      throw new ProviderError('identity provider unreachable', 'jwks', detail);
    } finally {
      compare();
    }
  };
}

/**
 * OIDC discovery (OpenID Connect Discovery 1.0 §4): fetched lazily on first use. Its `issuer` must
 * equal ours exactly (§4.3), otherwise a document served at our issuer's URL could point us at
 * someone else's keys. The result is kept for the life of the process; a failure is remembered
 * for DISCOVERY_RETRY_MS so that a dead IdP is not hammered by every request, then retried.
 */
function discoveryKeySource(issuer: string, now: () => number, onChange: () => void): JWTVerifyGetKey {
  const documentUrl = providerUrl(`${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`, 'issuer');
  let keys: JWTVerifyGetKey | undefined;
  let pending: Promise<JWTVerifyGetKey> | undefined;
  let failure: { at: number; error: ProviderError } | undefined;

  async function discover(): Promise<JWTVerifyGetKey> {
    const res = await providerFetch(documentUrl, { headers: { accept: 'application/json' } }, 'discovery');
    if (res.status !== 200) {
      throw new ProviderError('identity provider unreachable', 'discovery', `HTTP ${res.status}`);
    }
    if (!isRecord(res.body)) throw new ProviderError('identity provider misconfigured', 'discovery', 'not a JSON object');
    if (res.body.issuer !== issuer) {
      throw new ProviderError('identity provider misconfigured', 'discovery', 'issuer does not match identity.issuer');
    }
    const jwksUri = res.body.jwks_uri;
    if (typeof jwksUri !== 'string') throw new ProviderError('identity provider misconfigured', 'discovery', 'no jwks_uri');
    let url: URL;
    try {
      url = providerUrl(jwksUri, 'discovered jwks_uri');
    } catch (err) {
      throw new ProviderError('identity provider misconfigured', 'discovery', `${(err as Error).message}`);
    }
    return guardRemote(createRemoteJWKSet(url), onChange);
  }

  function current(): Promise<JWTVerifyGetKey> {
    if (keys) return Promise.resolve(keys);
    if (failure && now() - failure.at < DISCOVERY_RETRY_MS) return Promise.reject(failure.error);
    // One discovery at a time: concurrent first requests share it.
    pending ??= discover()
      .then(
        (found) => {
          keys = found;
          failure = undefined;
          return found;
        },
        (err: unknown) => {
          const error = err instanceof ProviderError ? err : new ProviderError('identity provider unreachable', 'discovery', 'failed');
          failure = { at: now(), error };
          throw error;
        },
      )
      .finally(() => {
        pending = undefined;
      });
    return pending;
  }

  return async (header, token) => (await current())(header, token);
}
