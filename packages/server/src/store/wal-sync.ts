/**
 * Durability of SQLite commits, off the event loop (docs/decisions.md, "SQLite: one fsync for
 * many commits"). The store runs with synchronous=NORMAL: a commit appends its frames to the WAL
 * (a write(), in the page cache) without an fsync. This makes them durable by an fsync of the WAL
 * file on libuv's thread pool, shared by every commit made before it started: a busy KMS pays one
 * fsync for the commits of many requests, and the JavaScript thread never waits for the disk.
 *
 * The fsync is an fdatasync: it flushes the file's data and the metadata a later read needs (its
 * size, which the appended frames change), not its times, which recovery does not read.
 *
 * Why an fsync of the WAL is enough: SQLite replays the WAL after a crash up to its last valid
 * commit frame, and the frames are appended in commit order, so once an fsync that started after
 * a commit returned, that commit (and every one before it, of any process on the file) survives a
 * power cut. The WAL header and the database file itself are SQLite's own business: NORMAL syncs
 * the WAL before each checkpoint, the database after it, and the header when the WAL is reused.
 * The descriptor is opened once: SQLite deletes the WAL file only when the last connection to the
 * database closes (this store's is open until it closes) and never renames it, and a checkpoint
 * that truncates it keeps the file. Before the first write there may be no WAL file: nothing to sync.
 * SQLite holds no POSIX lock on the WAL file (its locks are on the database and the -shm file, and
 * closing any descriptor of those in the process would drop them), so this descriptor's close
 * releases nothing of SQLite's.
 *
 * An fsync that fails may have lost the data it was to keep (Linux drops the pages and may report
 * success next time), so after one failure every sync fails: nothing is ever acknowledged as
 * durable that might not be, until the process restarts and SQLite recovers from what is on disk.
 */
import { closeSync, fdatasync, fdatasyncSync, openSync } from 'node:fs';

const noop = () => {};

/** How a file descriptor is flushed: fs.fdatasync (tests hold or fail it). */
export type Fsync = (fd: number, done: (err: NodeJS.ErrnoException | null) => void) => void;

export class WalSync {
  private fd: number | undefined;
  /** The fsync under way: it may have started before the caller's commit. */
  private inFlight: Promise<void> | undefined;
  /** The fsync that starts when the one under way ends: it covers every commit made before. */
  private queued: Promise<void> | undefined;
  /** Once an fsync failed, every later sync fails with it. */
  private failed: Error | undefined;

  constructor(
    private readonly walPath: string,
    private readonly flush: Fsync = fdatasync,
  ) {}

  /** Resolves once everything committed before this call is on disk. */
  sync(): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.queued) return this.queued;
    if (!this.inFlight) return this.start();
    return (this.queued = this.inFlight.then(noop, noop).then(() => {
      this.queued = undefined;
      return this.start();
    }));
  }

  /** The same, blocking (opening and closing the store: nothing else is waiting then). */
  syncNow(): void {
    if (this.failed) throw this.failed;
    const fd = this.open();
    if (fd === undefined) return;
    try {
      fdatasyncSync(fd);
    } catch (err) {
      throw this.fail(err);
    }
  }

  /** Waits for the fsyncs under way, then lets go of the file. */
  async close(): Promise<void> {
    await this.queued?.catch(noop);
    await this.inFlight?.catch(noop);
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private start(): Promise<void> {
    const p = new Promise<void>((resolve, reject) => {
      // A sync queued behind one that failed must not trust an fsync of its own.
      if (this.failed) {
        reject(this.failed);
        return;
      }
      let fd: number | undefined;
      try {
        fd = this.open();
      } catch (err) {
        reject(this.fail(err));
        return;
      }
      if (fd === undefined) {
        resolve();
        return;
      }
      this.flush(fd, (err) => (err ? reject(this.fail(err)) : resolve()));
    }).finally(() => {
      if (this.inFlight === p) this.inFlight = undefined;
    });
    this.inFlight = p;
    return p;
  }

  /** The WAL file's descriptor, opened at the first sync; undefined while there is no WAL file. */
  private open(): number | undefined {
    if (this.fd !== undefined) return this.fd;
    try {
      // Read-only: fsync flushes the file's pages whoever wrote them; this descriptor writes nothing.
      this.fd = openSync(this.walPath, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return this.fd;
  }

  private fail(err: unknown): Error {
    // SQLite's own name for it, so that the deadline wrapper reports storage as unavailable.
    this.failed ??= Object.assign(new Error(`fsync of the SQLite WAL failed: ${(err as Error).message ?? err}`), { code: 'SQLITE_IOERR_FSYNC', cause: err });
    return this.failed;
  }
}
