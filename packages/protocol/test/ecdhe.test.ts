/**
 * K_ephemeral is HKDF-SHA-256 over the ECDH x-coordinate with empty salt and info (PROTOCOL.md §4):
 * the WebCrypto derivation must equal an independent node:crypto computation on both sides.
 */
import assert from 'node:assert/strict';
import { createECDH, hkdfSync } from 'node:crypto';
import { test } from 'node:test';
import { deriveChannelKey, generateEphemeralKeyPair, importEcPublicKey } from '../src/ecdhe.js';

test('both sides derive the same key, equal to HKDF-SHA-256(ECDH x, empty salt, empty info)', async () => {
  for (let i = 0; i < 20; i++) {
    const server = await generateEphemeralKeyPair();
    const client = createECDH('prime256v1');
    client.generateKeys();
    const pub = client.getPublicKey();
    const clientJwk = { kty: 'EC' as const, crv: 'P-256' as const, x: pub.subarray(1, 33).toString('base64url'), y: pub.subarray(33).toString('base64url') };
    const serverSide = await deriveChannelKey(server.privateKey, await importEcPublicKey(clientJwk));
    const serverPoint = Buffer.concat([Buffer.from([4]), Buffer.from(server.publicJwk.x, 'base64url'), Buffer.from(server.publicJwk.y, 'base64url')]);
    const shared = client.computeSecret(serverPoint);
    const expected = Buffer.from(hkdfSync('sha256', shared, Buffer.alloc(0), Buffer.alloc(0), 32));
    assert.deepEqual(Buffer.from(serverSide), expected);
  }
});

test('a point not on the curve is refused', async () => {
  const { publicJwk } = await generateEphemeralKeyPair();
  const y = Buffer.from(publicJwk.y, 'base64url');
  y[31] = y[31]! ^ 1;
  await assert.rejects(importEcPublicKey({ ...publicJwk, y: y.toString('base64url') }));
});
