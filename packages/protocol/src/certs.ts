/**
 * The certificate checks of PROTOCOL.md §6 ("Certificate checks"), used for a peer KMS's x5c and by
 * clients for a KMS's static key (§2). Browser-safe: WebCrypto through `globalThis.crypto` and
 * `@peculiar/x509` for every certificate structure; no `node:` import.
 *
 * `@peculiar/x509` v2 needs the Reflect metadata API at load time (its DI container, tsyringe,
 * checks for `Reflect.getMetadata`), so `loadX509()` loads `reflect-metadata` first. Anything in
 * the project that needs `@peculiar/x509` at runtime obtains it through `loadX509()`.
 */
import type * as X509 from '@peculiar/x509';
import { Limits } from './limits.js';

/** A certificate (or chain) was refused. The message says which check failed; it carries no key material. */
export class CertificateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CertificateError';
  }
}

/** The JWK members the checks read. */
export interface CertificateJwk {
  kty: string;
  kid?: string;
  n?: string;
  e?: string;
  x5c?: string[];
}

export interface VerifyKmsCertificateInput {
  jwk: CertificateJwk;
  /** The KMS authority the leaf must name, e.g. `kms.a.example`. */
  authority: string;
  /** PEM texts of the trusted CA certificates (each string may hold several CERTIFICATE blocks). */
  trustAnchorsPem: string[];
  /** The time the validity dates are checked at (default: now). */
  now?: Date;
}

/** Smallest RSA modulus accepted for a KMS static key. */
const MIN_RSA_BITS = 2048;

const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_KEY_USAGE = '2.5.29.15';
const OID_SUBJECT_ALT_NAME = '2.5.29.17';
/** rsaEncryption: the only SPKI type usable both for PS256 verification and RSA-OAEP wrapping. */
const RSA_ENCRYPTION_NAME = 'RSASSA-PKCS1-v1_5';
const KEY_USAGE_DIGITAL_SIGNATURE = 1; // x509.KeyUsageFlags.digitalSignature

// ---------------------------------------------------------------------------------------------
// Loading @peculiar/x509

let x509Module: Promise<typeof X509> | undefined;

/** `@peculiar/x509`, loaded (lazily) after the Reflect metadata polyfill it needs. */
export function loadX509(): Promise<typeof X509> {
  if (!x509Module) {
    x509Module = import('reflect-metadata').then(() => import('@peculiar/x509'));
  }
  return x509Module;
}

function webCrypto(): Crypto {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (!c?.subtle) throw new CertificateError('WebCrypto is not available');
  return c;
}

// ---------------------------------------------------------------------------------------------
// Encodings (base64 of x5c, base64url of JWK members, PEM armor)

type Bytes = Uint8Array<ArrayBuffer>;

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const BASE64URL = /^[A-Za-z0-9_-]+$/;

