/**
 * Stage 5, answer (PROTOCOL.md §4, §7): every request, failed or not, is recorded in the audit
 * log before it is answered; then the answer is sealed — under the channel key for a user, under
 * the channel key around a signature for a peer KMS (so its copies can prove what this KMS
 * released), and signed by the static key when there is no channel (handshakes, resets).
 */
import { randomUUID, type KeyObject } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { KmsError, Status, type KmsResponse, type MessageCodec, type OperationName } from '@openkms/protocol';
import type { AuditEntry } from '../audit/audit.js';
import type { Channel } from '../channels.js';
import { describeError, type Logger } from '../logger.js';
import { auditRecordQueued, withinRequestDeadline } from '../store/deadline.js';
import type { RequestRecord } from './record.js';

export interface RequestEvent {
  op: OperationName | 'reset' | 'unknown';
  status: number;
  seconds: number;
}

/** Where an answer goes: on a channel (to a user or to a peer KMS), or nowhere yet. */
export interface Destination {
  channel?: Channel;
  toPeer: boolean;
}

const encoder = new TextEncoder();

export class Answerer {
  /** Told of every answered request (metrics). */
  onRequest: ((event: RequestEvent) => void) | undefined;
  /** Why the last audit write failed; undefined once one succeeds again (readiness). */
  auditFailure: unknown;

  constructor(
    private readonly audit: { record(entry: AuditEntry): Promise<void> },
    private readonly codec: MessageCodec,
    private readonly staticKey: { privateKey: KeyObject; kid: string },
    private readonly logger: Logger,
    private readonly now: () => number,
  ) {}

  async answer(response: KmsResponse, record: RequestRecord, to: Destination, startedAt: number): Promise<string> {
    const requestId = response.status === Status.RESET && record.requestId === undefined ? randomUUID() : record.requestId;
    let out: KmsResponse = { ...response, requestId };
    try {
      // The record is always queued, even when nothing is left of the request's one deadline
      // (store/deadline.ts): the log learns of every request. The wait for it is what is bounded,
      // so a request whose operation used the deadline gets its 503 then, not a deadline later.
      // Its writes so far are made durable by this record; any later one by itself (deadline.ts).
      auditRecordQueued();
      const written = this.audit.record({
        time: this.now(),
        principal: record.principal,
        onBehalfOf: record.onBehalfOf,
        clientId: record.clientId,
        method: record.method,
        uri: record.uri,
        status: out.status,
        peer: record.peer,
        requestId: requestId === undefined ? null : String(requestId),
      });
      written.catch(() => undefined); // a write that fails after the wait gave up is counted by the audit log
      await withinRequestDeadline('audit', () => written);
      this.auditFailure = undefined;
    } catch (err) {
      // An answer that could not be audited is not given: the client gets a 500 and nothing else.
      this.logger.error({ err: describeError(err) }, 'audit log write failed');
      // Storage down or too slow is the 503 of any storage failure instead: the client retries later.
      out = err instanceof KmsError && err.code === 'STORAGE_UNAVAILABLE'
        ? { status: err.status, reason: err.reason, requestId }
        : { status: Status.INTERNAL, reason: 'internal error', requestId };
      this.auditFailure = err;
    }
    const seconds = (performance.now() - startedAt) / 1000;
    this.onRequest?.({ op: record.op, status: out.status, seconds });
    // The operator's request log (info): who asked what and how it went. The principal is an id (a
    // user id, an authorization URI, kms://peer), never a credential; the fields are the record's
    // own, so nothing is serialised here, and pino drops the line itself when info is off.
    this.logger.info({ op: record.op, status: out.status, principal: record.principal, onBehalfOf: record.onBehalfOf ?? undefined, peer: record.peer, latencyMs: Math.round(seconds * 1e4) / 10, requestId: out.requestId }, 'request');
    // Buffer.from: half TextEncoder's cost, the same bytes (JSON.stringify escapes lone surrogates).
    return this.seal(Buffer.from(JSON.stringify(out), 'utf8'), out.status, to);
  }

  /**
   * Whether the audit log can be written (readiness): yes until a write fails, then no until one
   * succeeds. Only a write tells, and a node that is unready gets no requests from its load
   * balancer, so while it is failing each readiness probe writes a record of its own (method
   * `ready`, uri `/readyz`, no principal): the node turns ready by itself once storage takes
   * writes again, and a healthy node's probes write nothing.
   */
  async auditWritable(): Promise<boolean> {
    if (this.auditFailure === undefined) return true;
    try {
      await this.audit.record({ time: this.now(), principal: null, clientId: null, method: 'ready', uri: '/readyz', status: 200, peer: null, requestId: null });
      this.auditFailure = undefined;
      return true;
    } catch (err) {
      this.auditFailure = err;
      return false;
    }
  }

  private async seal(payload: Uint8Array, status: number, to: Destination): Promise<string> {
    const { privateKey, kid } = this.staticKey;
    // A reset says the channel is unusable, so it cannot travel under it.
    if (!to.channel || status === Status.RESET) return this.codec.signStatic(payload, privateKey, kid);
    if (!to.toPeer) return this.codec.encryptChannel(payload, to.channel.key.reveal(), to.channel.uri);
    const proof = await this.codec.signStatic(payload, privateKey, kid);
    return this.codec.encryptChannel(encoder.encode(proof), to.channel.key.reveal(), to.channel.uri, 'JOSE');
  }
}
