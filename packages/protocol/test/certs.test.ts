import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import type * as X509 from '@peculiar/x509';
import {
  CertificateError,
  checkLeafKeyMatchesJwk,
  checkLeafNamesAuthority,
  checkOwnCertificateChain,
  loadX509,
  parsePemCertificates,
  verifyKmsCertificate,
} from '../src/certs.js';

const AUTHORITY = 'kms.a.example';
const DAY = 86_400_000;
const SIGNING = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as const;

let x509: typeof X509;
let caKeys: CryptoKeyPair;
let otherCaKeys: CryptoKeyPair;
let intermediateKeys: CryptoKeyPair;
let leafKeys: CryptoKeyPair;
let otherLeafKeys: CryptoKeyPair;
let smallKeys: CryptoKeyPair;
let ca: X509.X509Certificate;
let otherCa: X509.X509Certificate;

async function rsaKeys(bits = 2048): Promise<CryptoKeyPair> {
  return (await crypto.subtle.generateKey(
    { ...SIGNING, modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]) },
    true,
    ['sign', 'verify'],
  )) as CryptoKeyPair;
}

interface CertSpec {
  subject: string;
  publicKey: CryptoKey;
  issuer?: X509.X509Certificate; // absent: self-signed with signingKey
  signingKey: CryptoKey;
  ca?: boolean | undefined; // undefined: no basicConstraints extension
  san?: X509.JsonGeneralNames | undefined; // undefined: no SAN extension
  keyUsage?: number | undefined;
  notBefore?: Date;
  notAfter?: Date;
}

async function makeCert(spec: CertSpec): Promise<X509.X509Certificate> {
  const now = Date.now();
  const extensions: X509.Extension[] = [];
  if (spec.ca !== undefined) extensions.push(new x509.BasicConstraintsExtension(spec.ca, undefined, true));
  if (spec.keyUsage !== undefined) extensions.push(new x509.KeyUsagesExtension(spec.keyUsage, true));
  if (spec.san !== undefined) extensions.push(new x509.SubjectAlternativeNameExtension(spec.san));
  return x509.X509CertificateGenerator.create({
    subject: spec.subject,
    issuer: spec.issuer ? spec.issuer.subjectName : spec.subject,
    publicKey: spec.publicKey,
    signingKey: spec.signingKey,
    signingAlgorithm: SIGNING,
    notBefore: spec.notBefore ?? new Date(now - DAY),
    notAfter: spec.notAfter ?? new Date(now + 365 * DAY),
    extensions,
  });
}

const CA_USAGE = 32 | 64; // keyCertSign | cRLSign
const LEAF_USAGE = 1 | 4; // digitalSignature | keyEncipherment

/** A leaf for `name` under `issuer`, with the usual extensions unless overridden. */
function leaf(overrides: Partial<CertSpec> = {}): Promise<X509.X509Certificate> {
  return makeCert({
    subject: `CN=${AUTHORITY}`,
    publicKey: leafKeys.publicKey,
    issuer: ca,
    signingKey: caKeys.privateKey,
    ca: false,
    san: [{ type: 'dns', value: AUTHORITY }],
    keyUsage: LEAF_USAGE,
    ...overrides,
  });
}

async function jwkFor(chain: X509.X509Certificate[], publicKey: CryptoKey = leafKeys.publicKey) {
  const jwk = await crypto.subtle.exportKey('jwk', publicKey);
  return {
    kty: 'RSA',
    kid: `kms://${AUTHORITY}`,
    n: jwk.n!,
    e: jwk.e!,
    x5c: chain.map((c) => c.toString('base64')),
  };
}

const pem = (c: X509.X509Certificate): string => c.toString('pem');

async function refused(
  promise: Promise<void>,
  message: RegExp,
): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof CertificateError, `expected CertificateError, got ${String(err)}`);
    assert.match(err.message, message);
    return true;
  });
}

before(async () => {
  x509 = await loadX509();
  [caKeys, otherCaKeys, intermediateKeys, leafKeys, otherLeafKeys, smallKeys] = await Promise.all([
    rsaKeys(),
    rsaKeys(),
    rsaKeys(),
    rsaKeys(),
    rsaKeys(),
    rsaKeys(1024),
  ]);
  const now = Date.now();
  ca = await makeCert({
    subject: 'CN=Test CA A',
    publicKey: caKeys.publicKey,
    signingKey: caKeys.privateKey,
    ca: true,
    keyUsage: CA_USAGE,
    notBefore: new Date(now - 10 * DAY),
    notAfter: new Date(now + 3650 * DAY),
  });
  otherCa = await makeCert({
    subject: 'CN=Test CA B',
    publicKey: otherCaKeys.publicKey,
    signingKey: otherCaKeys.privateKey,
    ca: true,
    keyUsage: CA_USAGE,
  });
});

