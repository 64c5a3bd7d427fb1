/**
 * Retries are safe (docs/decisions.md, "Retries: the first answer"): a client whose connection
 * broke before the answer came (reset, node died, answer lost) sends the same request again, on
 * the same channel with the same requestId, maybe to another node. For the operations the table
 * marks `firstAnswer` (protocol operations.ts: creates, binds, deletes of authorizations, CMK
 * changes) the first copy's answer is remembered in the database for the retry window, sealed by
 * the keyring under the active CMK (it may carry key material), and every later copy gets it back:
 * no second key set, no 409 for a retried bind, no 404 for a retried delete.
 *
 * A copy claims the request before it runs (Store.claimAnswer, one winner among concurrent copies
 * on every node). A copy that finds it running waits for its answer, at most what remains of its
 * own request deadline, then gets a 503 (retry later). The claim has a lease: a node that died
 * after claiming but before answering blocks the retries only until the lease ends, then a retry
 * runs the request itself. A failed request gives its claim up, so its retry runs it again (all
 * of them are all-or-nothing). The same requestId with a different request is refused (400).
 *
 * Answered once (docs/decisions.md, "A replayed request is answered once"): the transport is
 * untrusted, and a captured request could be sent again long after its client saw it answered (an
 * authorization re-granted after its removal). So the request stays remembered while its channel
 * lives (the only time a copy of it can be opened at all); its answer only for the retry window,
 * after which a copy is refused with a 400 naming requestId.
 *
 * What remains: the write of the operation and the write of its answer are two transactions. A
 * node that dies between them (one database round trip) leaves a claim whose lease ends with no
 * answer: the retry then runs the request a second time.
 */
