/**
 * Federation peers (PROTOCOL.md §6 "Peers"): lookups by authority and domain, and the refusals
 * of validatePeers — a peer claiming this KMS's domain or another peer's (case-insensitively),
 * a peer with this KMS's authority, two peers with one authority, trust anchors that hold no
 * certificate.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, parseConfig, type KmsConfig } from '../../src/config.js';
import { PeerRegistry, validatePeers } from '../../src/federation/peers.js';
import { createCa } from '../../src/identity/certificates.js';

let caB: string;
let caC: string;

before(async () => {
  [caB, caC] = await Promise.all([createCa('kms.b.example CA').then((c) => c.certPem), createCa('kms.c.example CA').then((c) => c.certPem)]);
});

function configWith(peers: unknown[]): KmsConfig {
  return parseConfig(
    {
      authority: 'kms.a.example',
      domains: ['a.example', 'A.Example.Org'],
      staticKey: { key: 'static-key.pem', cert: 'static-cert.pem' },
      peers,
    },
    '/tmp',
  );
}

const peerB = () => ({ authority: 'kms.b.example', domains: ['B.Example', 'b.example.org'], endpoint: 'https://kms.b.example', trustAnchors: [caB] });
const peerC = () => ({ authority: 'kms.c.example', domains: ['c.example'], endpoint: 'http://127.0.0.1:7002', trustAnchors: [caC, caB] });

function refused(config: KmsConfig, pattern: RegExp): void {
  assert.throws(
    () => validatePeers(config),
    (err: unknown) => err instanceof ConfigError && pattern.test(err.message),
  );
}

describe('PeerRegistry', () => {
  test('finds peers by authority and by domain, case-insensitively', () => {
    const registry = new PeerRegistry(configWith([peerB(), peerC()]));
    assert.equal(registry.all().length, 2);
    assert.equal(registry.byAuthority('kms.b.example')?.endpoint, 'https://kms.b.example');
    assert.equal(registry.byAuthority('KMS.C.Example')?.authority, 'kms.c.example');
    assert.equal(registry.byDomain('b.example')?.authority, 'kms.b.example');
    assert.equal(registry.byDomain('B.EXAMPLE.ORG')?.authority, 'kms.b.example');
    assert.equal(registry.byDomain('c.example')?.authority, 'kms.c.example');
    assert.deepEqual(registry.byDomain('b.example')?.domains, ['b.example', 'b.example.org']);
    assert.equal(registry.byAuthority('c.example'), undefined, 'a domain is not an authority');
    assert.equal(registry.byAuthority('kms.c.example')?.trustAnchors.length, 2);
  });

  test('knows what is not a peer', () => {
    const registry = new PeerRegistry(configWith([peerB()]));
    assert.equal(registry.byAuthority('kms.a.example'), undefined, 'this KMS is not a peer');
    assert.equal(registry.byDomain('a.example'), undefined, "this KMS's domain is not a peer's");
    assert.equal(registry.byDomain('sub.b.example'), undefined, 'no suffix matching');
    assert.equal(registry.isPeerAuthority('kms.b.example'), true);
    assert.equal(registry.isPeerAuthority('KMS.B.EXAMPLE'), true);
    assert.equal(registry.isPeerAuthority('kms.a.example'), false);
    assert.equal(registry.isPeerAuthority('b.example'), false);
  });

  test('no peers', () => {
    const registry = new PeerRegistry(configWith([]));
    assert.deepEqual(registry.all(), []);
    assert.equal(registry.byDomain('b.example'), undefined);
  });

  test('refuses conflicting names too', () => {
    assert.throws(() => new PeerRegistry(configWith([peerB(), { ...peerC(), domains: ['b.example'] }])), ConfigError);
  });
});

describe('validatePeers', () => {
  test('accepts distinct peers', () => {
    validatePeers(configWith([]));
    validatePeers(configWith([peerB(), peerC()]));
  });

  test("refuses a peer claiming one of this KMS's domains (any case)", () => {
    refused(configWith([{ ...peerB(), domains: ['b.example', 'a.example'] }]), /domain a\.example is one of this KMS's own domains/);
    refused(configWith([{ ...peerB(), domains: ['A.EXAMPLE.ORG'] }]), /domain a\.example\.org is one of this KMS's own domains/);
  });

  test('refuses a hand-built config that was not lower-cased', () => {
    const config = configWith([peerB()]);
    refused({ ...config, domains: ['B.Example'] }, /domain b\.example is one of this KMS's own domains/);
  });

  test("refuses a peer claiming another peer's domain (any case)", () => {
    refused(configWith([peerB(), { ...peerC(), domains: ['c.example', 'B.EXAMPLE'] }]), /peers\[1\] \(kms\.c\.example\): domain b\.example is already served by peer kms\.b\.example/);
  });

  test("refuses a peer with this KMS's authority", () => {
    refused(configWith([{ ...peerB(), authority: 'kms.a.example' }]), /this KMS's own authority/);
  });

  test('refuses two peers with one authority', () => {
    refused(configWith([peerB(), { ...peerC(), authority: 'kms.b.example' }]), /authority kms\.b\.example is already peers\[0\]/);
  });

  test('refuses trust anchors without a parseable certificate', () => {
    const notBase64 = '-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n';
    const notX509 = `-----BEGIN CERTIFICATE-----\n${Buffer.from('hello, not a certificate').toString('base64')}\n-----END CERTIFICATE-----\n`;
    const keyOnly = '-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY----- BEGIN CERTIFICATE';
    for (const bad of [notBase64, notX509, keyOnly]) {
      refused(configWith([{ ...peerB(), trustAnchors: [caB, bad] }]), /peers\[0\] \(kms\.b\.example\): trustAnchors\[1\]/);
    }
    refused({ ...configWith([peerB()]), peers: [{ ...peerB(), trustAnchors: [] }] }, /trustAnchors is empty/);
  });

  test('accepts an entry holding several certificates', () => {
    validatePeers(configWith([{ ...peerB(), trustAnchors: [caB + caC] }]));
  });
});
