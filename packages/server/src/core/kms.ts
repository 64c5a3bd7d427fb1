/**
 * The core: handle(compact message) -> compact message, as the draft's steps, each a stage of its
 * own: open (static or channel key) -> authenticate (bearer or peer proof, channel owner) ->
 * resolve (authority, operation, access) -> run (local, answer a peer, ask a peer) -> answer
 * (audit, seal for a user or a peer). It knows no transport and takes time from an injected clock;
 * its parts are handed in by the assembly module (server.ts). Every failure becomes an answer in
 * one place, and every request is audited before it is answered.
 */
import { performance } from 'node:perf_hooks';
import { KmsError, Status, type KmsResponse } from '@openkms/protocol';
import type { Channels } from '../channels.js';
import { describeError, type Logger } from '../logger.js';
import type { ChangeNotifier } from '../operations/context.js';
import type { SweepResult } from '../model.js';
import type { Store } from '../store/store.js';
import type { Answerer, Destination, RequestEvent } from './answer.js';
import type { Authentication } from './authenticate.js';
import { admitHandshake } from './handshake-limit.js';
import { peerOwning, type Opener } from './open.js';
import { newRecord } from './record.js';
import type { Resolver } from './resolve.js';
import type { Retries } from './retries.js';
import type { Runner } from './run.js';
import { extendRequestDeadline, withRequestDeadline } from '../store/deadline.js';

export type { RequestEvent } from './answer.js';

export interface PublicStaticJwk {
  kty: 'RSA';
  kid: string;
  n: string;
  e: string;
  x5c: string[];
}

/** How one sweep went: what it destroyed, swept at `at` (epoch ms), or that it failed. */
export type SweepOutcome = { ok: true; at: number; result: SweepResult } | { ok: false };

/** The parts of a KMS, wired together by the assembly module. */
export interface KmsParts {
  authority: string;
  domains: readonly string[];
  staticJwk: PublicStaticJwk;
  opener: Opener;
  authentication: Authentication;
  /** Handshakes per address (handshake-limit.ts), counted before their credential is checked. */
  handshakes: { allow(key: string): boolean };
  resolver: Resolver;
  runner: Runner;
  /** Creates and binds run once per (channel, requestId): their retries get the first answer. */
  retries: Retries;
  answerer: Answerer;
  /**
   * One deadline per request (store/deadline.ts): every storage call of a request, and its audit
   * write, share `storageMs` from its arrival; a request that asks a peer KMS has `peerMs` more.
   * None: calls have only the store's own per-call deadline, if any.
   */
  deadline?: { storageMs: number; peerMs: number };
  channels: Channels;
  store: Store;
  changes: ChangeNotifier;
  /** The id this process's audit records and heartbeat carry. */
  node: string;
  /** Whether this process leads the background work of its database, and work only the leader does. */
  leader: { readonly leads: boolean; whileLeading(start: () => () => void): void };
  /** Whether this node's caches follow the other nodes' writes now (coherence.ts). */
  coherence: { current(): boolean; readonly applied: number };
  lifetimes: { unboundGraceMs: number };
  logger: Logger;
  now: () => number;
  /** Closes what the parts hold open (peer channels, pushes under way, the audit log). */
  close(): Promise<void>;
}

/** Where a message came from, as the transport saw it. */
export interface MessageOrigin {
  /** The connection's remote address (behind a reverse proxy: the proxy's). */
  address?: string;
}

export class Kms {
  readonly authority: string;
  readonly staticKid: string;
  readonly channels: Channels;
  /** This process's node id (audit records, the nodes table). */
  readonly node: string;

  constructor(private readonly parts: KmsParts) {
    this.authority = parts.authority;
    this.staticKid = parts.staticJwk.kid;
    this.channels = parts.channels;
    this.node = parts.node;
  }

  /** Whether this process leads the background work of the processes on its database. */
  get leads(): boolean {
    return this.parts.leader.leads;
  }

  /** Runs `start` while this process leads (again each time it regains leadership); its result stops it. */
  whileLeading(start: () => () => void): void {
    this.parts.leader.whileLeading(start);
  }

  /** Told of every sweep and how it went (metrics). */
  onSweep: ((outcome: SweepOutcome) => void) | undefined;

