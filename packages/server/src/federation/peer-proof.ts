/**
 * Proof of possession for the server-to-server channel (PROTOCOL.md §6). A peer KMS's messages
 * nest a JWS, signed PS256 by its static key, inside the JWE; its payload is the request plus `aud`
 * (this KMS) and `iat`. At the handshake the peer is found by the JWS kid, its certificate chain
 * (`credential.jwk.x5c`) is checked against that peer's trust anchors, and the signature verified;
 * the key is then remembered for the channel's later requests. Each signed request is accepted
 * once across every node on the database (Store.acceptPeerRequest).
 */
import { compactVerify, decodeProtectedHeader, importJWK, type CryptoKey } from 'jose';
import { CertificateError, KmsError, Limits, parseBoundedJson, verifyKmsCertificate } from '@openkms/protocol';
import type { PeerPrincipal } from '../identity/principal.js';
import type { Store } from '../store/store.js';
import type { PeerRegistry } from './peers.js';
import { MAX_SEEN_PER_PEER, MAX_SKEW_SECONDS } from '../limits.js';

const dec = new TextDecoder();

function decodePayload(jws: string): Record<string, unknown> {
  const part = jws.split('.')[1] ?? '';
  try {
    const value = parseBoundedJson(dec.decode(Buffer.from(part, 'base64url')));
    if (value && typeof value === 'object' && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // fall through
  }
  throw KmsError.badRequest('payload is not a JSON object');
}

export class PeerVerifier {
  /** Verified static keys of peers, by authority, from their latest handshake. */
  private readonly keys = new Map<string, CryptoKey>();

  constructor(
    private readonly self: string,
    private readonly peers: PeerRegistry,
    /** Where accepted requestIds are remembered, for all nodes at once. */
    private readonly replays: Pick<Store, 'acceptPeerRequest'>,
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
    await this.acceptOnce(authority, request);
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
    await this.acceptOnce(authority, request);
    return request;
  }

  /**
   * A signed request is accepted once, by whichever node it reaches first. `iat` bounds the
   * window in which a captured message could be replayed (300 s each way, so 600 s from its
   * acceptance); within it, requestIds already accepted from that peer are refused. Called only
   * once the signature verified: nothing unauthenticated is written.
   */
  private async acceptOnce(authority: string, payload: Record<string, unknown>): Promise<void> {
    const id = payload.requestId;
    if (typeof id !== 'string' && typeof id !== 'number') throw KmsError.badRequest('invalid field requestId: missing');
    if ((typeof id === 'string' && id.length > Limits.maxIdChars) || (typeof id === 'number' && !Number.isSafeInteger(id))) {
      throw KmsError.badRequest(`invalid field requestId: a string of at most ${Limits.maxIdChars} characters or a safe integer`);
    }
    const now = this.now();
    const outcome = await this.replays.acceptPeerRequest(
      { peer: authority, requestId: `${typeof id}:${id}`, now, expiresAt: now + 2 * MAX_SKEW_SECONDS * 1000 },
      MAX_SEEN_PER_PEER,
    );
    if (outcome === 'replayed') throw KmsError.unauthorized('peer request replayed (requestId already seen)');
    if (outcome === 'over-limit') throw new KmsError('RATE_LIMITED', `peer sent more than ${MAX_SEEN_PER_PEER} signed requests within ${2 * MAX_SKEW_SECONDS} s`);
  }

  private async verifyWith(jws: string, key: CryptoKey): Promise<Record<string, unknown>> {
    let payload: Record<string, unknown>;
    try {
      const verified = await compactVerify(jws, key, { algorithms: ['PS256'] });
      payload = parseBoundedJson(dec.decode(verified.payload)) as Record<string, unknown>;
    } catch {
      throw KmsError.unauthorized('peer signature does not verify');
    }
    if (!payload || typeof payload !== 'object' || Array.isArray(payload)) throw KmsError.badRequest('payload is not a JSON object');
    this.checkClaims(payload);
    return payload;
  }
}