import { createHash, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { KmsError, type KmsRequest, type KmsResponse, type Operation } from '@openkms/protocol';
import type { Channel } from '../channels.js';
import type { Keyring } from '../keyring/keyring.js';
import { describeError, type Logger } from '../logger.js';
import type { AnswerClaimKey, RememberedAnswer } from '../model.js';
import { remainingMs } from '../store/deadline.js';
import type { Store } from '../store/store.js';

/**
 * How long a first answer is kept: retries come at once; this covers slow clients too. The
 * request itself is remembered until its channel ends.
 */
export const RETRY_WINDOW_MS = 10 * 60_000;

/** How often a copy of a running request looks for its answer. */
const POLL_MS = 25;

export interface RetryTimes {
  /** How long an answer is remembered (RETRY_WINDOW_MS). */
  windowMs: number;
  /**
   * How long a claim holds before a copy may run the request itself: longer than a request can
   * run (its storage deadline and, for a forwarded one, the peer timeout).
   */
  leaseMs: number;
}

export class Retries {
  constructor(
    private readonly store: Pick<Store, 'claimAnswer' | 'rememberAnswer' | 'releaseAnswer'>,
    private readonly keyring: Pick<Keyring, 'activeCmk' | 'seal' | 'unseal'>,
    private readonly times: RetryTimes,
    private readonly logger: Logger,
    private readonly now: () => number,
  ) {
    if (!(times.leaseMs > 0 && times.windowMs >= times.leaseMs)) throw new RangeError('retries: need 0 < leaseMs <= windowMs');
  }

  /**
   * Runs the request once per (channel, requestId) when its operation keeps its first answer.
   * `channel`: the user's channel it came on; none for a handshake or a peer KMS's request.
   */
  once(channel: Channel | undefined, request: KmsRequest, spec: Operation, run: () => Promise<KmsResponse>): Promise<KmsResponse> {
    // Handshakes come under the static key (no channel: a retry makes a second channel, harmless).
    // Anything else that repeats runs as it is, without a promise of its own around it.
    if (!channel || spec.retry !== 'firstAnswer') return run();
    return this.onceKept(channel, request, run);
  }

  private async onceKept(channel: Channel, request: KmsRequest, run: () => Promise<KmsResponse>): Promise<KmsResponse> {
    const digest = requestDigest(request);
    // Nested deeper than any request the operations accept: it runs, to be refused by them (400).
    if (digest === undefined) return run();
    const key: AnswerClaimKey = { channelId: channel.id, requestId: requestIdKey(request.requestId), claimant: randomUUID() };
    const waitUntil = performance.now() + remainingMs(this.times.leaseMs);
    for (;;) {
      const now = this.now();
      const answerUntil = now + this.times.windowMs;
      // Remembered while the channel can carry a copy of it: a replay is refused, never run again.
      const expiresAt = Math.max(answerUntil, channel.expiresAt);
      const claimed = await this.store.claimAnswer({ ...key, digest, now, leaseUntil: now + this.times.leaseMs, answerUntil, expiresAt });
      if (claimed.state === 'claimed') break;
      if (claimed.state === 'answered') return this.open(key, claimed.answer);
      if (claimed.state === 'spent') throw KmsError.badRequest('invalid field requestId: already answered on this channel (a request that changes state runs once)');
      if (claimed.state === 'mismatch') throw KmsError.badRequest('invalid field requestId: already used on this channel for a different request');
      if (performance.now() + POLL_MS >= waitUntil) throw new KmsError('STORAGE_UNAVAILABLE', 'the same request is still being answered: retry later');
      await sleep(POLL_MS);
    }
    let response: KmsResponse;
    try {
      response = await run();
    } catch (err) {
      await this.release(key);
      throw err;
    }
    if (response.status >= 300) {
      await this.release(key);
      return response;
    }
    await this.remember(key, response);
    return response;
  }

  private aad(key: AnswerClaimKey): string {
    return `retry-answer:${key.channelId}:${key.requestId}`;
  }

  private async remember(key: AnswerClaimKey, response: KmsResponse): Promise<void> {
    const { requestId: _echoed, ...answer } = response;
    try {
      const cmkId = this.keyring.activeCmk().id;
      const sealed = this.keyring.seal(cmkId, new TextEncoder().encode(JSON.stringify(answer)), this.aad(key));
      const kept = await this.store.rememberAnswer(key, { cmkId, sealed });
      if (!kept) this.logger.warn({ op: 'retries' }, 'a request outlived its claim lease: a copy of it may have run too');
    } catch (err) {
      // The write is done and its answer is right: give it. Only a retry of it could run twice.
      this.logger.warn({ err: describeError(err) }, 'the answer of a request could not be remembered for its retries');
    }
  }

  private async release(key: AnswerClaimKey): Promise<void> {
    // A claim left behind only delays a retry until its lease ends.
    await this.store.releaseAnswer(key).catch((err: unknown) => this.logger.warn({ err: describeError(err) }, 'a failed request could not give up its retry claim'));
  }

  private async open(key: AnswerClaimKey, answer: RememberedAnswer): Promise<KmsResponse> {
    const plain = await this.keyring.unseal(answer.cmkId, answer.sealed, this.aad(key));
    return JSON.parse(new TextDecoder().decode(plain.reveal())) as KmsResponse;
  }
}

/**
 * How a requestId is stored: SHA-256 (hex) of its JSON. It is not validated beyond its type and
 * length before the operation runs, so it must not reach a TEXT column as it came (PostgreSQL
 * refuses U+0000); JSON keeps the number 1 and the string "1" apart and escapes lone surrogates.
 */
export function requestIdKey(requestId: KmsRequest['requestId']): string {
  return createHash('sha256').update(JSON.stringify(requestId)).digest('hex');
}

/** Deeper than any member of a valid request (the deepest are a few levels): not worth a digest. */
const MAX_DEPTH = 32;

/**
 * What identifies a request across its copies: SHA-256 over its members in a canonical order,
 * without the requestId (the key it is found by), the credential (a token may be refreshed
 * between two copies; the channel already binds the principal) and a peer's `iat` (re-signed).
 * Undefined for a request nested deeper than MAX_DEPTH: it has not been validated yet (the
 * operation does that), so it must not cost a recursion its depth.
 */
export function requestDigest(request: KmsRequest): string | undefined {
  const { requestId: _id, client, iat: _iat, ...rest } = request;
  const { credential: _credential, ...clientRest } = (client ?? {}) as unknown as Record<string, unknown>;
  const canonical = canonicalJson({ ...rest, client: clientRest });
  return canonical === undefined ? undefined : createHash('sha256').update(canonical).digest('hex');
}

/**
 * JSON with object members sorted by name, so equal requests hash alike however they were written;
 * undefined when nested deeper than `maxDepth`.
 */
export function canonicalJson(value: unknown, maxDepth = MAX_DEPTH): string | undefined {
  if (maxDepth < 0) return undefined;
  if (Array.isArray(value)) {
    const items: string[] = [];
    for (const v of value) {
      const item = canonicalJson(v, maxDepth - 1);
      if (item === undefined) return undefined;
      items.push(item);
    }
    return `[${items.join(',')}]`;
  }
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const members: string[] = [];
    for (const [k, v] of entries) {
      const member = canonicalJson(v, maxDepth - 1);
      if (member === undefined) return undefined;
      members.push(`${JSON.stringify(k)}:${member}`);
    }
    return `{${members.join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}
