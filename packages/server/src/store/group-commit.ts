/**
 * Group commit: writes that arrive while one is being committed go into the next transaction, so
 * a busy KMS pays one fsync per batch instead of one per request, and every caller is answered
 * only once its own write is durable. An fsync costs up to milliseconds; without this, audit
 * appends (and PostgreSQL's channel inserts) would cap the KMS at a few hundred requests a second.
 */
import { outsideRequest } from './deadline.js';

/** The items waiting for the next batch, and how to answer each (parallel arrays: no object per item). */
interface Pending<T> {
  items: T[];
  resolves: (() => void)[];
  rejects: ((err: unknown) => void)[];
}

const empty = <T>(): Pending<T> => ({ items: [], resolves: [], rejects: [] });

export class GroupCommit<T> {
  private pending: Pending<T> = empty();
  private running: Promise<void> | undefined;

  /** `write` commits all given items in one transaction, or throws and commits none. */
  constructor(private readonly write: (items: T[]) => Promise<void> | void) {}

  add(item: T): Promise<void> {
    const done = new Promise<void>((resolve, reject) => {
      this.pending.resolves.push(resolve);
      this.pending.rejects.push(reject);
    });
    this.pending.items.push(item);
    // The batch serves every request in it, so it runs outside the request that started it:
    // it must not inherit (and die of) that one request's deadline (deadline.ts).
    this.running ??= outsideRequest(() => this.drain());
    return done;
  }

  /** Resolves once everything added so far is committed (or failed). */
  async flush(): Promise<void> {
    while (this.running) await this.running;
  }

  private async drain(): Promise<void> {
    // Let the requests of the current turn of the event loop join this batch.
    await new Promise((r) => setImmediate(r));
    while (this.pending.items.length > 0) {
      const batch = this.pending;
      this.pending = empty();
      try {
        await this.write(batch.items);
        for (const resolve of batch.resolves) resolve();
      } catch (err) {
        for (const reject of batch.rejects) reject(err ?? new Error('group commit failed'));
      }
    }
    this.running = undefined;
  }
}
