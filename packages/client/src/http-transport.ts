/**
 * HTTP batch transport (`POST /kms/messages`) with request coalescing: messages sent within
 * `debounceMs` of each other travel in one HTTP request of at most `maxBatch` messages, as the Webex
 * client does. Answers come back in request order.
 */
import { KmsError } from '@openkms/protocol';
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

interface Pending {
  message: string;
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

  exchange(message: string): Promise<Answer> {
    if (this.closed) return Promise.reject(new KmsError('KMS_UNREACHABLE', 'client closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ message, resolve, reject });
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

  private async send(batch: Pending[]): Promise<void> {
    this.requests++;
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), this.options.timeoutMs ?? 30_000);
    try {
      let res: Awaited<ReturnType<FetchLike>>;
      try {
        res = await this.options.fetch(`${this.options.url}/kms/messages`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ kmsMessages: batch.map((p) => p.message) }),
          signal: controller.signal,
        });
      } catch (err) {
        throw controller.signal.aborted ? new KmsError('KMS_TIMEOUT', 'KMS did not answer in time') : new KmsError('KMS_UNREACHABLE', `KMS unreachable: ${(err as Error).message}`);
      }
      if (res.status !== 200) {
        const text = await res.text().catch(() => '');
        throw KmsError.fromWire(res.status, `KMS refused the batch: ${text.slice(0, 200)}`);
      }
      const body = (await res.json()) as { kmsMessages?: unknown };
      const answers = body?.kmsMessages;
      if (!Array.isArray(answers) || answers.length !== batch.length) throw new KmsError('ANSWER_INVALID', 'KMS answered a batch of the wrong shape');
      await Promise.all(
        batch.map(async (p, i) => {
          try {
            p.resolve(await this.options.decode(String(answers[i])));
          } catch (err) {
            p.reject(err);
          }
        }),
      );
    } catch (err) {
      for (const p of batch) p.reject(err);
    } finally {
      clearTimeout(timeout);
    }
  }

  async close(): Promise<void> {
    this.flush();
    this.closed = true;
  }
}
