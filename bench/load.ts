/**
 * Load generation and statistics for the benchmark: a closed loop of N concurrent workers for a
 * fixed time (each starts its next operation when the previous one ends), a synchronous loop for
 * the crypto limit, medians and nearest-rank percentiles. Nothing here asserts a time.
 */
import { performance } from 'node:perf_hooks';

export interface Latency {
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

export interface RunResult {
  ops: number;
  seconds: number;
  opsPerSec: number;
  errors: number;
  firstError?: string;
}

/** Median of a non-empty list (the mean of the two middle values for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) return 0;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Nearest-rank percentiles of latencies in ms (sorts the array in place). */
export function percentiles(latencies: number[]): Latency {
  if (latencies.length === 0) return { p50: 0, p95: 0, p99: 0, max: 0 };
  latencies.sort((a, b) => a - b);
  const at = (p: number) => latencies[Math.min(latencies.length - 1, Math.max(0, Math.ceil((p / 100) * latencies.length) - 1))]!;
  return { p50: at(50), p95: at(95), p99: at(99), max: latencies[latencies.length - 1]! };
}

/**
 * Runs `op` synchronously for about `ms` milliseconds (checking the clock every `batch` calls) and
 * answers operations per second.
 */
export function syncOpsPerSec(op: () => void, ms: number, batch = 16): number {
  let ops = 0;
  const start = performance.now();
  const end = start + ms;
  let now = start;
  while (now < end) {
    for (let i = 0; i < batch; i++) op();
    ops += batch;
    now = performance.now();
  }
  return ops / ((now - start) / 1000);
}

/**
 * `concurrency` workers call `op` back to back for `ms` milliseconds; the run ends when the last
 * operation started in time has finished. Every operation's latency (ms) goes to `latencies` when
 * given. A failed operation counts as an error, not as throughput.
 */
export async function closedLoop(
  concurrency: number,
  ms: number,
  op: (seq: number) => Promise<unknown>,
  latencies?: number[],
): Promise<RunResult> {
  let seq = 0;
  let ops = 0;
  let errors = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const end = start + ms;
  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      const t0 = performance.now();
      try {
        await op(seq++);
        ops++;
        latencies?.push(performance.now() - t0);
      } catch (err) {
        errors++;
        firstError ??= err instanceof Error ? err.message : String(err);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (performance.now() - start) / 1000;
  return { ops, seconds, opsPerSec: ops / seconds, errors, firstError };
}

/** Lets timers, sockets and queued microtasks settle between runs. */
export const settle = (ms = 50): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
