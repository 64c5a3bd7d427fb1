/**
 * The KMS static identity (PROTOCOL.md §2): the CA that `kms init` creates, the leaf certificate for
 * the static RSA key, and loading key + chain into the published JWK (`kty`, `kid`, `n`, `e`, `x5c`
 * and nothing else).
 *
 * Certificates are built with `@peculiar/x509` (loaded through the protocol package's `loadX509`,
 * which supplies the Reflect metadata functions the library needs) over WebCrypto; keys are
 * handled with node:crypto.
 */
import { X509Certificate, createPrivateKey, createPublicKey, generateKeyPair, randomBytes, webcrypto } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import { CertificateError, Limits, checkOwnCertificateChain, loadX509, parsePemCertificates } from '@openkms/protocol';

const generateKeyPairAsync = promisify(generateKeyPair);
const crypto = webcrypto as unknown as Crypto;

const SIGNING = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as const;
const CA_MODULUS_BITS = 3072;
const STATIC_MODULUS_BITS = 2048;
const DEFAULT_CA_DAYS = 3650;
const DEFAULT_LEAF_DAYS = 825;
const DAY_MS = 86_400_000;
/** Backdating of notBefore, so a peer whose clock is slightly behind accepts a fresh certificate. */
const CLOCK_SKEW_MS = 5 * 60_000;

/** A DNS name (what an authority is): labels of letters, digits and hyphens, no wildcard. */
const DNS_NAME = /^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$/;

export interface CaMaterial {
  certPem: string;
  keyPem: string;
}

export interface StaticPublicJwk {
  kty: 'RSA';
  kid: string;
  n: string;
  e: string;
  x5c: string[];
}

export interface StaticIdentity {
  privateKey: KeyObject;
  publicJwk: StaticPublicJwk;
}

function validDaysOf(days: number | undefined, fallback: number): number {
  const d = days ?? fallback;
  if (!Number.isFinite(d) || d <= 0) throw new Error(`validDays must be a positive number, got ${String(days)}`);
  return d;
}

/** A random positive serial number (16 bytes, high bit clear, never zero-led). */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x40;
  return bytes.toString('hex');
}

function privateKeyPemOf(der: ArrayBuffer): string {
  return createPrivateKey({ key: Buffer.from(der), format: 'der', type: 'pkcs8' }).export({
    type: 'pkcs8',
    format: 'pem',
  }) as string;
}

function readPrivateKey(pem: string, what: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch {
    throw new Error(`${what} is not a readable PEM private key`);
  }
  if (key.asymmetricKeyType !== 'rsa') throw new Error(`${what} is not an RSA key`);
  return key;
}

/**
 * A new self-signed CA: RSA 3072, basicConstraints cA (critical), keyUsage keyCertSign|cRLSign
 * (critical), subjectKeyIdentifier; signed RSASSA-PKCS1-v1_5 SHA-256. Valid `validDays` (default 3650).
 */
export async function createCa(commonName: string, opts: { validDays?: number } = {}): Promise<CaMaterial> {
  if (typeof commonName !== 'string' || commonName.trim() === '') throw new Error('CA common name is empty');
  const days = validDaysOf(opts.validDays, DEFAULT_CA_DAYS);
  const x509 = await loadX509();
  const keys = (await crypto.subtle.generateKey(
    { ...SIGNING, modulusLength: CA_MODULUS_BITS, publicExponent: new Uint8Array([1, 0, 1]) },
    true,
    ['sign', 'verify'],
  )) as CryptoKeyPair;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serialNumber(),
      name: [{ CN: [commonName] }],
      notBefore: new Date(now - CLOCK_SKEW_MS),
      notAfter: new Date(now + days * DAY_MS),
      keys,
      signingAlgorithm: SIGNING,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  const pkcs8 = await crypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { certPem: cert.toString('pem') + '\n', keyPem: privateKeyPemOf(pkcs8) };
}

/**
 * The leaf certificate (PEM) for the KMS static key: subject CN = authority, SAN DNS = authority,
 * basicConstraints cA false (critical), keyUsage digitalSignature|keyEncipherment (critical),
 * subject/authority key identifiers, signed by the CA key (RSASSA-PKCS1-v1_5 SHA-256). Valid
 * `validDays` (default 825), never past the CA's own notAfter.
 */
