/**
 * Proof of possession for the server-to-server channel (PROTOCOL.md §6). A peer KMS's messages
 * nest a JWS, signed PS256 by its static key, inside the JWE; its payload is the request plus `aud`
 * (this KMS) and `iat`. At the handshake the peer is found by the JWS kid, its certificate chain
 * (`credential.jwk.x5c`) is checked against that peer's trust anchors, and the signature verified;
 * the key is then remembered for the channel's later requests.
 */
import { compactVerify, decodeProtectedHeader, importJWK, type CryptoKey } from 'jose';
import { CertificateError, KmsError, verifyKmsCertificate } from '@openkms/protocol';
import type { PeerPrincipal } from '../identity/principal.js';
import type { PeerRegistry } from './peers.js';
import { MAX_SEEN_PER_PEER, MAX_SKEW_SECONDS } from '../limits.js';


const dec = new TextDecoder();

function decodePayload(jws: string): Record<string, unknown> {
  const part = jws.split('.')[1] ?? '';
  try {
    const value = JSON.parse(dec.decode(Buffer.from(part, 'base64url'))) as unknown;
    if (value && typeof value === 'object' && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // fall through
  }
  throw KmsError.badRequest('payload is not a JSON object');
}

export class PeerVerifier {
  /** Verified static keys of peers, by authority, from their latest handshake. */
  private readonly keys = new Map<string, CryptoKey>();
  /** requestIds of signed requests already accepted, per peer, until they leave the iat window. */
  private readonly seen = new Map<string, Map<string, number>>();

  constructor(
    private readonly self: string,
    private readonly peers: PeerRegistry,
    private readonly now: () => number,
  ) {}

  private peerOf(jws: string): { authority: string } {
    let header: { alg?: unknown; kid?: unknown };
    try {
      header = decodeProtectedHeader(jws);
    } catch {
      throw KmsError.badRequest('a nested message must be a compact JWS');
    }
    if (header.alg !== 'PS256' || typeof header.kid !== 'string' || !header.kid.startsWith('kms://')) {
      throw KmsError.unauthorized('peer signature must be PS256 with kid kms://<authority>');
    }
    return { authority: header.kid.slice('kms://'.length).toLowerCase() };
  }

  /** Checks freshness and audience, which bind a signed request to this KMS and to now. */
  private checkClaims(payload: Record<string, unknown>): void {
    if (payload.aud !== `kms://${this.self}`) throw KmsError.unauthorized('peer request is not addressed to this KMS (aud)');
    const iat = payload.iat;
    if (typeof iat !== 'number' || Math.abs(iat - this.now() / 1000) > MAX_SKEW_SECONDS) {
      throw KmsError.unauthorized('peer request iat missing or more than 300 s off');
    }
  }

  /** The handshake: certificate checks, signature, claims. Returns the request and the peer. */
  async verifyHandshake(jws: string, channelLifetimeMs: number): Promise<{ request: Record<string, unknown>; principal: PeerPrincipal }> {
    const { authority } = this.peerOf(jws);
    const peer = this.peers.byAuthority(authority);
    if (!peer) throw KmsError.forbidden(`kms://${authority} is not a configured peer`);
    const unverified = decodePayload(jws);
    const jwk = (unverified.client as { credential?: { jwk?: Record<string, unknown> } } | undefined)?.credential?.jwk;
    if (!jwk || jwk.kid !== `kms://${authority}`) throw KmsError.unauthorized('credential.jwk must be the peer static key with kid = the signature kid');
    try {
      await verifyKmsCertificate({
        jwk: jwk as { kty: string; kid?: string; n?: string; e?: string; x5c?: string[] },
        authority,
        trustAnchorsPem: peer.trustAnchors,
        now: new Date(this.now()),
      });
    } catch (err) {
      if (err instanceof CertificateError) throw KmsError.unauthorized(`peer certificate refused: ${err.message}`);
      throw err;
    }
    const key = (await importJWK({ kty: 'RSA', n: jwk.n as string, e: jwk.e as string }, 'PS256')) as CryptoKey;
    const request = await this.verifyWith(jws, key);
    this.checkFresh(authority, request);
    this.keys.set(authority, key);
    return { request, principal: { kind: 'peer', authority, domains: peer.domains, expiresAt: this.now() + channelLifetimeMs } };
  }

  /**
   * A later request on a peer channel, signed by the key that opened it. Without that key (a
   * restart forgot it) the answer is a reset, so the peer handshakes again.
   */
  async verify(jws: string, authority: string): Promise<Record<string, unknown>> {
    if (this.peerOf(jws).authority !== authority) throw KmsError.forbidden('signature kid is not the channel owner');
    if (!this.peers.byAuthority(authority)) throw KmsError.forbidden(`kms://${authority} is no longer a configured peer`);
    const key = this.keys.get(authority);
    if (!key) throw KmsError.reset('peer key unknown: handshake again');
    const request = await this.verifyWith(jws, key);
    this.checkFresh(authority, request);
    return request;
  }

  /**
   * A signed request is accepted once. `iat` bounds the window in which a captured message could
   * be replayed (300 s each way); within it, requestIds already seen from that peer are refused.
   */
  private checkFresh(authority: string, payload: Record<string, unknown>): void {
    const id = payload.requestId;
    if (typeof id !== 'string' && typeof id !== 'number') throw KmsError.badRequest('invalid field requestId: missing');
    let seen = this.seen.get(authority);
    if (!seen) this.seen.set(authority, (seen = new Map()));
    const now = this.now();
    const key = `${typeof id}:${id}`;
    const until = seen.get(key);
    if (until !== undefined && until > now) throw KmsError.unauthorized('peer request replayed (requestId already seen)');
    if (seen.size >= MAX_SEEN_PER_PEER) {
      for (const [k, t] of seen) if (t <= now) seen.delete(k);
      // Still full: drop the oldest; iat keeps anything older than the window out anyway.
      for (const k of seen.keys()) {
        if (seen.size < MAX_SEEN_PER_PEER) break;
        seen.delete(k);
      }
    }
    seen.set(key, now + 2 * MAX_SKEW_SECONDS * 1000);
  }

  private async verifyWith(jws: string, key: CryptoKey): Promise<Record<string, unknown>> {
    let payload: Record<string, unknown>;
    try {
      const verified = await compactVerify(jws, key, { algorithms: ['PS256'] });
      payload = JSON.parse(dec.decode(verified.payload)) as Record<string, unknown>;
    } catch {
      throw KmsError.unauthorized('peer signature does not verify');
    }
    if (!payload || typeof payload !== 'object' || Array.isArray(payload)) throw KmsError.badRequest('payload is not a JSON object');
    this.checkClaims(payload);
    return payload;
  }
}
