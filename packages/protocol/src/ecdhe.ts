/**
 * K_ephemeral = HKDF-SHA-256(salt = empty, IKM = ECDH shared secret (x-coordinate), info = empty,
 * L = 32) over P-256 (PROTOCOL.md §4; equal to node-jose's "ECDH-HKDF", which node-kms clients use).
 * WebCrypto only, so it runs in browsers and in Node alike.
 */
export interface EcPublicJwk {
  kty: 'EC';
  crv: 'P-256';
  x: string;
  y: string;
}

const subtle = globalThis.crypto.subtle;
const P256 = { name: 'ECDH', namedCurve: 'P-256' } as const;

export async function generateEphemeralKeyPair(): Promise<{ privateKey: CryptoKey; publicJwk: EcPublicJwk }> {
  const pair = (await subtle.generateKey(P256, true, ['deriveBits'])) as CryptoKeyPair;
  const jwk = await subtle.exportKey('jwk', pair.publicKey);
  return { privateKey: pair.privateKey, publicJwk: { kty: 'EC', crv: 'P-256', x: jwk.x!, y: jwk.y! } };
}

/** Imports a peer's P-256 public key; throws when the point is not on the curve. */
export async function importEcPublicKey(jwk: EcPublicJwk): Promise<CryptoKey> {
  return subtle.importKey('jwk', { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y, ext: true }, P256, true, []);
}

export async function deriveChannelKey(privateKey: CryptoKey, peerPublic: CryptoKey): Promise<Uint8Array> {
  const shared = await subtle.deriveBits({ name: 'ECDH', public: peerPublic }, privateKey, 256);
  const ikm = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveBits']);
  const bits = await subtle.deriveBits(
    { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: new Uint8Array(0) },
    ikm,
    256,
  );
  return new Uint8Array(bits);
}
