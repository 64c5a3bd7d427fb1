/**
 * Group commit: writes that arrive while one is being committed go into the next transaction, so
 * a busy KMS pays one fsync per batch instead of one per request, and every caller is answered
 * only once its own write is durable. An fsync costs up to milliseconds; without this, audit
 * appends (and PostgreSQL's channel inserts) would cap the KMS at a few hundred requests a second.
 */
import { outsideRequest } from './deadline.js';

export class GroupCommit<T> {
  private queue: { item: T; done: (err?: unknown) => void }[] = [];
  private running: Promise<void> | undefined;

  /** `write` commits all given items in one transaction, or throws and commits none. */
  constructor(private readonly write: (items: T[]) => Promise<void> | void) {}

  add(item: T): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ item, done: (err) => (err === undefined ? resolve() : reject(err)) });
      // The batch serves every request in it, so it runs outside the request that started it:
      // it must not inherit (and die of) that one request's deadline (deadline.ts).
      this.running ??= outsideRequest(() => this.drain());
    });
  }

  /** Resolves once everything added so far is committed (or failed). */
  async flush(): Promise<void> {
    while (this.running) await this.running;
  }

  private async drain(): Promise<void> {
    // Let the requests of the current turn of the event loop join this batch.
    await new Promise((r) => setImmediate(r));
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      try {
        await this.write(batch.map((b) => b.item));
        for (const b of batch) b.done();
      } catch (err) {
        for (const b of batch) b.done(err ?? new Error('group commit failed'));
      }
    }
    this.running = undefined;
  }
}
