/**
 * Discovery: read `/.well-known/kms`, and before the first message validate the KMS certificate
 * (PROTOCOL.md §6 "Certificate checks"): the chain verifies to the configured CA roots, the leaf
 * names the authority of the static key's kid, and the leaf's key is the JWK. Any failure refuses
 * to connect (fail closed).
 */
import { importJWK, type CryptoKey } from 'jose';
import { CertificateError, KmsError, isAuthority, verifyKmsCertificate } from '@openkms/protocol';
import type { FetchLike } from './transport.js';

export interface StaticKey {
  authority: string;
  kid: string;
  /** For ECDHE requests (RSA-OAEP). */
  encryptKey: CryptoKey;
  /** For answers signed by the KMS (PS256). */
  verifyKey: CryptoKey;
  domains: string[];
}

export async function discover(options: {
  url: string;
  fetch: FetchLike;
  trustAnchors: string[];
  /** When given, the KMS must be this authority. */
  authority?: string;
  now?: () => number;
  timeoutMs?: number;
}): Promise<StaticKey> {
  let doc: { kmsCluster?: unknown; rsaPublicKey?: { kty?: unknown; kid?: unknown; n?: unknown; e?: unknown; x5c?: unknown }; domains?: unknown };
  const signal = AbortSignal.timeout(options.timeoutMs ?? 30_000);
  try {
    const res = await options.fetch(`${options.url}/.well-known/kms`, { method: 'GET', headers: {}, signal });
    if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
    doc = (await res.json()) as typeof doc;
  } catch (err) {
    if (signal.aborted) throw new KmsError('KMS_TIMEOUT', `${options.url}/.well-known/kms did not answer in time`);
    throw new KmsError('KMS_UNREACHABLE', `cannot read ${options.url}/.well-known/kms: ${(err as Error).message}`);
  }
  const jwk = doc?.rsaPublicKey;
  const cluster = typeof doc?.kmsCluster === 'string' ? doc.kmsCluster : '';
  const authority = cluster.startsWith('kms://') ? cluster.slice(6) : '';
  if (!isAuthority(authority)) throw new KmsError('DISCOVERY_INVALID', 'KMS discovery document names no valid kmsCluster');
  if (options.authority !== undefined && options.authority.toLowerCase() !== authority) {
    throw new KmsError('DISCOVERY_INVALID', `expected KMS ${options.authority}, found ${authority}`);
  }
  if (!jwk || jwk.kty !== 'RSA' || jwk.kid !== cluster || typeof jwk.n !== 'string' || typeof jwk.e !== 'string' || !Array.isArray(jwk.x5c)) {
    throw new KmsError('DISCOVERY_INVALID', 'KMS static key is not an RSA JWK with kid = kmsCluster and an x5c chain');
  }
  if (options.trustAnchors.length === 0) throw new KmsError('DISCOVERY_INVALID', 'no trust anchors configured for the KMS certificate');
  try {
    await verifyKmsCertificate({
      jwk: { kty: 'RSA', kid: jwk.kid, n: jwk.n, e: jwk.e, x5c: jwk.x5c as string[] },
      authority,
      trustAnchorsPem: options.trustAnchors,
      now: options.now ? new Date(options.now()) : undefined,
    });
  } catch (err) {
    if (err instanceof CertificateError) throw new KmsError('CERTIFICATE_REFUSED', `KMS certificate refused: ${err.message}`);
    throw err;
  }
  const pub = { kty: 'RSA', n: jwk.n, e: jwk.e };
  return {
    authority,
    kid: cluster,
    encryptKey: (await importJWK(pub, 'RSA-OAEP')) as CryptoKey,
    verifyKey: (await importJWK(pub, 'PS256')) as CryptoKey,
    domains: Array.isArray(doc.domains) ? doc.domains.filter((d): d is string => typeof d === 'string') : [],
  };
}