function base64ToBytes(b64: string): Bytes {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function bytesToBase64(bytes: Uint8Array): string {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

/** Decodes standard base64 (with padding), or undefined if it is not that. */
function decodeStrictBase64(value: unknown): Bytes | undefined {
  if (typeof value !== 'string' || value.length === 0 || value.length % 4 !== 0 || !BASE64.test(value)) {
    return undefined;
  }
  try {
    return base64ToBytes(value);
  } catch {
    return undefined;
  }
}

function decodeBase64Url(value: string): Bytes | undefined {
  if (!BASE64URL.test(value) || value.length % 4 === 1) return undefined;
  const b64 = value.replace(/-/g, '+').replace(/_/g, '/');
  try {
    return base64ToBytes(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  } catch {
    return undefined;
  }
}

function stripLeadingZeros(bytes: Uint8Array): Uint8Array {
  let i = 0;
  while (i < bytes.length && bytes[i] === 0) i++;
  return bytes.subarray(i);
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/**
 * The certificates of a PEM text, in order, as standard base64 DER (the x5c form). Only
 * `CERTIFICATE` blocks are read; other blocks (keys, …) are ignored. A CERTIFICATE block whose body is
 * not base64 throws a CertificateError. The DER is not parsed here.
 */
export function parsePemCertificates(pem: string): string[] {
  const out: string[] = [];
  const re = /-----BEGIN CERTIFICATE-----([^-]*)-----END CERTIFICATE-----/g;
  for (let m = re.exec(pem); m !== null; m = re.exec(pem)) {
    const body = (m[1] ?? '').replace(/\s+/g, '');
    const der = decodeStrictBase64(body);
    if (!der) throw new CertificateError('PEM CERTIFICATE block is not base64');
    out.push(bytesToBase64(der));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Parsing

interface ParsedCert {
  der: Bytes;
  cert: X509.X509Certificate;
}

/**
 * Length of the outer DER element (tag, length octets, contents). The parser accepts bytes after
 * the certificate and keeps them in rawData, so trailing data is detected here.
 */
function derLength(der: Bytes): number {
  if (der.length < 2) return -1;
  const first = der[1]!;
  if (first < 0x80) return 2 + first;
  const octets = first & 0x7f;
  if (octets === 0 || octets > 4 || der.length < 2 + octets) return -1;
  let len = 0;
  for (let i = 0; i < octets; i++) len = len * 256 + der[2 + i]!;
  return 2 + octets + len;
}

async function parseDer(der: Bytes, what: string): Promise<ParsedCert> {
  const x509 = await loadX509();
  if (der.length > Limits.maxCertBytes) throw new CertificateError(`${what} is too large`);
  let cert: X509.X509Certificate;
  try {
    cert = new x509.X509Certificate(der);
    // Touch what the checks read, so a malformed part is refused here and not later.
    void cert.extensions;
    void cert.publicKey;
    void cert.notBefore;
    void cert.notAfter;
    void cert.subjectName;
    void cert.issuerName;
  } catch {
    throw new CertificateError(`${what} is not a DER X.509 certificate`);
  }
  if (derLength(der) !== der.length) {
    throw new CertificateError(`${what} has trailing data after the certificate`);
  }
  return { der, cert };
}

/** Checks the x5c member's shape (1..10 standard-base64 DER certificates) and parses it. */
async function parseX5c(x5c: unknown): Promise<ParsedCert[]> {
  if (!Array.isArray(x5c) || x5c.length === 0) {
    throw new CertificateError('x5c must be a non-empty array of base64 DER certificates');
  }
  if (x5c.length > Limits.maxChainLength) {
    throw new CertificateError(`x5c has more than ${Limits.maxChainLength} certificates`);
  }
  const out: ParsedCert[] = [];
  for (let i = 0; i < x5c.length; i++) {
    const der = decodeStrictBase64(x5c[i]);
    if (!der) throw new CertificateError(`x5c[${i}] is not standard base64`);
    out.push(await parseDer(der, `x5c[${i}]`));
  }
  return out;
}

async function parseAnchors(trustAnchorsPem: readonly string[]): Promise<ParsedCert[]> {
  const out: ParsedCert[] = [];
  for (const pem of trustAnchorsPem) {
    if (typeof pem !== 'string') continue;
    let blocks: string[];
    try {
      blocks = parsePemCertificates(pem);
    } catch {
      continue; // an unreadable anchor trusts nothing
    }
    for (const b64 of blocks) {
      try {
        out.push(await parseDer(base64ToBytes(b64), 'trust anchor'));
      } catch {
        // an unreadable anchor trusts nothing
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The individual checks

/** `child` names `issuer` as its issuer and carries a valid signature by `issuer`'s key. */
async function isSignedBy(child: X509.X509Certificate, issuer: X509.X509Certificate): Promise<boolean> {
  if (child.issuer !== issuer.subject) return false;
  try {
    return await child.verify({ publicKey: issuer, signatureOnly: true }, webCrypto());
  } catch {
    return false;
  }
}

async function basicConstraintsCa(cert: X509.X509Certificate): Promise<boolean> {
  const x509 = await loadX509();
  const bc = cert.getExtension<X509.BasicConstraintsExtension>(OID_BASIC_CONSTRAINTS);
  return bc instanceof x509.BasicConstraintsExtension && bc.ca;
}

function withinValidity(cert: X509.X509Certificate, now: Date): boolean {
  const t = now.getTime();
  return cert.notBefore.getTime() <= t && t <= cert.notAfter.getTime();
}

/**
 * Each certificate of the chain (leaf first) is signed by the next one and names it as issuer.
 * Does not look at trust anchors, dates or CA flags.
 */
async function checkLinks(chain: readonly ParsedCert[]): Promise<void> {
  for (let i = 0; i + 1 < chain.length; i++) {
    if (!(await isSignedBy(chain[i]!.cert, chain[i + 1]!.cert))) {
      throw new CertificateError('certificate chain does not verify to a trusted anchor');
    }
  }
}

/** The leaf names `authority`: a SAN DNS entry equal to it (case-insensitive), or the CN when there is no SAN. */
async function checkName(leaf: X509.X509Certificate, authority: string): Promise<void> {
  const x509 = await loadX509();
  const wanted = authority.toLowerCase();
  const refused = new CertificateError(`leaf certificate does not name ${authority}`);
  if (wanted.length === 0 || wanted.includes('*')) throw refused;
  const sans = leaf.getExtensions(OID_SUBJECT_ALT_NAME);
  if (sans.length > 0) {
    for (const san of sans) {
      if (!(san instanceof x509.SubjectAlternativeNameExtension)) continue;
      for (const name of san.names.items) {
        if (name.type === x509.DNS && name.value.toLowerCase() === wanted) return;
      }
    }
    throw refused;
  }
  if (leaf.subjectName.getField('CN').some((cn) => cn.toLowerCase() === wanted)) return;
  throw refused;
}

/** The leaf's key is RSA (rsaEncryption) of at least 2048 bits and equals the JWK's n/e. */
async function checkKey(leaf: X509.X509Certificate, jwk: { n?: unknown; e?: unknown }): Promise<void> {
  if (typeof jwk.n !== 'string' || typeof jwk.e !== 'string') {
    throw new CertificateError('JWK lacks n or e');
  }
  const jwkN = decodeBase64Url(jwk.n);
  const jwkE = decodeBase64Url(jwk.e);
  if (!jwkN || !jwkE) throw new CertificateError('JWK n or e is not base64url');
  if (leaf.publicKey.algorithm.name !== RSA_ENCRYPTION_NAME) {
    throw new CertificateError('leaf key is not an RSA key');
  }
  const crypto = webCrypto();
  let modulusLength: number;
  let certJwk: JsonWebKey;
  try {
    const key = await leaf.publicKey.export({ name: RSA_ENCRYPTION_NAME, hash: 'SHA-256' }, ['verify'], crypto);
    modulusLength = (key.algorithm as RsaHashedKeyAlgorithm).modulusLength;
    certJwk = await crypto.subtle.exportKey('jwk', key);
  } catch {
    throw new CertificateError('leaf key is not a readable RSA key');
  }
  if (!(modulusLength >= MIN_RSA_BITS)) throw new CertificateError(`RSA key shorter than ${MIN_RSA_BITS} bits`);
  const certN = certJwk.n === undefined ? undefined : decodeBase64Url(certJwk.n);
  const certE = certJwk.e === undefined ? undefined : decodeBase64Url(certJwk.e);
  if (!certN || !certE) throw new CertificateError('leaf key is not a readable RSA key');
  if (
    !bytesEqual(stripLeadingZeros(certN), stripLeadingZeros(jwkN)) ||
    !bytesEqual(stripLeadingZeros(certE), stripLeadingZeros(jwkE))
  ) {
    throw new CertificateError('leaf key does not match the JWK');
  }
}

async function checkKeyUsage(leaf: X509.X509Certificate): Promise<void> {
  const x509 = await loadX509();
  const exts = leaf.getExtensions(OID_KEY_USAGE);
  for (const ku of exts) {
    if (!(ku instanceof x509.KeyUsagesExtension) || (ku.usages & KEY_USAGE_DIGITAL_SIGNATURE) === 0) {
      throw new CertificateError('leaf keyUsage lacks digitalSignature');
    }
  }
}

/** The leaf-only part of the checks: not a CA, names the authority, RSA ≥ 2048 equal to n/e, keyUsage. */
async function checkLeaf(leaf: X509.X509Certificate, authority: string, jwk: { n?: unknown; e?: unknown }): Promise<void> {
  if (await basicConstraintsCa(leaf)) throw new CertificateError('leaf is a CA');
  await checkName(leaf, authority);
  await checkKey(leaf, jwk);
  await checkKeyUsage(leaf);
}

// ---------------------------------------------------------------------------------------------
// Public API

/**
 * PROTOCOL.md §6 "Certificate checks" of a KMS's public JWK against trust anchors. Resolves if every
 * check passes; otherwise throws a CertificateError naming the failed check:
 * - `x5c` is an array of 1..10 standard-base64 DER certificates, leaf first;
 * - each certificate is signed by the next; the last is signed by a trust anchor or is one;
 * - every certificate, and the trust anchor used, is within its validity dates at `now`;
 * - intermediates are CAs (basicConstraints cA); the leaf is not a CA;
 * - the leaf names `authority` in a subjectAltName DNS entry (case-insensitive, no wildcards), or in
 *   its CN if it has no subjectAltName extension at all;
 * - the leaf key is RSA ≥ 2048 bits with modulus/exponent equal to the JWK's `n`/`e`;
 * - a keyUsage extension on the leaf includes digitalSignature.
 */
export async function verifyKmsCertificate(input: VerifyKmsCertificateInput): Promise<void> {
  const { jwk, authority } = input;
  const now = input.now ?? new Date();
  if (typeof jwk !== 'object' || jwk === null) throw new CertificateError('JWK is missing');
  if (jwk.kty !== 'RSA') throw new CertificateError('JWK is not an RSA key');
  if (typeof authority !== 'string') throw new CertificateError('authority is missing');

  const chain = await parseX5c(jwk.x5c);
  const anchors = await parseAnchors(Array.isArray(input.trustAnchorsPem) ? input.trustAnchorsPem : []);

  // Chain: each signed by the next; the last is an anchor or signed by one.
  await checkLinks(chain);
  const last = chain[chain.length - 1]!;
  let anchor: ParsedCert | undefined = anchors.find((a) => bytesEqual(a.der, last.der));
  if (!anchor) {
    for (const a of anchors) {
      if (await isSignedBy(last.cert, a.cert)) {
        anchor = a;
        break;
      }
    }
  }
  if (!anchor) throw new CertificateError('certificate chain does not verify to a trusted anchor');

  // Dates: every certificate, and the anchor used.
  for (const c of [...chain, anchor]) {
    if (!withinValidity(c.cert, now)) throw new CertificateError('certificate expired or not yet valid');
  }

  // Intermediates (everything after the leaf) are CAs.
  for (const c of chain.slice(1)) {
    if (!(await basicConstraintsCa(c.cert))) throw new CertificateError('intermediate is not a CA');
  }

  await checkLeaf(chain[0]!.cert, authority, jwk);
}

/**
 * The checks a KMS applies to its own static identity at load time (no trust anchor, no dates):
 * `x5c` well-formed (1..10 certificates), each certificate signed by the next, and the leaf checks
 * (not a CA, names `authority`, RSA ≥ 2048 equal to `jwk.n`/`jwk.e`, keyUsage allows digitalSignature).
 * Throws a CertificateError.
 */
export async function checkOwnCertificateChain(input: {
  x5c: string[];
  authority: string;
  jwk: { n?: string; e?: string };
}): Promise<void> {
  const chain = await parseX5c(input.x5c);
  await checkLinks(chain);
  await checkLeaf(chain[0]!.cert, input.authority, input.jwk);
}

/** Only the name check of §6 on one base64 DER certificate: it names `authority`. Throws a CertificateError. */
export async function checkLeafNamesAuthority(leafB64: string, authority: string): Promise<void> {
  const [leaf] = await parseX5c([leafB64]);
  await checkName(leaf!.cert, authority);
}

/** Only the key check of §6 on one base64 DER certificate: RSA ≥ 2048 equal to `jwk.n`/`jwk.e`. Throws a CertificateError. */
export async function checkLeafKeyMatchesJwk(leafB64: string, jwk: { n?: string; e?: string }): Promise<void> {
  const [leaf] = await parseX5c([leafB64]);
  await checkKey(leaf!.cert, jwk);
}
