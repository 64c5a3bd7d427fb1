import { createHash, createPrivateKey, createPublicKey, randomUUID } from 'node:crypto';
import type { JsonWebKey, KeyObject } from 'node:crypto';
import { SignJWT, calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose';
import type { JWK } from 'jose';
import { Limits } from '@openkms/protocol';
import { DEV_TOKEN_MAX_TTL_SECONDS, DEV_TOKEN_TTL_SECONDS } from '../limits.js';

/**
 * The built-in development issuer behind `kms token`: a local RSA key that mints access tokens
 * shaped like an IdP's (RFC 9068), so the whole KMS path — including token verification in
 * tokens.ts — is exercised in development without an IdP. Never a substitute for one in
 * production: whoever can read the key file can be anyone.
 */

const ALGORITHMS = ['PS256', 'RS256'];

export interface DevIssueOptions {
  roles?: string[];
  ttlSeconds?: number;
  /** Issue time in epoch ms (tests); default now. */
  now?: number;
}

export interface DevIssuer {
  /** The public half, for createTokenVerifier's `devPublicJwk` (kty, n, e, alg, kid, use). */
  publicJwk: JWK;
  issue(user: string, opts?: DevIssueOptions): Promise<string>;
}

/**
 * A fresh RSA 2048 PS256 signing key as the text of a key file: a private JWK in JSON, carrying
 * its `alg` and `kid` (RFC 7638 thumbprint) so that tokens and the published key agree.
 * The caller stores it with owner-only permissions.
 */
export async function generateDevIssuerKey(): Promise<string> {
  const { privateKey } = await generateKeyPair('PS256', { modulusLength: 2048, extractable: true });
  const jwk = await exportJWK(privateKey);
  const { kty, n, e, d, p, q, dp, dq, qi } = jwk;
  if (kty !== 'RSA' || !n || !e) throw new Error('dev issuer: key generation produced no RSA key');
  const kid = await calculateJwkThumbprint({ kty, n, e });
  return `${JSON.stringify({ kty, n, e, d, p, q, dp, dq, qi, alg: 'PS256', use: 'sig', kid }, null, 2)}\n`;
}

/**
 * Loads a key file written by generateDevIssuerKey (a private RSA JWK; a PKCS#8 PEM is accepted
 * too) and returns the issuer. Errors name the problem, never the key.
 */
export function loadDevIssuer(keyFileContents: string, issuer: string, audience: string): DevIssuer {
  if (!issuer || !audience) throw new Error('dev issuer: issuer and audience are required');
  const { privateKey, alg, kid: fileKid } = parseKeyFile(keyFileContents);

  const { n, e } = createPublicKey(privateKey).export({ format: 'jwk' });
  if (typeof n !== 'string' || typeof e !== 'string') throw new Error('dev issuer: key file holds no RSA key');
  const kid = fileKid ?? thumbprint(n, e);
  const publicJwk: JWK = Object.freeze({ kty: 'RSA', n, e, alg, use: 'sig', kid });

  return {
    publicJwk,
    async issue(user: string, opts: DevIssueOptions = {}): Promise<string> {
      if (typeof user !== 'string' || user.length === 0 || user.length > Limits.maxIdChars) {
        throw new Error(`dev issuer: user must be a non-empty string of at most ${Limits.maxIdChars} characters`);
      }
      const ttl = opts.ttlSeconds ?? DEV_TOKEN_TTL_SECONDS;
      if (!Number.isInteger(ttl) || ttl <= 0 || ttl > DEV_TOKEN_MAX_TTL_SECONDS) {
        throw new Error(`dev issuer: ttlSeconds must be an integer in 1..${DEV_TOKEN_MAX_TTL_SECONDS}`);
      }
      if (opts.roles !== undefined && !opts.roles.every((r) => typeof r === 'string' && r.length > 0)) {
        throw new Error('dev issuer: roles must be non-empty strings');
      }
      const iat = Math.floor((opts.now ?? Date.now()) / 1000);
      const claims = opts.roles !== undefined ? { roles: [...opts.roles] } : {};
      return new SignJWT(claims)
        .setProtectedHeader({ alg, kid, typ: 'at+jwt' })
        .setIssuer(issuer)
        .setAudience(audience)
        .setSubject(user)
        .setIssuedAt(iat)
        .setExpirationTime(iat + ttl)
        .setJti(randomUUID())
        .sign(privateKey);
    },
  };
}

function parseKeyFile(contents: string): { privateKey: KeyObject; alg: string; kid?: string } {
  const text = contents.trim();
  let privateKey: KeyObject;
  let alg = 'PS256';
  let kid: string | undefined;
  try {
    if (text.startsWith('-----BEGIN')) {
      privateKey = createPrivateKey({ key: text, format: 'pem' });
    } else {
      const jwk = JSON.parse(text) as Record<string, unknown>;
      if (typeof jwk.alg === 'string') alg = jwk.alg;
      if (typeof jwk.kid === 'string' && jwk.kid.length > 0) kid = jwk.kid;
      privateKey = createPrivateKey({ key: jwk as JsonWebKey, format: 'jwk' });
    }
  } catch {
    // Node's and JSON's messages could quote parts of the file; ours do not.
    throw new Error('dev issuer: key file is not a private key (expected a JWK in JSON or a PKCS#8 PEM)');
  }
  if (privateKey.type !== 'private' || privateKey.asymmetricKeyType !== 'rsa') {
    throw new Error('dev issuer: key file must hold an RSA private key');
  }
  if ((privateKey.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) {
    throw new Error('dev issuer: RSA key must be at least 2048 bits');
  }
  if (!ALGORITHMS.includes(alg)) throw new Error('dev issuer: key alg must be PS256 or RS256');
  return kid !== undefined ? { privateKey, alg, kid } : { privateKey, alg };
}

/** RFC 7638 JWK thumbprint of an RSA public key (required members in lexicographic order). */
function thumbprint(n: string, e: string): string {
  return createHash('sha256').update(JSON.stringify({ e, kty: 'RSA', n })).digest('base64url');
}