test('a valid CA → leaf chain passes', async () => {
  const l = await leaf();
  await verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] });
  // Authority compares case-insensitively; the anchor may also be in the chain; several anchors.
  await verifyKmsCertificate({
    jwk: await jwkFor([l, ca]),
    authority: 'KMS.A.Example',
    trustAnchorsPem: [pem(otherCa), pem(ca)],
  });
  // One PEM string may hold several anchors.
  await verifyKmsCertificate({
    jwk: await jwkFor([l]),
    authority: AUTHORITY,
    trustAnchorsPem: [pem(otherCa) + '\n' + pem(ca)],
  });
});

test('a valid CA → intermediate (CA) → leaf chain passes', async () => {
  const inter = await makeCert({
    subject: 'CN=Test Intermediate',
    publicKey: intermediateKeys.publicKey,
    issuer: ca,
    signingKey: caKeys.privateKey,
    ca: true,
    keyUsage: CA_USAGE,
  });
  const l = await leaf({ issuer: inter, signingKey: intermediateKeys.privateKey });
  await verifyKmsCertificate({ jwk: await jwkFor([l, inter]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] });
  // Out of order or missing intermediate: refused.
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /does not verify to a trusted anchor/,
  );
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([inter, l]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /does not verify to a trusted anchor/,
  );
});

test('wrong CA: trust anchors of another CA', async () => {
  const l = await leaf();
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [pem(otherCa)] }),
    /certificate chain does not verify to a trusted anchor/,
  );
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [] }),
    /certificate chain does not verify to a trusted anchor/,
  );
  // A forged issuer with the same name as the trusted CA but another key.
  const fakeCa = await makeCert({
    subject: 'CN=Test CA A',
    publicKey: otherCaKeys.publicKey,
    signingKey: otherCaKeys.privateKey,
    ca: true,
  });
  const forged = await leaf({ issuer: fakeCa, signingKey: otherCaKeys.privateKey });
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([forged, fakeCa]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /certificate chain does not verify to a trusted anchor/,
  );
});

test('wrong name: a leaf for kms.c.example', async () => {
  const l = await leaf({ subject: 'CN=kms.c.example', san: [{ type: 'dns', value: 'kms.c.example' }] });
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /leaf certificate does not name kms\.a\.example/,
  );
});

test('key mismatch: the JWK n of another key', async () => {
  const l = await leaf();
  const jwk = await jwkFor([l]);
  const other = await crypto.subtle.exportKey('jwk', otherLeafKeys.publicKey);
  await refused(
    verifyKmsCertificate({ jwk: { ...jwk, n: other.n! }, authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /leaf key does not match the JWK/,
  );
  // A leading zero byte on n is not a difference.
  const n = Buffer.from(jwk.n, 'base64url');
  await verifyKmsCertificate({
    jwk: { ...jwk, n: Buffer.concat([Buffer.alloc(1), n]).toString('base64url') },
    authority: AUTHORITY,
    trustAnchorsPem: [pem(ca)],
  });
  // A different e is a difference.
  await refused(
    verifyKmsCertificate({ jwk: { ...jwk, e: 'Aw' }, authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /leaf key does not match the JWK/,
  );
  // A JWK that is not RSA.
  await refused(
    verifyKmsCertificate({ jwk: { ...jwk, kty: 'EC' }, authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /not an RSA key/,
  );
});

test('expired leaf (now in the future) and not-yet-valid leaf', async () => {
  const l = await leaf();
  const jwk = await jwkFor([l]);
  await refused(
    verifyKmsCertificate({ jwk, authority: AUTHORITY, trustAnchorsPem: [pem(ca)], now: new Date(Date.now() + 400 * DAY) }),
    /certificate expired or not yet valid/,
  );
  const future = await leaf({ notBefore: new Date(Date.now() + DAY), notAfter: new Date(Date.now() + 30 * DAY) });
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([future]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /certificate expired or not yet valid/,
  );
  // The same leaf is accepted at a time within its dates.
  await verifyKmsCertificate({
    jwk: await jwkFor([future]),
    authority: AUTHORITY,
    trustAnchorsPem: [pem(ca)],
    now: new Date(Date.now() + 2 * DAY),
  });
});

test('an expired trust anchor is refused', async () => {
  const now = Date.now();
  const oldCa = await makeCert({
    subject: 'CN=Old CA',
    publicKey: caKeys.publicKey,
    signingKey: caKeys.privateKey,
    ca: true,
    notBefore: new Date(now - 20 * DAY),
    notAfter: new Date(now - DAY),
  });
  const l = await leaf({ issuer: oldCa });
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [pem(oldCa)] }),
    /certificate expired or not yet valid/,
  );
});

test('a leaf that is a CA is refused', async () => {
  const l = await leaf({ ca: true });
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /leaf is a CA/,
  );
});

test('an intermediate that is not a CA is refused', async () => {
  for (const caFlag of [false, undefined]) {
    const inter = await makeCert({
      subject: 'CN=Not A CA',
      publicKey: intermediateKeys.publicKey,
      issuer: ca,
      signingKey: caKeys.privateKey,
      ca: caFlag,
    });
    const l = await leaf({ issuer: inter, signingKey: intermediateKeys.privateKey });
    await refused(
      verifyKmsCertificate({ jwk: await jwkFor([l, inter]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
      /intermediate is not a CA/,
    );
  }
});

test('a wildcard SAN *.a.example does not name kms.a.example', async () => {
  const l = await leaf({ subject: 'CN=*.a.example', san: [{ type: 'dns', value: '*.a.example' }] });
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /leaf certificate does not name kms\.a\.example/,
  );
});

test('CN is used when there is no SAN extension at all', async () => {
  const l = await leaf({ san: undefined });
  await verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] });
  const wrongCn = await leaf({ san: undefined, subject: 'CN=kms.c.example' });
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([wrongCn]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /leaf certificate does not name kms\.a\.example/,
  );
});

test('a SAN with only other names is refused even if the CN matches', async () => {
  const l = await leaf({
    san: [
      { type: 'dns', value: 'other.a.example' },
      { type: 'email', value: 'kms.a.example@a.example' },
      { type: 'url', value: 'https://kms.a.example/' },
    ],
  });
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /leaf certificate does not name kms\.a\.example/,
  );
  // Case-insensitive DNS match among several entries.
  const multi = await leaf({ san: [{ type: 'dns', value: 'other.a.example' }, { type: 'dns', value: 'KMS.A.EXAMPLE' }] });
  await verifyKmsCertificate({ jwk: await jwkFor([multi]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] });
});