export async function issueKmsCertificate(input: {
  ca: CaMaterial;
  authority: string;
  publicKeyPem: string;
  validDays?: number;
}): Promise<string> {
  const { ca, authority } = input;
  if (typeof authority !== 'string' || !DNS_NAME.test(authority)) {
    throw new Error(`authority ${JSON.stringify(authority)} is not a DNS name`);
  }
  const days = validDaysOf(input.validDays, DEFAULT_LEAF_DAYS);
  const x509 = await loadX509();

  let caCert: InstanceType<typeof x509.X509Certificate>;
  try {
    const [caB64] = parsePemCertificates(ca.certPem);
    if (!caB64) throw new Error('no certificate');
    caCert = new x509.X509Certificate(Buffer.from(caB64, 'base64'));
  } catch {
    throw new Error('CA certificate is not a readable PEM certificate');
  }
  const caKey = readPrivateKey(ca.keyPem, 'CA key');
  const caSpki = createPublicKey(caKey).export({ type: 'spki', format: 'der' });
  if (!Buffer.from(caCert.publicKey.rawData).equals(caSpki)) {
    throw new Error('CA key does not match the CA certificate');
  }
  const signingKey = await crypto.subtle.importKey(
    'pkcs8',
    caKey.export({ type: 'pkcs8', format: 'der' }),
    SIGNING,
    false,
    ['sign'],
  );

  let subjectKey: KeyObject;
  try {
    subjectKey = createPublicKey(input.publicKeyPem);
  } catch {
    throw new Error('static public key is not a readable PEM key');
  }
  if (subjectKey.asymmetricKeyType !== 'rsa') throw new Error('static public key is not an RSA key');
  const subjectPublicKey = new x509.PublicKey(subjectKey.export({ type: 'spki', format: 'der' }));

  const now = Date.now();
  const notBefore = new Date(Math.max(now - CLOCK_SKEW_MS, caCert.notBefore.getTime()));
  const notAfter = new Date(Math.min(now + days * DAY_MS, caCert.notAfter.getTime()));
  if (notAfter.getTime() <= now) throw new Error('CA certificate has expired');

  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: serialNumber(),
      subject: [{ CN: [authority] }],
      issuer: caCert.subjectName,
      notBefore,
      notAfter,
      publicKey: subjectPublicKey,
      signingKey,
      signingAlgorithm: SIGNING,
      extensions: [
        new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: authority }], false),
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(subjectPublicKey, false, crypto),
        await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  return cert.toString('pem') + '\n';
}

/** A new static key: RSA 2048, PKCS#8 PEM. */
export async function generateStaticKeyPem(): Promise<string> {
  const { privateKey } = await generateKeyPairAsync('rsa', {
    modulusLength: STATIC_MODULUS_BITS,
    publicExponent: 0x10001,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return privateKey;
}

/**
 * Loads the static key and its certificate chain (leaf first, as in the PEM file) into the private
 * key and the published JWK `{kty, kid: "kms://<authority>", n, e, x5c}`. Refuses (clear Error) a
 * key that is not RSA ≥ 2048, a chain that is empty, longer than 10 or not linked (each certificate
 * signed by the next), a leaf that is a CA, does not name the authority, whose key is not the
 * private key's, or whose keyUsage lacks digitalSignature. Trust anchors and dates are not checked.
 */
export async function loadStaticIdentity(input: {
  keyPem: string;
  certChainPem: string;
  authority: string;
}): Promise<StaticIdentity> {
  const { authority } = input;
  if (typeof authority !== 'string' || !DNS_NAME.test(authority)) {
    throw new Error(`authority ${JSON.stringify(authority)} is not a DNS name`);
  }
  const privateKey = readPrivateKey(input.keyPem, 'static key');
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' });
  if (typeof jwk.n !== 'string' || typeof jwk.e !== 'string') throw new Error('static key is not an RSA key');

  let x5c: string[];
  try {
    x5c = parsePemCertificates(input.certChainPem);
  } catch (err) {
    throw new Error(`static certificate chain: ${(err as Error).message}`);
  }
  if (x5c.length === 0) throw new Error('static certificate chain holds no CERTIFICATE block');
  if (x5c.length > Limits.maxChainLength) throw new Error(`static certificate chain has more than ${Limits.maxChainLength} certificates`);

  try {
    await checkOwnCertificateChain({ x5c, authority, jwk: { n: jwk.n, e: jwk.e } });
  } catch (err) {
    if (err instanceof CertificateError) throw new Error(`static certificate chain: ${err.message}`);
    throw err;
  }
  return {
    privateKey,
    publicJwk: { kty: 'RSA', kid: `kms://${authority}`, n: jwk.n, e: jwk.e, x5c },
  };
}

/**
 * When a PEM chain stops being usable: the earliest notAfter of its certificates (an intermediate
 * that expires first ends the chain's validity too). Throws on a chain without a certificate.
 */
export function chainNotAfter(chainPem: string): Date {
  const ders = parsePemCertificates(chainPem);
  if (ders.length === 0) throw new Error('no CERTIFICATE block');
  return new Date(Math.min(...ders.map((der) => Date.parse(new X509Certificate(Buffer.from(der, 'base64')).validTo))));
}
