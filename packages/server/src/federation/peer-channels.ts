/**
 * The channels this KMS opens to its peers (PROTOCOL.md §6): the client SDK in peer mode, one per
 * peer, every request signed by this KMS's static key inside the channel JWE. The asking side
 * (copies, forwarding) and the invalidation push share them. Also here: the one deadline a user's
 * federated request gets, and how a peer's failure is reported to the user.
 */
import { KmsClient, type Answer } from '@openkms/client';
import { ErrorCodes, KmsError, WIRE_ERROR_CODES, hasCode, type ErrorCode, type MessageCodec } from '@openkms/protocol';
import type { KeyObject } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { AuditEntry } from '../audit/audit.js';
import { describeError, type Logger } from '../logger.js';
import { auditIdentity, type UserPrincipal } from '../identity/principal.js';
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
  logger: Logger;
  /** Told of every request sent to a peer, with its outcome (metrics). */
  onCall?: (call: PeerCall) => void;
}

/**
 * How a request to a peer ended: answered (`ok`), refused with a status of the class (`4xx`,
 * `5xx`), never reached it or lost on the way (`unreachable`), not answered in time (`timeout`),
 * answered with something this KMS refuses — its certificate, discovery or answer (`invalid`) —
 * or failed here (`error`). A closed set: the label stays bounded.
 */
export type PeerOutcome = 'ok' | '4xx' | '5xx' | 'unreachable' | 'timeout' | 'invalid' | 'error';

export interface PeerCall {
  /** The peer's authority (configured peers only: a bounded set). */
  peer: string;
  outcome: PeerOutcome;
  seconds: number;
}

export function peerOutcomeOf(err: unknown): PeerOutcome {
  if (!(err instanceof KmsError)) return 'error';
  switch (err.code) {
    case 'KMS_UNREACHABLE':
    case 'CLIENT_CLOSED':
      return 'unreachable';
    case 'KMS_TIMEOUT':
    case 'PEER_TIMEOUT':
      return 'timeout';
    case 'CERTIFICATE_REFUSED':
    case 'DISCOVERY_INVALID':
    case 'ANSWER_INVALID':
      return 'invalid';
    default:
      return err.status >= 400 && err.status < 500 ? '4xx' : err.status >= 500 && err.status < 600 ? '5xx' : 'error';
  }
}

/** A's verdicts on the user's request that reach the user as they are (a read: 403/404). */
const READ_VERDICTS: readonly ErrorCode[] = ['NOT_AUTHORIZED', 'NOT_FOUND'];
/** A forwarded change: any refusal of the request itself (a KMS's 4xx but a reset) reaches the user. */
const FORWARD_VERDICTS: readonly ErrorCode[] = WIRE_ERROR_CODES.filter((code) => {
  const { status } = ErrorCodes[code];
  return status >= 400 && status < 500 && code !== 'CHANNEL_RESET';
});

export class PeerChannels {
  /** One client per peer, with the configured entry it was made from. */
  private readonly clients = new Map<string, { peer: Peer; client: KmsClient }>();

  constructor(private readonly o: PeerChannelsOptions) {}

  /** The peer that serves `authority`; a 404 when there is none (never configured, or removed). */
  peerOf(authority: string): Peer {
    const peer = this.o.peers.byAuthority(authority);
    if (!peer) throw KmsError.notFound(`unknown KMS authority ${authority}`);
    return peer;
  }

  /** Sends one request to a peer on this KMS's channel to it (opened on first use). */
  async exchange(peer: Peer, body: { method: string; uri: string; [member: string]: unknown }): Promise<Answer> {
    const started = performance.now();
    const report = (outcome: PeerOutcome) => this.o.onCall?.({ peer: peer.authority, outcome, seconds: (performance.now() - started) / 1000 });
    try {
      const answer = await this.client(peer).exchange(body);
      report('ok');
      return answer;
    } catch (err) {
      report(peerOutcomeOf(err));
      throw err;
    }
  }

  private client(asked: Peer): KmsClient {
    // The registry's current entry: after a reload (SIGHUP) a changed endpoint or CA gets a new client.
    const peer = this.o.peers.byAuthority(asked.authority) ?? asked;
    const held = this.clients.get(peer.authority);
    if (held?.peer === peer) return held.client;
    if (held) void held.client.close().catch(() => {});
    const { privateKey, publicJwk, kid } = this.o.staticKey;
    const client = new KmsClient({
      url: peer.endpoint.replace(/\/+$/, ''),
      authority: peer.authority,
      trustAnchors: peer.trustAnchors,
      clientId: kid,
      timeoutMs: this.o.timeoutMs,
      debounceMs: 1,
      now: this.o.now,
      peer: { kid, jwk: publicJwk, sign: (payload) => this.o.codec.signStatic(payload, privateKey, kid) },
    });
    this.clients.set(peer.authority, { peer, client });
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
   * The user learns what failed, not how: addresses, ports and network errors of the way to the
   * peer are for this KMS's operator, who finds them in the log.
   */
  failure(err: unknown, peer: Peer, forwarded = false): KmsError {
    const who = `kms://${peer.authority}`;
    if (err instanceof KmsError && !err.handshake && err.code !== 'CERTIFICATE_REFUSED' && (forwarded ? FORWARD_VERDICTS : READ_VERDICTS).includes(err.code)) {
      return new KmsError(err.code, `${who}: ${err.reason}`);
    }
    this.o.logger.warn({ peer: who, code: err instanceof KmsError ? err.code : undefined, err: describeError(err), cause: describeError(err instanceof Error ? err.cause : undefined) }, 'federation: peer failed');
    if (hasCode(err, 'KMS_TIMEOUT', 'PEER_TIMEOUT')) return new KmsError('PEER_TIMEOUT', `${who} did not answer in time`);
    if (!(err instanceof KmsError)) return new KmsError('PEER_FAILED', `${who} failed`, { cause: err });
    return new KmsError('PEER_FAILED', `${who} failed: ${peerFailureSummary(err)}`, { cause: err });
  }

  /** Audits one exchange with a peer made for `principal` (a user, or this KMS itself). */
  audit(principal: UserPrincipal | 'self', peer: Peer, method: string, uri: string, status: number): Promise<void> {
    return this.o.audit({
      time: this.o.now(),
      ...(principal === 'self' ? { principal: `kms://${this.o.authority}`, onBehalfOf: null } : auditIdentity(principal)),
      clientId: 'federation',
      method,
      uri,
      status,
      peer: `kms://${peer.authority}`,
      requestId: null,
    });
  }

  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map(({ client }) => client.close()));
    this.clients.clear();
  }
}

/** What a user is told of a peer's failure: the kind of failure, never the network detail. */
function peerFailureSummary(err: KmsError): string {
  if (err.handshake) return `${err.status} handshake refused`;
  switch (err.code) {
    case 'CERTIFICATE_REFUSED':
      return 'its certificate was refused';
    case 'DISCOVERY_INVALID':
      return 'its discovery document was refused';
    case 'KMS_UNREACHABLE':
    case 'CLIENT_CLOSED':
      return 'unreachable';
    case 'ANSWER_INVALID':
      return 'its answer was refused';
    default:
      return `${err.status} ${err.code}`;
  }
}
