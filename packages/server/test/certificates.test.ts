import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, createPrivateKey, X509Certificate } from 'node:crypto';
import { verifyKmsCertificate } from '@openkms/protocol';
import {
  createCa,
  generateStaticKeyPem,
  issueKmsCertificate,
  loadStaticIdentity,
  type CaMaterial,
} from '../src/identity/certificates.js';

const AUTHORITY = 'kms.a.example';
let ca: CaMaterial;
let keyPem: string;

function publicPem(privatePem: string): string {
  return createPublicKey(privatePem).export({ type: 'spki', format: 'pem' }) as string;
}

before(async () => {
  [ca, keyPem] = await Promise.all([createCa('OpenKMS test CA'), generateStaticKeyPem()]);
});

test('createCa makes a CA certificate with its key', () => {
  const cert = new X509Certificate(ca.certPem);
  assert.equal(cert.ca, true);
  assert.match(cert.subject, /CN=OpenKMS test CA/);
  assert.equal(cert.checkIssued(cert), true);
  assert.equal(cert.verify(cert.publicKey), true);
  assert.ok(cert.publicKey.equals(createPublicKey(createPrivateKey(ca.keyPem))));
  const details = cert.publicKey.asymmetricKeyDetails;
  assert.ok((details?.modulusLength ?? 0) >= 2048);
  assert.ok(new Date(cert.validTo).getTime() > Date.now() + 3000 * 86_400_000);
  assert.match(ca.keyPem, /^-----BEGIN PRIVATE KEY-----/);
});

test('generateStaticKeyPem is an RSA 2048 PKCS#8 key', () => {
  assert.match(keyPem, /^-----BEGIN PRIVATE KEY-----/);
  const key = createPrivateKey(keyPem);
  assert.equal(key.asymmetricKeyType, 'rsa');
  assert.equal(key.asymmetricKeyDetails?.modulusLength, 2048);
});

test('createCa + issueKmsCertificate + loadStaticIdentity round-trip', async () => {
  const leafPem = await issueKmsCertificate({ ca, authority: AUTHORITY, publicKeyPem: publicPem(keyPem) });
  const leaf = new X509Certificate(leafPem);
  const caCert = new X509Certificate(ca.certPem);
  assert.equal(leaf.ca, false);
  assert.equal(leaf.checkIssued(caCert), true);
  assert.equal(leaf.verify(caCert.publicKey), true);
  assert.equal(leaf.subjectAltName, `DNS:${AUTHORITY}`);
  assert.match(leaf.subject, new RegExp(`CN=${AUTHORITY.replace(/\./g, '\\.')}`));
  assert.equal(leaf.checkHost(AUTHORITY), AUTHORITY);
  assert.ok(new Date(leaf.validTo).getTime() <= new Date(caCert.validTo).getTime());

  const identity = await loadStaticIdentity({ keyPem, certChainPem: leafPem, authority: AUTHORITY });
  const jwk = identity.publicJwk;
  assert.deepEqual(Object.keys(jwk).sort(), ['e', 'kid', 'kty', 'n', 'x5c']);
  assert.equal(jwk.kty, 'RSA');
  assert.equal(jwk.kid, `kms://${AUTHORITY}`);
  assert.equal(jwk.x5c.length, 1);
  assert.equal(jwk.x5c[0], leaf.raw.toString('base64'));
  const expected = createPublicKey(keyPem).export({ format: 'jwk' });
  assert.equal(jwk.n, expected.n);
  assert.equal(jwk.e, expected.e);
  assert.equal(identity.privateKey.type, 'private');
  assert.ok(createPublicKey(identity.privateKey).equals(createPublicKey(keyPem)));
  assert.equal(JSON.stringify(jwk).includes('"d"'), false);

  // What a peer or a client checks (PROTOCOL.md §6) passes against the CA.
  await verifyKmsCertificate({ jwk, authority: AUTHORITY, trustAnchorsPem: [ca.certPem] });
  // … and a chain file that includes the CA is published as is, leaf first.
  const withCa = await loadStaticIdentity({ keyPem, certChainPem: leafPem + ca.certPem, authority: AUTHORITY });
  assert.deepEqual(withCa.publicJwk.x5c, [leaf.raw.toString('base64'), caCert.raw.toString('base64')]);
  await verifyKmsCertificate({ jwk: withCa.publicJwk, authority: AUTHORITY, trustAnchorsPem: [ca.certPem] });
});

test('loadStaticIdentity refuses a key that is not the certificate key', async () => {
  const leafPem = await issueKmsCertificate({ ca, authority: AUTHORITY, publicKeyPem: publicPem(keyPem) });
  const otherKey = await generateStaticKeyPem();
  await assert.rejects(
    loadStaticIdentity({ keyPem: otherKey, certChainPem: leafPem, authority: AUTHORITY }),
    /leaf key does not match/,
  );
});

test('loadStaticIdentity refuses a certificate for another authority, an empty chain, a bad order', async () => {
  const leafPem = await issueKmsCertificate({ ca, authority: AUTHORITY, publicKeyPem: publicPem(keyPem) });
  await assert.rejects(
    loadStaticIdentity({ keyPem, certChainPem: leafPem, authority: 'kms.c.example' }),
    /does not name kms\.c\.example/,
  );
  await assert.rejects(loadStaticIdentity({ keyPem, certChainPem: '', authority: AUTHORITY }), /no CERTIFICATE/);
  await assert.rejects(
    loadStaticIdentity({ keyPem, certChainPem: ca.certPem + leafPem, authority: AUTHORITY }),
    /static certificate chain/,
  );
  await assert.rejects(
    loadStaticIdentity({ keyPem: 'not a key', certChainPem: leafPem, authority: AUTHORITY }),
    /not a readable PEM private key/,
  );
});

test('issueKmsCertificate refuses a CA key that does not match the CA certificate', async () => {
  const other = await createCa('Other CA', { validDays: 30 });
  await assert.rejects(
    issueKmsCertificate({
      ca: { certPem: ca.certPem, keyPem: other.keyPem },
      authority: AUTHORITY,
      publicKeyPem: publicPem(keyPem),
    }),
    /CA key does not match/,
  );
  await assert.rejects(
    issueKmsCertificate({ ca, authority: '*.a.example', publicKeyPem: publicPem(keyPem) }),
    /not a DNS name/,
  );
});

test('a leaf never outlives its CA', async () => {
  const shortCa = await createCa('Short CA', { validDays: 10 });
  const leafPem = await issueKmsCertificate({
    ca: shortCa,
    authority: AUTHORITY,
    publicKeyPem: publicPem(keyPem),
    validDays: 825,
  });
  const leaf = new X509Certificate(leafPem);
  assert.ok(new Date(leaf.validTo).getTime() <= new Date(new X509Certificate(shortCa.certPem).validTo).getTime());
});
