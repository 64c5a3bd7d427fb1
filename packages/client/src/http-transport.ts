/**
 * HTTP batch transport (`POST /kms/messages`) with request coalescing: messages sent within
 * `debounceMs` of each other travel in one HTTP request of at most `maxBatch` messages, as the Webex
 * client does. Answers come back in request order.
 */
import { KmsError, type RequestId } from '@openkms/protocol';
import { connectionLost, httpFailure, isConnectionLost, timedOut, unreachable } from './failures.js';
import type { Answer, Decoder, FetchLike, Transport } from './transport.js';

export interface HttpTransportOptions {
  url: string;
  decode: Decoder;
  fetch: FetchLike;
  /** How long a message waits for companions before its batch leaves (default 5 ms). */
  debounceMs?: number;
  /** Messages per HTTP request (default 50, server limit 100). */
  maxBatch?: number;
  /** Per-request timeout in ms (default 30 s). */
  timeoutMs?: number;
}

/** The statuses the KMS itself answers a batch with, besides 200 (PROTOCOL.md §3, and its 500). */
const BATCH_STATUSES = [413, 500] as const;

interface Pending {
  message: string;
  requestId: RequestId | undefined;
  resolve(answer: Answer): void;
  reject(err: unknown): void;
}

export class HttpTransport implements Transport {
  private queue: Pending[] = [];
  private timer: ReturnType<typeof setTimeout> | undefined;
  private closed = false;
  /** HTTP requests sent so far (for tuning and tests). */
  requests = 0;

  constructor(private readonly options: HttpTransportOptions) {}

  exchange(message: string, requestId?: RequestId): Promise<Answer> {
    if (this.closed) return Promise.reject(new KmsError('CLIENT_CLOSED', 'client closed', { requestId }));
    return new Promise((resolve, reject) => {
      this.queue.push({ message, requestId, resolve, reject });
      if (this.queue.length >= (this.options.maxBatch ?? 50)) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), this.options.debounceMs ?? 5);
    });
  }

  private flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const max = this.options.maxBatch ?? 50;
    while (this.queue.length > 0) void this.send(this.queue.splice(0, max));
  }

  /**
   * One HTTP request for the batch. A failure of the request itself fails every message of it, each
   * with its own requestId; a message whose answer is unusable fails alone.
   */
  private async send(batch: Pending[]): Promise<void> {
    this.requests++;
    const what = `POST ${this.options.url}/kms/messages`;
    const timeoutMs = this.options.timeoutMs ?? 30_000;
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), timeoutMs);
    // The timeout covers the whole exchange, the body included; a network error is kept as cause.
    const lost = (err: unknown) => (controller.signal.aborted ? timedOut(what, timeoutMs, err) : unreachable(what, err));
    try {
      let res: Awaited<ReturnType<FetchLike>>;
      let text: string;
      try {
        res = await this.options.fetch(`${this.options.url}/kms/messages`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ kmsMessages: batch.map((p) => p.message) }),
          signal: controller.signal,
        });
        text = await res.text();
      } catch (err) {
        throw lost(err);
      }
      // PROTOCOL.md §3: per-message failures come inside a 200; the KMS refuses a batch over its
      // limit with HTTP 413. A 400 (not the batch shape) cannot be an answer to this transport's
      // own batches: whatever answered is not a KMS of the profile.
      if (res.status !== 200) throw httpFailure(what, res.status, text, 'ANSWER_INVALID', BATCH_STATUSES);
      let answers: unknown;
      try {
        answers = (JSON.parse(text) as { kmsMessages?: unknown } | null)?.kmsMessages;
      } catch (err) {
        throw new KmsError('ANSWER_INVALID', `${what} answered a body that is not JSON`, { cause: err });
      }
      if (!Array.isArray(answers) || answers.length !== batch.length) throw new KmsError('ANSWER_INVALID', 'KMS answered a batch of the wrong shape');
      await Promise.all(
        batch.map(async (p, i) => {
          try {
            const compact = answers[i];
            if (typeof compact !== 'string') throw new KmsError('ANSWER_INVALID', 'KMS answered a batch member that is not a compact message', { requestId: p.requestId });
            p.resolve(await this.options.decode(compact));
          } catch (err) {
            p.reject(err);
          }
        }),
      );
    } catch (err) {
      for (const p of batch) p.reject(forRequest(err, p.requestId));
    } finally {
      clearTimeout(timeout);
    }
  }

  async close(): Promise<void> {
    this.flush();
    this.closed = true;
  }
}

/** One batch's failure as the failure of one of its requests (the same code, reason and cause). */
function forRequest(err: unknown, requestId: RequestId | undefined): unknown {
  if (!(err instanceof KmsError) || requestId === undefined) return err;
  const mine = new KmsError(err.code, err.reason, { requestId, cause: err.cause, handshake: err.handshake });
  return isConnectionLost(err) ? connectionLost(mine) : mine;
}
