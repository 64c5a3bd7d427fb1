/**
 * Storage as an operator watches it: every call's duration, and its failure by kind. Wraps the
 * deadline-wrapped store (server.ts), so a call that ran out of time is seen as the 503 the
 * request gets. Generic over the store: the methods measured are the store's own, found on its
 * prototype chain when it is wrapped, so a method added to the Store interface is measured without
 * a change here; the set is closed at that moment, which keeps the `method` label bounded.
 */
import { KmsError } from '@openkms/protocol';
import { StorageTimeout, isStorageUnavailable } from './deadline.js';

/**
 * Why a storage call failed:
 * - `timeout`: it ran out of time — the deadline, or PostgreSQL's statement or lock timeout and
 *   SQLite's busy timeout, which are all set to storage.timeoutSeconds;
 * - `unavailable`: storage could not be reached, or the connection to it was lost;
 * - `other`: anything else (a refused query, a bug).
 */
export type StorageFailure = 'timeout' | 'unavailable' | 'other';

/** Told of every storage call: the method, how long it took, and how it failed (undefined: it did not). */
export type StorageObserver = (method: string, seconds: number, failure: StorageFailure | undefined) => void;

/** Codes that say a call waited its whole time budget: PostgreSQL statement/lock timeout, SQLite busy. */
const TIMED_OUT = /^(57014|55P03|SQLITE_BUSY(_.*)?)$/;

export function storageFailureOf(err: unknown): StorageFailure {
  const unavailable = err instanceof KmsError && err.code === 'STORAGE_UNAVAILABLE';
  const cause = unavailable ? (err as KmsError & { cause?: unknown }).cause : err;
  if (cause instanceof StorageTimeout) return 'timeout';
  const code = typeof cause === 'object' && cause !== null ? (cause as { code?: unknown }).code : undefined;
  if (typeof code === 'string' && TIMED_OUT.test(code)) return 'timeout';
  return unavailable || isStorageUnavailable(cause) ? 'unavailable' : 'other';
}

/** The methods of `store` that are measured: its functions up the prototype chain, but close and Object's own. */
export function methodsOf(store: object): string[] {
  const names = new Set<string>();
  for (let o: object | null = store; o && o !== Object.prototype; o = Object.getPrototypeOf(o) as object | null) {
    for (const name of Object.getOwnPropertyNames(o)) {
      if (name === 'constructor' || name === 'close' || name in Object.prototype) continue;
      const descriptor = Object.getOwnPropertyDescriptor(o, name);
      if (descriptor && typeof descriptor.value === 'function') names.add(name);
    }
  }
  return [...names].sort();
}

/**
 * `store` with every call of its methods (methodsOf) reported to `observe`; answers and errors
 * pass unchanged. close() is not measured: shutdown is not storage load.
 */
export function instrumented<S extends object>(store: S, observe: StorageObserver): S {
  const measured = new Set(methodsOf(store));
  const report = (method: string, started: number, failure: StorageFailure | undefined) => {
    try {
      observe(method, (performance.now() - started) / 1000, failure);
    } catch {
      // Counting must never change what storage answered.
    }
  };
  // Each method's wrapper is made once (and again only if the method itself changes).
  const wrappers = new Map<string, { value: unknown; wrapper: (...args: unknown[]) => unknown }>();
  return new Proxy(store, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function' || typeof property !== 'string' || !measured.has(property)) return value;
      const known = wrappers.get(property);
      if (known?.value === value) return known.wrapper;
      const wrapper = (...args: unknown[]) => {
        const started = performance.now();
        let result: unknown;
        try {
          result = (value as (...a: unknown[]) => unknown).apply(target, args);
        } catch (err) {
          report(property, started, storageFailureOf(err));
          throw err;
        }
        if (!(result instanceof Promise)) {
          report(property, started, undefined);
          return result;
        }
        return result.then(
          (answer: unknown) => {
            report(property, started, undefined);
            return answer;
          },
          (err: unknown) => {
            report(property, started, storageFailureOf(err));
            throw err;
          },
        );
      };
      wrappers.set(property, { value, wrapper });
      return wrapper;
    },
  });
}
