/**
 * The channels this KMS opens to its peers (PROTOCOL.md §6): the client SDK in peer mode, one per
 * peer, every request signed by this KMS's static key inside the channel JWE. The asking side
 * (copies, forwarding) and the invalidation push share them. Also here: the one deadline a user's
 * federated request gets, and how a peer's failure is reported to the user.
 */
import { KmsClient, type Answer } from '@openkms/client';
import { KmsError, hasCode, type ErrorCode, type MessageCodec } from '@openkms/protocol';
import type { KeyObject } from 'node:crypto';
import type { AuditEntry } from '../audit/audit.js';
import type { UserPrincipal } from '../identity/principal.js';
import type { Peer, PeerRegistry } from './peers.js';

export interface PeerChannelsOptions {
  authority: string;
  peers: PeerRegistry;
  staticKey: { privateKey: KeyObject; publicJwk: Record<string, unknown>; kid: string };
  codec: MessageCodec;
  /** federation.peerTimeout, in ms. */
  timeoutMs: number;
  now: () => number;
  audit: (entry: AuditEntry) => Promise<void>;
}

/** A's verdicts on the user's request that reach the user as they are (a read: 403/404). */
const READ_VERDICTS: readonly ErrorCode[] = ['NOT_AUTHORIZED', 'NOT_FOUND'];
/** A forwarded change: any refusal of the request itself reaches the user. */
const FORWARD_VERDICTS: readonly ErrorCode[] = [
  'INVALID_FIELD',
  'PAYLOAD_INVALID',
  'KEY_EXPIRED',
  'CREDENTIAL_INVALID',
  'NOT_AUTHORIZED',
  'NOT_FOUND',
  'KEY_ALREADY_BOUND',
  'TOO_LARGE',
  'RATE_LIMITED',
];

export class PeerChannels {
  private readonly clients = new Map<string, KmsClient>();

  constructor(private readonly o: PeerChannelsOptions) {}

  /** The peer that serves `authority`; a 404 when there is none (never configured, or removed). */
  peerOf(authority: string): Peer {
    const peer = this.o.peers.byAuthority(authority);
    if (!peer) throw KmsError.notFound(`unknown KMS authority ${authority}`);
    return peer;
  }

  /** Sends one request to a peer on this KMS's channel to it (opened on first use). */
  exchange(peer: Peer, body: { method: string; uri: string; [member: string]: unknown }): Promise<Answer> {
    return this.client(peer).exchange(body);
  }

  private client(peer: Peer): KmsClient {
    let client = this.clients.get(peer.authority);
    if (!client) {
      const { privateKey, publicJwk, kid } = this.o.staticKey;
      client = new KmsClient({
        url: peer.endpoint.replace(/\/+$/, ''),
        authority: peer.authority,
        trustAnchors: peer.trustAnchors,
        clientId: kid,
        timeoutMs: this.o.timeoutMs,
        debounceMs: 1,
        now: this.o.now,
        peer: { kid, jwk: publicJwk, sign: (payload) => this.o.codec.signStatic(payload, privateKey, kid) },
      });
      this.clients.set(peer.authority, client);
    }
    return client;
  }

  /**
   * The user waits at most one peer timeout for a whole federated request, however many steps
   * (discovery, handshake, pages) it takes; past it the answer is 504. Work under way may still
   * finish and refresh the copy for the next request.
   */
  withinDeadline<T>(work: Promise<T>, authority: string): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new KmsError('PEER_TIMEOUT', `kms://${authority} did not answer in time`)), this.o.timeoutMs);
    });
    work.catch(() => undefined); // a late failure after the deadline is nobody's to handle
    return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
  }

  /**
   * A peer's failure as this KMS reports it to its user (PROTOCOL.md §6): the peer's verdict on
   * the user's request passes (a read: 403/404; a forwarded change: any refusal of the request);
   * a refusal of this KMS's channel, or anything else, is the peer failing (502, or 504 in time).
   */
  failure(err: unknown, peer: Peer, forwarded = false): KmsError {
    const who = `kms://${peer.authority}`;
    if (!(err instanceof KmsError)) return new KmsError('PEER_FAILED', `${who} failed`, { cause: err });
    const channelRefused = err.handshake || err.code === 'CERTIFICATE_REFUSED';
    if (!channelRefused && (forwarded ? FORWARD_VERDICTS : READ_VERDICTS).includes(err.code)) return new KmsError(err.code, `${who}: ${err.reason}`);
    if (hasCode(err, 'KMS_TIMEOUT', 'PEER_TIMEOUT')) return new KmsError('PEER_TIMEOUT', `${who} did not answer in time`);
    return new KmsError('PEER_FAILED', `${who} failed: ${err.status} ${err.reason}`, { cause: err });
  }

  /** Audits one exchange with a peer made for `principal` (a user, or this KMS itself). */
  audit(principal: UserPrincipal | 'self', peer: Peer, method: string, uri: string, status: number): Promise<void> {
    return this.o.audit({
      time: this.o.now(),
      principal: principal === 'self' ? `kms://${this.o.authority}` : principal.id,
      clientId: 'federation',
      method,
      uri,
      status,
      peer: `kms://${peer.authority}`,
      requestId: null,
    });
  }

  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map((c) => c.close()));
    this.clients.clear();
  }
}
