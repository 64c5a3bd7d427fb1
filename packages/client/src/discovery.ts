/**
 * Discovery: read `/.well-known/kms`, and before the first message validate the KMS certificate
 * (PROTOCOL.md §6 "Certificate checks"): the chain verifies to the configured CA roots, the leaf
 * names the authority of the static key's kid, and the leaf's key is the JWK. Any failure refuses
 * to connect (fail closed).
 */
import { importJWK, type CryptoKey } from 'jose';
import { CertificateError, KmsError, isAuthority, verifyKmsCertificate } from '@openkms/protocol';
import { failureDetail, httpFailure, timedOut, unreachable } from './failures.js';
import type { FetchLike, StaticJwk } from './transport.js';

export interface StaticKey {
  authority: string;
  kid: string;
  /** For ECDHE requests (RSA-OAEP). */
  encryptKey: CryptoKey;
  /** For answers signed by the KMS (PS256). */
  verifyKey: CryptoKey;
  /** The static public key as discovered, with the x5c chain it was checked by. */
  jwk: StaticJwk;
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
  // Without an anchor no certificate can be accepted: refused before anything is sent.
  if (options.trustAnchors.length === 0) throw new KmsError('CERTIFICATE_REFUSED', 'no trust anchors configured for the KMS certificate');
  const what = `GET ${options.url}/.well-known/kms`;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), timeoutMs);
  let res: Awaited<ReturnType<FetchLike>>;
  let text: string;
  try {
    res = await options.fetch(`${options.url}/.well-known/kms`, { method: 'GET', headers: {}, signal: controller.signal });
    text = await res.text();
  } catch (err) {
    throw controller.signal.aborted ? timedOut(what, timeoutMs, err) : unreachable(what, err);
  } finally {
    clearTimeout(timeout);
  }
  if (res.status !== 200) throw httpFailure(what, res.status, text, 'DISCOVERY_INVALID');
  let doc: { kmsCluster?: unknown; rsaPublicKey?: { kty?: unknown; kid?: unknown; n?: unknown; e?: unknown; x5c?: unknown }; domains?: unknown };
  try {
    doc = JSON.parse(text) as typeof doc;
  } catch (err) {
    throw new KmsError('DISCOVERY_INVALID', `${what} answered a document that is not JSON`, { cause: err });
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new KmsError('DISCOVERY_INVALID', `${what} answered a document that is not a JSON object`);
  const jwk = doc.rsaPublicKey;
  const cluster = typeof doc.kmsCluster === 'string' ? doc.kmsCluster : '';
  const authority = cluster.startsWith('kms://') ? cluster.slice(6) : '';
  if (!isAuthority(authority)) throw new KmsError('DISCOVERY_INVALID', 'KMS discovery document names no valid kmsCluster');
  if (options.authority !== undefined && options.authority.toLowerCase() !== authority) {
    throw new KmsError('DISCOVERY_INVALID', `expected KMS ${options.authority}, found ${authority}`);
  }
  if (!jwk || jwk.kty !== 'RSA' || jwk.kid !== cluster || typeof jwk.n !== 'string' || typeof jwk.e !== 'string' || !Array.isArray(jwk.x5c)) {
    throw new KmsError('DISCOVERY_INVALID', 'KMS static key is not an RSA JWK with kid = kmsCluster and an x5c chain');
  }
  try {
    await verifyKmsCertificate({
      jwk: { kty: 'RSA', kid: jwk.kid, n: jwk.n, e: jwk.e, x5c: jwk.x5c as string[] },
      authority,
      trustAnchorsPem: options.trustAnchors,
      now: options.now ? new Date(options.now()) : undefined,
    });
  } catch (err) {
    if (err instanceof CertificateError) throw new KmsError('CERTIFICATE_REFUSED', `KMS certificate refused: ${err.message}`, { cause: err });
    throw new KmsError('CERTIFICATE_REFUSED', 'KMS certificate could not be checked', { cause: err });
  }
  const pub = { kty: 'RSA', n: jwk.n, e: jwk.e };
  let keys: CryptoKey[];
  try {
    keys = (await Promise.all([importJWK(pub, 'RSA-OAEP'), importJWK(pub, 'PS256')])) as CryptoKey[];
  } catch (err) {
    throw new KmsError('DISCOVERY_INVALID', `KMS static key cannot be imported: ${failureDetail(err)}`, { cause: err });
  }
  return {
    authority,
    kid: cluster,
    encryptKey: keys[0]!,
    verifyKey: keys[1]!,
    jwk: { kty: 'RSA', kid: jwk.kid, n: jwk.n, e: jwk.e, x5c: [...(jwk.x5c as string[])] },
    domains: Array.isArray(doc.domains) ? doc.domains.filter((d): d is string => typeof d === 'string') : [],
  };
}