test('an RSA 1024 leaf key is refused', async () => {
  const l = await leaf({ publicKey: smallKeys.publicKey });
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([l], smallKeys.publicKey), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /RSA key shorter than 2048 bits/,
  );
});

test('a leaf keyUsage without digitalSignature is refused; no keyUsage is fine', async () => {
  const l = await leaf({ keyUsage: 4 /* keyEncipherment only */ });
  await refused(
    verifyKmsCertificate({ jwk: await jwkFor([l]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] }),
    /leaf keyUsage lacks digitalSignature/,
  );
  const noKu = await leaf({ keyUsage: undefined });
  await verifyKmsCertificate({ jwk: await jwkFor([noKu]), authority: AUTHORITY, trustAnchorsPem: [pem(ca)] });
});

test('empty, garbage or malformed x5c is refused', async () => {
  const l = await leaf();
  const good = await jwkFor([l]);
  const anchors = [pem(ca)];
  const cases: unknown[] = [
    undefined,
    [],
    'not an array',
    [''],
    ['!!!not base64!!!'],
    ['aGVsbG8gd29ybGQ='], // base64, not a certificate
    [good.x5c[0]!.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')], // base64url, not base64
    [good.x5c[0] + 'AAAA'], // trailing data
    [42],
    Array.from({ length: 11 }, () => good.x5c[0]!),
  ];
  for (const x5c of cases) {
    await assert.rejects(
      verifyKmsCertificate({ jwk: { ...good, x5c: x5c as string[] }, authority: AUTHORITY, trustAnchorsPem: anchors }),
      CertificateError,
      `x5c ${JSON.stringify(x5c)?.slice(0, 60)} should be refused`,
    );
  }
});

test('parsePemCertificates returns the base64 DER of each CERTIFICATE block', () => {
  const text = `junk\n${pem(ca)}\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n${pem(otherCa)}`;
  assert.deepEqual(parsePemCertificates(text), [ca.toString('base64'), otherCa.toString('base64')]);
  assert.deepEqual(parsePemCertificates(''), []);
  assert.throws(() => parsePemCertificates('-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----'), CertificateError);
});

test('the leaf helpers and checkOwnCertificateChain', async () => {
  const l = await leaf();
  const jwk = await jwkFor([l]);
  await checkLeafNamesAuthority(jwk.x5c[0]!, AUTHORITY);
  await refused(checkLeafNamesAuthority(jwk.x5c[0]!, 'kms.c.example'), /does not name kms\.c\.example/);
  await checkLeafKeyMatchesJwk(jwk.x5c[0]!, jwk);
  const other = await crypto.subtle.exportKey('jwk', otherLeafKeys.publicKey);
  await refused(checkLeafKeyMatchesJwk(jwk.x5c[0]!, { n: other.n!, e: other.e! }), /leaf key does not match the JWK/);
  // No trust anchor or date needed, but the chain must be linked.
  await checkOwnCertificateChain({ x5c: [jwk.x5c[0]!, ca.toString('base64')], authority: AUTHORITY, jwk });
  await refused(
    checkOwnCertificateChain({ x5c: [jwk.x5c[0]!, otherCa.toString('base64')], authority: AUTHORITY, jwk }),
    /does not verify/,
  );
});
