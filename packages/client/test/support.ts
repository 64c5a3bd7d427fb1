/** Assertions and generated inputs shared by the SDK's offline tests. */
import assert from 'node:assert/strict';
import { ErrorCodes, KmsError, type ErrorCode } from '@openkms/protocol';

/** Awaits the rejection of `promise` and checks it is a KmsError with `code` (and its status). */
export async function refusal(promise: Promise<unknown> | (() => unknown), code: ErrorCode, reason?: RegExp): Promise<KmsError> {
  let caught: unknown;
  await assert.rejects(
    async () => (typeof promise === 'function' ? promise() : promise),
    (err: unknown) => {
      caught = err;
      return true;
    },
  );
  assert.ok(caught instanceof KmsError, `expected a KmsError, got ${String(caught)}`);
  assert.equal(caught.code, code, `code of: ${caught.message}`);
  assert.equal(caught.status, ErrorCodes[code].status);
  if (reason) assert.match(caught.reason, reason);
  return caught;
}



/**
 * Seeded randomness for generated inputs (mulberry32, as the server's tests use): a failing case
 * names its seed, and the same seed in `envName` reproduces the run exactly.
 */
export function seededRandom(envName: string) {
  const fromEnv = process.env[envName];
  const seed = (fromEnv ? Number(fromEnv) : Date.now() ^ (process.pid << 10)) >>> 0;
  let state = seed;
  const rand = (): number => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(rand() * n);
  return {
    seed,
    rand,
    int,
    pick: <T>(items: readonly T[]): T => items[int(items.length)]!,
    bytes: (n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(256)),
    /** `what`, tagged with the seed that reproduces it. */
    at: (what: string): string => `${what} (${envName}=${seed})`,
  };
}
