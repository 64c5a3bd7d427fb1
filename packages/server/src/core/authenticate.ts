/**
 * Stage 2, authenticate (PROTOCOL.md §4 "Credentials", §6): who sent the request. A user or an
 * anonymous bearer by the bearer in `client.credential`, on every request; a peer KMS by its
 * signature (a JWS inside the JWE) — at the handshake over its certified static key, later with the
 * key that opened its channel. A channel belongs to the principal that opened it; a peer's request
 * marked `federated` with `onBehalfOf` acts for one of that peer's users.
 */
import { KmsError, Limits, isPlainText, peekHeader, type KmsRequest } from '@openkms/protocol';
import type { Channel } from '../channels.js';
import { auditIdentity, credentialHolder, principalId, type PeerPrincipal, type Principal } from '../identity/principal.js';
import { domainOf, isUserId, normalizeUserId } from '../identity/users.js';
import { peerOwning, type Opened } from './open.js';
import type { RequestRecord } from './record.js';
import { noteRequestId, onlyHandshake, parseJson, readRequest, text } from './request.js';

/** Bearer -> principal (identity/authenticator.ts). */
export interface BearerAuthenticator {
  authenticate(credential: KmsRequest['client']['credential'] | undefined): Promise<Principal>;
  /** Compliance access: the principal a bearer's holder reads as with `credential.onBehalfOf`. */
  actingFor(holder: Principal, onBehalfOf: string): Principal;
}

/** Peer proofs (federation/peer-proof.ts). */
export interface PeerProofs {
  verifyHandshake(jws: string, channelLifetimeMs: number): Promise<{ request: Record<string, unknown>; principal: PeerPrincipal }>;
  verify(jws: string, authority: string): Promise<Record<string, unknown>>;
}

export interface PeerDomains {
  byAuthority(authority: string): { domains: readonly string[] } | undefined;
}

/** A request with the principal it acts for and, when it came through one, the peer KMS. */
export interface Authenticated {
  request: KmsRequest;
  principal: Principal;
  peer?: PeerPrincipal;
}

export class Authentication {
  constructor(
    private readonly authority: string,
    private readonly bearers: BearerAuthenticator,
    private readonly proofs: PeerProofs,
    private readonly peers: PeerDomains,
    private readonly channelLifetimeMs: number,
    private readonly limiter: { allow(key: string): boolean },
  ) {}

  async authenticate(opened: Opened, record: RequestRecord): Promise<Authenticated> {
    const authenticated = opened.channel ? await this.onChannel(opened, opened.channel, record) : await this.handshake(opened, record);
    // Rate limits are per channel owner (the principal that handshook).
    const owner = opened.channel?.owner ?? credentialHolder(authenticated.principal);
    if (!this.limiter.allow(owner)) throw new KmsError('RATE_LIMITED', 'rate limited');
    return authenticated;
  }

  /** Under the static key: a user's (or bearer's) handshake, or a peer KMS's with its proof. */
  private async handshake(opened: Opened, record: RequestRecord): Promise<Authenticated> {
    if (opened.cty === 'JOSE') {
      const jws = text(opened.plaintext);
      const claimed = peekHeader(jws)?.kid;
      // Audited even when refused, cut to the id limit (never inside a surrogate pair); a kid that
      // is not plain text is not recorded: it could not be stored as it would be hashed.
      if (typeof claimed === 'string' && isPlainText(claimed)) record.peer = claimed.slice(0, Limits.maxIdChars).replace(/[\ud800-\udbff]$/, '');
      const verified = await this.proofs.verifyHandshake(jws, this.channelLifetimeMs);
      const request = onlyHandshake(readRequest(verified.request, record), this.authority);
      record.principal = record.peer = principalId(verified.principal);
      return { request, principal: verified.principal, peer: verified.principal };
    }
    const request = onlyHandshake(readRequest(parseJson(opened.plaintext, record), record), this.authority);
    return { request, principal: await this.bearer(request, record) };
  }

  /** Under a channel key: the channel's owner, proven again by this request's credential. */
  private async onChannel(opened: Opened, channel: Channel, record: RequestRecord): Promise<Authenticated> {
    record.op = 'unknown';
    const peerAuthority = peerOwning(channel);
    if (peerAuthority !== undefined) {
      record.peer = channel.owner;
      if (opened.cty !== 'JOSE') throw KmsError.unauthorized('a peer KMS signs every request (cty JOSE)');
      const request = readRequest(await this.proofs.verify(text(opened.plaintext), peerAuthority), record);
      const peer: PeerPrincipal = { kind: 'peer', authority: peerAuthority, domains: this.peers.byAuthority(peerAuthority)?.domains ?? [], expiresAt: channel.expiresAt };
      const principal = actingPrincipal(request, peer);
      record.principal = principalId(principal);
      return { request, principal, peer };
    }
    const raw = parseJson(opened.plaintext, record);
    if (opened.cty !== undefined) {
      noteRequestId(raw, record); // the refusal echoes the requestId like any other 400
      throw new KmsError('PAYLOAD_INVALID', 'nested messages are for peer KMS channels');
    }
    const request = readRequest(raw, record);
    const principal = await this.bearer(request, record);
    if (credentialHolder(principal) !== channel.owner) throw KmsError.forbidden('the ephemeral key belongs to another principal');
    return { request, principal };
  }

  /**
   * The bearer's principal, or under compliance access the user it reads as. The bearer's holder
   * is audited as the principal and the user as onBehalfOf — as asked, when the request is refused.
   */
  private async bearer(request: KmsRequest, record: RequestRecord): Promise<Principal> {
    const holder = await this.bearers.authenticate(request.client.credential);
    record.principal = principalId(holder);
    const onBehalfOf = request.client.credential.onBehalfOf;
    if (onBehalfOf === undefined) return holder;
    record.onBehalfOf = onBehalfOf;
    const principal = this.bearers.actingFor(holder, onBehalfOf);
    record.onBehalfOf = auditIdentity(principal).onBehalfOf;
    return principal;
  }
}

/**
 * Whom a peer's request acts for: the user named by `onBehalfOf` when the request is
 * `federated` (this KMS then applies its own policy as if the user were local), else the peer
 * itself. The user must belong to one of the peer's domains: a peer speaks only for its own users.
 */
function actingPrincipal(request: KmsRequest, peer: PeerPrincipal): Principal {
  // Without onBehalfOf a peer speaks for itself (e.g. invalidations); §6 limits what it may do then.
  if (request.federated !== true || request.onBehalfOf === undefined) return peer;
  if (typeof request.onBehalfOf !== 'string') throw KmsError.badRequest('invalid field onBehalfOf: not a string');
  const id = normalizeUserId(request.onBehalfOf, peer.domains[0] ?? '');
  if (!isUserId(id) || !peer.domains.includes(domainOf(id))) {
    throw KmsError.forbidden(`onBehalfOf ${request.onBehalfOf} is not a user of kms://${peer.authority}'s domains`);
  }
  return { kind: 'user', id, domain: domainOf(id), roles: [], orgId: domainOf(id), expiresAt: peer.expiresAt };
}
