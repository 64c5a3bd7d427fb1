/**
 * `node dist-bench/peers/pykmip-main.js [--ms 3000] [--log-level INFO]`: the PyKMIP peer on its
 * own — create and get at concurrency 1 and 8 on one server — as a table, or JSON with --json.
 */
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { pykmipAvailable, startPyKmip, type PyKmipResult } from './pykmip.js';

const { values: flags } = parseArgs({
  options: { ms: { type: 'string', default: '3000' }, 'log-level': { type: 'string', default: 'INFO' }, json: { type: 'boolean', default: false } },
  strict: true,
});
const why = await pykmipAvailable();
if (why) {
  process.stderr.write(`PyKMIP peer unavailable: ${why}\n`);
  process.exit(2);
}
const t0 = performance.now();
const peer = await startPyKmip({ logLevel: flags['log-level'] });
const results: PyKmipResult[] = [];
try {
  for (const op of ['create', 'get'] as const)
    for (const concurrency of [1, 8]) {
      const r = await peer.measure({ op, concurrency, ms: Number(flags.ms) });
      results.push(r);
      if (!flags.json)
        process.stdout.write(
          `${op.padEnd(6)} c=${concurrency}  ${r.opsPerSec.toFixed(1).padStart(7)} ops/s  ` +
            `${r.opsPerServerCpuSec.toFixed(0).padStart(5)} ops/server-cpu-s  server ${r.serverCores.toFixed(2)} cores  ` +
            `client ${r.clientCpuSec.toFixed(2)} cpu-s  p50 ${r.p50Ms.toFixed(1)} ms  p99 ${r.p99Ms.toFixed(1)} ms  errors ${r.errors}` +
            `${r.firstError ? ` (${r.firstError})` : ''}\n`,
        );
    }
} finally {
  await peer.stop();
}
const totalSeconds = (performance.now() - t0) / 1000;
if (flags.json) process.stdout.write(`${JSON.stringify({ results, totalSeconds })}\n`);
else process.stdout.write(`total ${totalSeconds.toFixed(1)} s (server start and stop included)\n`);
process.exit(results.some((r) => r.errors > 0) ? 1 : 0);
