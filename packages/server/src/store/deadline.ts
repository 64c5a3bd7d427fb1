/**
 * A deadline on every storage call (OPERATING.md, "Failures an operator sees"): storage that is
 * unreachable or too slow makes the request a 503 STORAGE_UNAVAILABLE (retry later), never a 500
 * and never a hang. `withDeadline(store, ms)` wraps either backend; each method call races the
 * deadline, and what it throws is classified:
 *
 * - the deadline passed, or the failure is about reaching storage (a refused or dropped connection,
 *   PostgreSQL shutting down or not accepting connections yet, a locked, read-only, full or failing
 *   SQLite file) → `KmsError('STORAGE_UNAVAILABLE')`, the original kept as `cause`;
 * - anything else (a constraint the code violated, a TypeError, a RangeError of the rules) is a bug
 *   or a refusal of the caller's input and passes through unchanged (→ 500, or what it means).
 *
 * A call that loses the race is not cancelled: JavaScript cannot stop it. A read's late answer is
 * dropped; a write may still commit after the client was told 503 (docs/decisions.md, "A storage
 * deadline"). better-sqlite3 is synchronous, so its calls cannot be raced: SQLite's own
 * busy_timeout (set to the same deadline when the store is opened) bounds its waits instead.
 *
 * One deadline per request, not per call: a request runs inside `withRequestDeadline(ms, …)` (the
 * core does it), and every storage call it makes — its operation's, the retry memo's, its audit
 * write's wait — gets only what remains of that one deadline (AsyncLocalStorage carries it through
 * the request's awaits). So a request whose storage hangs gets its 503 after about one deadline,
 * never one deadline per call. Work that serves many requests (a group commit's batch, the sweeper)
 * runs outside any request (`outsideRequest`) with the whole per-call deadline.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { performance } from 'node:perf_hooks';
import { KmsError } from '@openkms/protocol';
import type { Store } from './store.js';

/** Socket-level failures: storage cannot be reached, or the connection to it was lost. */
export const NETWORK_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

/**
 * PostgreSQL SQLSTATEs that say the database is not available, as opposed to refusing the query:
 * whole classes 08 (connection exception) and 53 (insufficient resources: disk full, out of memory,
 * too many connections), and single codes of class 57 (operator intervention) and 55.
 */
const PG_UNAVAILABLE_CLASSES = ['08', '53'];
const PG_UNAVAILABLE_CODES = new Set([
  '57P01', // admin_shutdown: the server is stopping (or a backend was terminated)
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now: starting up, or in recovery
  '57P05', // idle_session_timeout
  '57014', // query_canceled: statement_timeout passed (too slow)
  '55P03', // lock_not_available: lock_timeout passed (too slow)
  '25P03', // idle_in_transaction_session_timeout
]);

/**
 * SQLite result codes (better-sqlite3 puts the extended name in `code`, e.g. SQLITE_IOERR_WRITE):
 * the file is locked by another process, cannot be written, is full or fails to read or write.
 */
const SQLITE_UNAVAILABLE = /^SQLITE_(BUSY|LOCKED|IOERR|FULL|CANTOPEN|READONLY|PROTOCOL)(_|$)/;

/**
 * What pg and pg-pool say when a connection is lost or cannot be had in time; they carry no code.
 * "Connection terminated" covers both "… unexpectedly" and "… due to connection timeout".
 */
const PG_CONNECTION_MESSAGES = /Connection terminated|timeout exceeded when trying to connect|Query read timeout|not queryable|connection is closed/i;

/** Whether `err` says storage is unreachable, lost or too slow, rather than refusing a query. */
export function isStorageUnavailable(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  if (err instanceof StorageTimeout) return true;
  // Node reports a refused dual-stack connect as an AggregateError of one error per address.
  if (err instanceof AggregateError) return err.errors.some(isStorageUnavailable);
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (NETWORK_CODES.has(code) || SQLITE_UNAVAILABLE.test(code) || PG_UNAVAILABLE_CODES.has(code)) return true;
    if (/^[0-9A-Z]{5}$/.test(code) && PG_UNAVAILABLE_CLASSES.includes(code.slice(0, 2))) return true;
  }
  return err instanceof Error && code === undefined && PG_CONNECTION_MESSAGES.test(err.message);
}

/** A storage call that did not settle within its deadline. */
export class StorageTimeout extends Error {
  constructor(
    readonly method: string,
    readonly ms: number,
  ) {
    super(`storage call ${method} did not answer within ${ms} ms`);
    this.name = 'StorageTimeout';
  }
}

/** The error a request fails with when storage is unavailable; `cause` says why, for the log. */
export function storageUnavailable(cause: unknown): KmsError {
  return new KmsError('STORAGE_UNAVAILABLE', 'storage unavailable: retry later', { cause });
}

/** The request being handled: its deadline, and whether its audit record is queued yet. */
interface RequestDeadline {
  /** In performance.now() milliseconds (monotonic). */
  at: number;
  audited: boolean;
}

const requestDeadline = new AsyncLocalStorage<RequestDeadline>();

/** Runs `fn` as one request whose storage calls share one deadline `ms` from now. */
export function withRequestDeadline<T>(ms: number, fn: () => Promise<T>): Promise<T> {
  return requestDeadline.run({ at: performance.now() + ms, audited: false }, fn);
}

/**
 * Whether a write made now is made durable by the current request's audit record: true inside a
 * request (withRequestDeadline) whose record is not queued yet. Every request is answered only
 * once its record is durable (core/answer.ts), and that record is committed after every write the
 * request made before it, to the same log (SQLite's WAL, store/wal-sync.ts), so such a write
 * needs no fsync of its own. Work the request started that writes after its record was queued,
 * and everything outside a request (the sweeper, a CLI command, a group commit's batch), waits
 * for its own writes to be durable.
 */
