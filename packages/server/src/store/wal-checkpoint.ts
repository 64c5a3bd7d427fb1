/**
 * SQLite checkpoints on a thread of their own (docs/decisions.md, "SQLite: one fsync for many
 * commits"). A checkpoint copies the pages the WAL holds back into the database file and syncs
 * both; SQLite runs it inside the commit that makes the WAL pass 1000 pages, so on a busy KMS every
 * few commits one stopped the JavaScript thread for milliseconds (two fsyncs and megabytes of
 * writes). A serving store instead has this thread checkpoint the WAL every CHECK_MS when it was
 * written since, on a connection of its own, PASSIVE (it waits for no writer or reader and none
 * waits for it). The store's own connection keeps SQLite's checkpoint as a fallback, at SAFETY_PAGES, so the
 * WAL stays bounded should this thread fall behind or die.
 */
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';

const CHECK_MS = 250;
/** The store connection's own automatic checkpoint, in pages, when this thread runs. */
export const SAFETY_PAGES = 16_000;

export class BackgroundCheckpoints {
  private readonly worker: Worker;
  private readonly exited: Promise<unknown>;

  constructor(path: string) {
    this.worker = new Worker(new URL('./wal-checkpoint-worker.js', import.meta.url), { workerData: { path, intervalMs: CHECK_MS } });
    // It must not keep a process alive that has nothing else to do, nor take it down.
    this.worker.unref();
    this.worker.on('error', () => {});
    this.exited = once(this.worker, 'exit').catch(() => undefined);
  }

  /** Stops the thread after the checkpoint it may be running; its connection is closed first. */
  async close(): Promise<void> {
    // Waited for: until it has stopped, it holds the process.
    this.worker.ref();
    this.worker.postMessage('stop');
    await this.exited;
  }
}