  /** Told of every answered request (metrics). */
  get onRequest(): ((event: RequestEvent) => void) | undefined {
    return this.parts.answerer.onRequest;
  }
  set onRequest(listener: ((event: RequestEvent) => void) | undefined) {
    this.parts.answerer.onRequest = listener;
  }

  /** The document served at /.well-known/kms (PROTOCOL.md §2): public members only. */
  wellKnown(): { kmsCluster: string; rsaPublicKey: PublicStaticJwk; domains: string[] } {
    const { kty, kid, n, e, x5c } = this.parts.staticJwk;
    return { kmsCluster: `kms://${this.authority}`, rsaPublicKey: { kty, kid, n, e, x5c }, domains: [...this.parts.domains] };
  }

  /** The seq of the last change feed entry this node applied to its caches (while current). */
  changesApplied(): number {
    return this.parts.coherence.applied;
  }

  /**
   * Whether this node can serve now: its storage answers (within the storage deadline: the store
   * is wrapped by store/deadline.ts), it can write its audit log, without which it answers
   * nothing (answer.ts auditWritable), and its caches follow the other nodes' writes (it listens
   * to the change feed: coherence.ts).
   */
  async ready(): Promise<boolean> {
    if (!this.parts.coherence.current()) return false;
    try {
      await this.parts.store.ping();
    } catch {
      return false;
    }
    return this.parts.answerer.auditWritable();
  }

  handle(compact: string, from: MessageOrigin = {}): Promise<string> {
    const deadline = this.parts.deadline;
    return deadline ? withRequestDeadline(deadline.storageMs, () => this.handleOne(compact, from)) : this.handleOne(compact, from);
  }

  private async handleOne(compact: string, from: MessageOrigin): Promise<string> {
    const startedAt = performance.now();
    const { opener, authentication, resolver, runner, retries, answerer } = this.parts;
    const record = newRecord();
    const to: Destination = { toPeer: false };
    let response: KmsResponse;
    try {
      const opened = await opener.open(compact, record);
      if (!opened.channel) admitHandshake(this.parts.handshakes, from.address, opened, record);
      to.channel = opened.channel;
      to.toPeer = opened.channel !== undefined && peerOwning(opened.channel) !== undefined;
      const authenticated = await authentication.authenticate(opened, record);
      const resolved = resolver.resolve(authenticated, opened.channel ? 'channel' : 'static', record);
      // The peer's answer is bounded by the peer timeout, on top of this KMS's own storage time.
      if (resolved.dispatch === 'askPeer') extendRequestDeadline(this.parts.deadline?.peerMs ?? 0);
      // A peer's channel is not keyed for retries: its replay window already refuses a second copy
      // of a signed request (same requestId) before it gets here (docs/decisions.md).
      const retryChannel = to.toPeer ? undefined : opened.channel;
      response = await retries.once(retryChannel, authenticated.request, resolved.spec, () => runner.run(authenticated, resolved, opened.channel));
    } catch (err) {
      response = this.failure(err);
    }
    return answerer.answer(response, record, to, startedAt);
  }

  private failure(err: unknown): KmsResponse {
    if (err instanceof KmsError) {
      // The operator needs to know why storage failed; the client only that it should retry.
      if (err.code === 'STORAGE_UNAVAILABLE') this.parts.logger.warn({ err: describeError(err.cause) }, 'storage unavailable');
      return { status: err.status, reason: err.reason };
    }
    this.parts.logger.error({ err: describeError(err) }, 'internal error');
    return { status: Status.INTERNAL, reason: 'internal error' };
  }

  /** Destroys what expired (resources past TTL, unbound keys past the grace, dead channels). */
  async sweep(): Promise<SweepResult> {
    const at = this.parts.now();
    let result: SweepResult;
    try {
      result = await this.parts.store.sweep(at, this.parts.lifetimes.unboundGraceMs);
    } catch (err) {
      this.onSweep?.({ ok: false });
      throw err;
    }
    this.onSweep?.({ ok: true, at, result });
    // Peers holding copies of expired KROs must stop using them now, not at their staleness bound.
    if (result.resourceIds.length > 0) await this.parts.changes.changed(result.resourceIds);
    if (result.resources || result.keys || result.channels) {
      this.parts.logger.info({ resources: result.resources, keys: result.keys, channels: result.channels }, 'sweeper destroyed expired objects');
    }
    return result;
  }

  close(): Promise<void> {
    return this.parts.close();
  }
}
