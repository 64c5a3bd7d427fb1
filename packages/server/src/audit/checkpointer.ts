/**
 * Writes this process's audit checkpoints (checkpoint.ts): every interval, once it has written
 * CHECKPOINT_EVERY records since the last one, and when it stops. Every process writes its own,
 * leader or not: nodes on other hosts each keep a file of their own, and each file proves the
 * chain up to its newest checkpoint (docs/decisions.md). A checkpoint that cannot be written is
 * logged as an error; requests are still answered, since their records are durable in the
 * database (it is the audit write itself that fails closed, core/answer.ts).
 */
import type { KeyObject } from 'node:crypto';
import type { Logger } from '../logger.js';
import type { Store } from '../store/store.js';
import { appendCheckpoint, signCheckpoint } from './checkpoint.js';

/** Records this process writes between two checkpoints, at most (plus one batch). */
export const CHECKPOINT_EVERY = 10_000;

export interface CheckpointerOptions {
  store: Pick<Store, 'auditHead'>;
  file: string;
  intervalMs: number;
  key: { privateKey: KeyObject; kid: string };
  logger: Logger;
  now: () => number;
}

export class Checkpointer {
  private timer: NodeJS.Timeout | undefined;
  private sinceLast = 0;
  /** Checkpoints are written one after the other, so the file's lines follow the chain. */
  private writing: Promise<void> = Promise.resolve();

  constructor(private readonly options: CheckpointerOptions) {}

  start(): void {
    this.timer = setInterval(() => void this.checkpoint(), this.options.intervalMs);
    this.timer.unref();
  }

  /** Told of every batch of records this process made durable. */
  written(records: number): void {
    this.sinceLast += records;
    if (this.sinceLast >= CHECKPOINT_EVERY) void this.checkpoint();
  }

  /** Signs and appends the chain's current head; resolves once it is durable (or logged as failed). */
  checkpoint(): Promise<void> {
    this.sinceLast = 0;
    this.writing = this.writing.then(() => this.writeOne());
    return this.writing;
  }

  /** Stops the timer and writes the last checkpoint (after the audit log was flushed). */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.checkpoint();
  }

  private async writeOne(): Promise<void> {
    const { store, file, key, logger, now } = this.options;
    try {
      const head = await store.auditHead();
      const time = now();
      const jws = await signCheckpoint(head, time, key);
      appendCheckpoint(file, jws);
      // Into the log stream too: a copy kept wherever the logs are shipped.
      logger.info({ auditCheckpoint: { seq: head.seq, hash: head.hash, time, jws } }, 'audit checkpoint');
    } catch (err) {
      logger.error({ err: { message: (err as Error).message }, file }, 'audit checkpoint not written');
    }
  }
}
