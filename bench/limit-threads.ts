/**
 * The handshake limit on several cores at once: `threads` worker threads each run the limit's
 * handshake (crypto-limit.ts) for the same wall-clock window, and their rates add up. Against one
 * thread run the same way it says how much a second core gives raw `node:crypto` on this machine
 * (virtual cores may share a physical one), the ceiling of what `--workers 2` can give the KMS.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { handshakeOp, type HandshakeInputs } from './crypto-limit.js';

interface Job {
  inputs: HandshakeInputs;
  /** performance.timeOrigin + now() at which every thread starts counting. */
  startAt: number;
  ms: number;
}

/** Handshakes per wall-second of `threads` threads at once, summed; a thread that does not answer in time fails it. */
export async function handshakesOnThreads(inputs: HandshakeInputs, threads: number, ms: number): Promise<number> {
  const startAt = performance.timeOrigin + performance.now() + 300;
  const workers: Worker[] = [];
  try {
    const rates = await Promise.all(
      Array.from({ length: threads }, () => new Promise<number>((resolve, reject) => {
        const worker = new Worker(new URL(import.meta.url), { workerData: { inputs, startAt, ms } satisfies Job });
        workers.push(worker);
        const timer = setTimeout(() => reject(new Error(`a limit thread did not answer within ${ms + 15_000} ms`)), ms + 15_000);
        worker.once('message', (rate: number) => {
          clearTimeout(timer);
          resolve(rate);
        });
        worker.once('error', reject);
        worker.once('exit', (code) => code !== 0 && reject(new Error(`limit thread exited with ${code}`)));
      })),
    );
    return rates.reduce((a, b) => a + b, 0);
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

if (!isMainThread && parentPort) {
  const { inputs, startAt, ms } = workerData as Job;
  const op = handshakeOp(inputs);
  const wall = () => performance.timeOrigin + performance.now();
  while (wall() < startAt) op(); // the warm-up (JIT, key caches), until every thread is there
  let ops = 0;
  const end = startAt + ms;
  while (wall() < end) {
    op();
    ops++;
  }
  parentPort.postMessage(ops / ((wall() - startAt) / 1000));
}
