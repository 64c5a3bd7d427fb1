/**
 * The thread of wal-checkpoint.ts: a connection of its own to the database file that copies the
 * WAL back into it (PASSIVE: never waits for, nor blocks, a writer or a reader) whenever the WAL
 * was written since it last looked, every `intervalMs`. It writes no row.
 *
 * It looks with stat() only, never by opening a file SQLite holds locks on (the database, its
 * -shm): POSIX drops every lock a process holds on a file when any descriptor of that file in the
 * process is closed, which would let another process reset the WAL under this one's readers.
 */
import { statSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';

const { path, intervalMs } = workerData as { path: string; intervalMs: number };

const db = new Database(path, { fileMustExist: true });
// The checkpoint syncs the WAL before it copies, and the database after (as NORMAL and FULL do).
db.pragma('synchronous = NORMAL');
// Never wait: a checkpoint another connection is running does the same work.
db.pragma('busy_timeout = 0');

let seen: number | undefined;
const timer = setInterval(() => {
  let written: number;
  try {
    written = statSync(`${path}-wal`).mtimeMs;
  } catch {
    return; // no WAL (yet): nothing to copy
  }
  if (written === seen) return;
  seen = written;
  try {
    db.pragma('wal_checkpoint(PASSIVE)');
  } catch {
    // Busy or failing: the next look tries again, and the writers' own checkpoint is the fallback.
    seen = undefined;
  }
}, intervalMs);

parentPort!.on('message', (message: unknown) => {
  if (message !== 'stop') return;
  clearInterval(timer);
  db.close();
  parentPort!.close();
});