export function auditCoversWrite(): boolean {
  const current = requestDeadline.getStore();
  return current !== undefined && !current.audited;
}

/** The current request's audit record is queued (core/answer.ts): its later writes make themselves durable. */
export function auditRecordQueued(): void {
  const current = requestDeadline.getStore();
  if (current) current.audited = true;
}

/**
 * Gives the current request `ms` more (a request that waits for a peer KMS: the peer timeout is
 * the federation's own bound, not storage time); no-op outside a request.
 */
export function extendRequestDeadline(ms: number): void {
  const current = requestDeadline.getStore();
  if (current) current.at += ms;
}

/** What remains of the current request's deadline, at most `ms`; `ms` outside a request. */
export function remainingMs(ms: number): number {
  const current = requestDeadline.getStore();
  return current === undefined ? ms : Math.min(ms, Math.max(0, Math.floor(current.at - performance.now())));
}

/** Runs `fn` outside any request's deadline (shared work: a batch several requests wait on). */
export function outsideRequest<T>(fn: () => T): T {
  return requestDeadline.exit(fn);
}

/**
 * Waits for `work` at most what remains of the current request's deadline; outside a request, or
 * in a request without one, simply waits. For a wait that is not itself a storage call, e.g. a
 * request's audit record in a group commit.
 */
export function withinRequestDeadline<T>(what: string, work: () => Promise<T>): Promise<T> {
  return requestDeadline.getStore() === undefined ? work() : withinDeadline(what, remainingMs(Number.MAX_SAFE_INTEGER), work);
}

/**
 * The calls waiting for their deadline, and one timer for all of them, armed for the earliest: a
 * timer of its own per call (and the promises racing it) cost a storage call more than many of
 * the calls themselves. The timer keeps the process alive only while a call is waiting, as each
 * call's own did; between calls it stays armed, unreferenced, and re-arms when it fires.
 */
interface Waiting {
  at: number;
  expire(): void;
}
const waiting = new Set<Waiting>();
/** The longest delay setTimeout takes as it is (longer ones it turns into 1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1;
let armed: { at: number; timer: NodeJS.Timeout } | undefined;

function watch(call: Waiting): void {
  waiting.add(call);
  if (armed === undefined || call.at < armed.at) arm(call.at);
  else armed.timer.ref();
}

function unwatch(call: Waiting): void {
  waiting.delete(call);
  if (waiting.size === 0) armed?.timer.unref();
}

function arm(at: number): void {
  if (armed) clearTimeout(armed.timer);
  // Outside any request: the timer serves every call, not the one that armed it.
  const timer = outsideRequest(() => setTimeout(expireDue, Math.min(MAX_TIMER_MS, Math.max(1, Math.ceil(at - performance.now())))));
  armed = { at, timer };
}

function expireDue(): void {
  armed = undefined;
  const now = performance.now();
  let next = Number.POSITIVE_INFINITY;
  for (const call of [...waiting]) {
    if (call.at <= now) {
      waiting.delete(call);
      call.expire();
    } else if (call.at < next) next = call.at;
  }
  if (next !== Number.POSITIVE_INFINITY) arm(next);
}

const classified = (err: unknown) => (isStorageUnavailable(err) ? storageUnavailable(err) : err);

/**
 * `fn.apply(self, args)`, rejecting with StorageTimeout when it has not settled within `ms`;
 * classifies its failure, a synchronous throw like a rejection.
 */
function callWithin<T>(method: string, ms: number, fn: (...a: unknown[]) => T | Promise<T>, self: unknown, args: unknown[]): Promise<T> {
  // Nothing left of the request's deadline: fail now, without starting the call.
  if (ms <= 0) return Promise.reject(storageUnavailable(new StorageTimeout(method, 0)));
  let result: T | Promise<T>;
  try {
    result = fn.apply(self, args);
  } catch (err) {
    return Promise.reject(classified(err));
  }
  return new Promise<T>((resolve, reject) => {
    const call: Waiting = { at: performance.now() + ms, expire: () => reject(storageUnavailable(new StorageTimeout(method, ms))) };
    watch(call);
    Promise.resolve(result).then(
      (value) => {
        unwatch(call);
        resolve(value);
      },
      (err: unknown) => {
        unwatch(call);
        reject(classified(err));
      },
    );
  });
}

/** Rejects with StorageTimeout when `work` has not settled within `ms`; classifies its failure. */
export function withinDeadline<T>(method: string, ms: number, work: () => Promise<T>): Promise<T> {
  return callWithin(method, ms, work, undefined, []);
}

/**
 * `store` with a deadline of `ms` on every method but close(): closing flushes writes already
 * accepted, and shutdown (kms serve) bounds how long it waits for that itself. Each method's
 * wrapper is made once (and again only if the method itself changes).
 */
export function withDeadline(store: Store, ms: number): Store {
  if (!(Number.isFinite(ms) && ms > 0)) throw new RangeError(`a storage deadline must be a positive number of milliseconds, got ${ms}`);
  const wrappers = new Map<string, { value: (...a: unknown[]) => unknown; wrapper: (...a: unknown[]) => Promise<unknown> }>();
  return new Proxy(store, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function' || property === 'close' || typeof property !== 'string') return value;
      const known = wrappers.get(property);
      if (known?.value === value) return known.wrapper;
      const method = value as (...a: unknown[]) => unknown;
      const wrapper = (...args: unknown[]) => callWithin(property, remainingMs(ms), method, target, args);
      wrappers.set(property, { value: method, wrapper });
      return wrapper;
    },
  });
}
