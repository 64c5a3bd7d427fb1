/**
 * `npm run bench`: KMS throughput and latency as ratios against the crypto limit measured in the
 * same run (ARCHITECTURE.md "Measure, don't guess"). On a small, noisy machine absolute figures
 * move from run to run; the ratio to what raw `node:crypto` does on one core in the same process,
 * a moment before, moves much less, and says how much of the machine the KMS spends around the
 * cryptography it cannot avoid.
 *
 *   1. crypto limit (one core, raw node:crypto): common message and handshake;
 *   2. core: `kms.handle()` in process with messages sealed in advance (no transport, no client);
 *   3. HTTP: the SDK (KmsClient, batched HTTP) against the KMS on loopback, from this process;
 *   4. WebSocket: the same over the SDK's WebSocket transport.
 *
 * Flags: --quick (about 15 s instead of about 60–90 s), --json (the report on stdout, the table on
 * stderr), --out FILE (default dist-bench/report.json), --only core,http,ws (the crypto limit is
 * always measured). Exits non-zero when any request failed; never on a time.
 */
import { cpus, loadavg } from 'node:os';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import { KmsClient, type WebSocketConstructor } from '@openkms/client';
import { commonOp, handshakeOp, measureLimit, type Limit } from './crypto-limit.js';
import { setup } from './fixtures.js';
import { closedLoop, median, percentiles, settle, type Latency } from './load.js';

type LimitName = 'common' | 'handshake';

interface Result {
  id: string;
  /** What one operation is. */
  name: string;
  transport: 'in-process' | 'http' | 'websocket';
  concurrency: number;
  /** The crypto limit this is compared with. */
  limit: LimitName;
  /** Median of the runs. */
  opsPerSec: number;
  /** opsPerSec / the crypto limit's opsPerSec. */
  ratio: number;
  runs: number[];
  /** Latency of one operation (for a raw batch: of the whole HTTP request). */
  latencyMs: Latency;
  /** Event-loop utilization of this process during the runs (1 = the main thread never waited). */
  eventLoop: number;
  /** Process CPU time ÷ wall time (above 1 when libuv's thread pool works alongside the main thread). */
  cpu: number;
  ops: number;
  errors: number;
  firstError?: string;
}

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    out: { type: 'string' },
    only: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});
if (flags.help) {
  process.stdout.write('usage: node dist-bench/bench.js [--quick] [--json] [--out FILE] [--only core,http,ws]\n');
  process.exit(0);
}
const parts = new Set((flags.only ?? 'core,http,ws').split(',').map((s) => s.trim()));
for (const p of parts) if (!['core', 'http', 'ws'].includes(p)) throw new Error(`--only takes core, http, ws; got ${p}`);

const P = flags.quick
  ? { limitRuns: 3, limitMs: 250, runs: 1, coreMs: 700, netMs: 700, warmMs: 200, httpLevels: [1, 50], wsLevels: [50], coreConcurrency: 200, handshakeConcurrency: 50 }
  : { limitRuns: 5, limitMs: 500, runs: 3, coreMs: 2000, netMs: 1500, warmMs: 500, httpLevels: [1, 10, 100], wsLevels: [1, 100], coreConcurrency: 200, handshakeConcurrency: 50 };

/** The table goes to stdout, or to stderr when stdout carries the JSON report. */
const say = (line = ''): void => {
  (flags.json ? process.stderr : process.stdout).write(`${line}\n`);
};

const started = performance.now();
const limits: Record<LimitName, Limit> = { common: { opsPerSec: 0, runs: [] }, handshake: { opsPerSec: 0, runs: [] } };
const results: Result[] = [];

/** Warm-up, then `P.runs` closed-loop runs; throughput is the median, latencies are pooled. */
async function measure(
  meta: Pick<Result, 'id' | 'name' | 'transport' | 'concurrency' | 'limit'>,
  op: (seq: number) => Promise<unknown>,
  ms: number,
  /** KMS messages per call of `op` (a raw batch carries many). */
  perOp = 1,
): Promise<Result> {
  const workers = Math.ceil(meta.concurrency / perOp);
  const warm = await closedLoop(workers, P.warmMs, op);
  await settle();
  const latencies: number[] = [];
  const runs: number[] = [];
  let ops = 0;
  let errors = warm.errors;
  let firstError = warm.firstError;
  let wall = 0;
  let cpuMicros = 0;
  let loopActive = 0;
  let loopIdle = 0;
  for (let i = 0; i < P.runs; i++) {
    const elu0 = performance.eventLoopUtilization();
    const cpu0 = process.cpuUsage();
    const run = await closedLoop(workers, ms, op, latencies);
    const elu = performance.eventLoopUtilization(elu0);
    const cpu = process.cpuUsage(cpu0);
    loopActive += elu.active;
    loopIdle += elu.idle;
    cpuMicros += cpu.user + cpu.system;
    wall += run.seconds;
    runs.push(run.opsPerSec * perOp);
    ops += run.ops * perOp;
    errors += run.errors;
    firstError ??= run.firstError;
    await settle();
  }
  const opsPerSec = median(runs);
  const result: Result = {
    ...meta,
    opsPerSec,
    ratio: opsPerSec / limits[meta.limit].opsPerSec,
    runs,
    latencyMs: percentiles(latencies),
    eventLoop: loopActive / (loopActive + loopIdle || 1),
    cpu: cpuMicros / 1e6 / (wall || 1),
    ops,
    errors,
    firstError,
  };
  results.push(result);
  say(row(result));
  return result;
}

// ---- table ----------------------------------------------------------------------------------------

const num = (n: number, digits = 0): string => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const ms = (n: number): string => (n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : n.toFixed(0));
const COLS = [38, 5, 8, 7, 7, 7, 7, 5, 5, 14];
const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(COLS[i]!) : c.padStart(COLS[i]!))).join(' ');
const header = (): string => line(['measured', 'conc', 'ops/s', 'ratio', 'p50 ms', 'p95 ms', 'p99 ms', 'loop', 'cpu', 'runs min–max']);
function row(r: Result): string {
  const lo = Math.min(...r.runs);
  const hi = Math.max(...r.runs);
  return line([
    `${r.transport} ${r.name}`,
    String(r.concurrency),
    num(r.opsPerSec),
    `${(r.ratio * 100).toFixed(1)}%`,
    ms(r.latencyMs.p50),
    ms(r.latencyMs.p95),
    ms(r.latencyMs.p99),
    `${Math.round(r.eventLoop * 100)}%`,
    `${Math.round(r.cpu * 100)}%`,
    `${num(lo)}–${num(hi)}`,
  ]) + (r.errors ? `  ${r.errors} errors: ${r.firstError}` : '');
}

// ---- the run --------------------------------------------------------------------------------------

async function main(): Promise<number> {
  say(`openkms bench${flags.quick ? ' --quick' : ''}: Node ${process.version}, ${cpus().length} × ${cpus()[0]?.model.trim() ?? 'cpu'}, load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const fx = await setup();
  const clients: KmsClient[] = [];
  try {
    // Samples of the real payloads, for the crypto limit and the in-process runs.
    const channel = await fx.channel();
    const retrieve = await Promise.all(Array.from({ length: 512 }, (_, i) => fx.seal(channel, { method: 'retrieve', uri: fx.keyUris[i % fx.keyUris.length]! })));
    const pings = await Promise.all(Array.from({ length: 512 }, () => fx.seal(channel, { method: 'update', uri: '/ping' })));
    const handshakes = await Promise.all(Array.from({ length: 256 }, () => fx.sealHandshake()));
    const retrieveAnswer = await fx.open(await fx.running.kms.handle(retrieve[0]!.message), channel);
    const handshakeAnswer = await fx.open(await fx.running.kms.handle(handshakes[0]!.message));
    if (retrieveAnswer.status !== 200 || handshakeAnswer.status !== 201) {
      throw new Error(`setup: retrieve answered ${retrieveAnswer.status}, handshake ${handshakeAnswer.status}`);
    }
    const bytes = {
      retrieveRequest: retrieve[0]!.plaintext.byteLength,
      retrieveAnswer: Buffer.byteLength(JSON.stringify(retrieveAnswer)),
      handshakeRequest: handshakes[0]!.plaintext.byteLength,
      handshakeAnswer: Buffer.byteLength(JSON.stringify(handshakeAnswer)),
    };
    say(`payloads: retrieve ${bytes.retrieveRequest} B → ${bytes.retrieveAnswer} B, handshake ${bytes.handshakeRequest} B → ${bytes.handshakeAnswer} B (JSON plaintext)`);

    // 1. The crypto limit, on one core, before anything else is measured.
    limits.common = measureLimit(commonOp({ request: retrieve[0]!.plaintext, answer: retrieveAnswer as Record<string, unknown>, kid: channel.uri }), P.limitRuns, P.limitMs);
    limits.handshake = measureLimit(
      handshakeOp({ staticKey: fx.staticKey, kid: fx.kid, request: handshakes[0]!.plaintext, answer: handshakeAnswer as Record<string, unknown> }),
      P.limitRuns,
      P.limitMs,
    );
    say();
    say(`crypto limit, one core, raw node:crypto (median of ${P.limitRuns} × ${P.limitMs} ms):`);
    say(`  common message (AES-GCM decrypt + JSON + AES-GCM encrypt)      ${num(limits.common.opsPerSec).padStart(8)} /s   runs ${limits.common.runs.map((r) => num(r)).join(', ')}`);
    say(`  handshake (RSA-OAEP + AES-GCM + P-256 keygen/ECDH/HKDF + PS256) ${num(limits.handshake.opsPerSec).padStart(8)} /s   runs ${limits.handshake.runs.map((r) => num(r)).join(', ')}`);
    say();
    say('ratio = KMS ops/s ÷ the matching crypto limit (handshake ÷ handshake limit, the rest ÷ common limit);');
    say(`loop = event-loop utilization, cpu = process CPU ÷ wall time (${cpus().length} cores: up to ${cpus().length * 100}%)`);
    say(header());

    // 2. The core, in process. A sample of the answers is opened afterwards (outside the timing).
    if (parts.has('core')) {
      const { kms } = fx.running;
      const checked = async (sampled: string[], want: number, ch?: { key: Uint8Array }) => {
        let bad = 0;
        for (const answer of sampled) if ((await fx.open(answer, ch)).status !== want) bad++;
        return bad;
      };
      const core = async (id: string, name: string, messages: { message: string }[], limit: LimitName, want: number, ch?: { key: Uint8Array }, concurrency = P.coreConcurrency) => {
        const sampled: string[] = [];
        const r = await measure({ id, name, transport: 'in-process', concurrency, limit }, async (seq) => {
          const answer = await kms.handle(messages[seq % messages.length]!.message);
          if ((seq & 255) === 0) sampled.push(answer);
        }, P.coreMs);
        const bad = await checked(sampled, want, ch);
        if (bad) {
          r.errors += bad;
          r.firstError ??= `${bad} of ${sampled.length} sampled answers had another status than ${want}`;
          say(`  ${r.firstError}`);
        }
      };
      await core('core.retrieveKey', 'kms.handle retrieveKey', retrieve, 'common', 200, channel);
      await core('core.ping', 'kms.handle ping', pings, 'common', 200, channel);
      await core('core.handshake', 'kms.handle handshake', handshakes, 'handshake', 201, undefined, P.handshakeConcurrency);
    }

    // 3. HTTP: the server alone (pre-sealed batches of 50, nothing but fetch on the client side), then
    //    the SDK (batched), from this process: client and server share the main thread.
    if (parts.has('http')) {
      const batch = 50;
      const bodies = Array.from({ length: Math.floor(retrieve.length / batch) }, (_, i) =>
        JSON.stringify({ kmsMessages: retrieve.slice(i * batch, (i + 1) * batch).map((m) => m.message) }),
      );
      const sampled: string[] = [];
      const post = async (seq: number) => {
        const res = await fetch(`${fx.running.url}/kms/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: bodies[seq % bodies.length]! });
        const answers = ((await res.json()) as { kmsMessages?: string[] }).kmsMessages;
        if (res.status !== 200 || answers?.length !== batch) throw new Error(`batch answered HTTP ${res.status}`);
        if ((seq & 15) === 0) sampled.push(answers[seq % batch]!);
      };
      const raw = await measure({ id: `http.raw.retrieveKey.b${batch}`, name: `POST ×${batch} pre-sealed retrieveKey`, transport: 'http', concurrency: 4 * batch, limit: 'common' }, post, P.netMs, batch);
      for (const answer of sampled) {
        const status = (await fx.open(answer, channel)).status;
        if (status !== 200) {
          raw.errors++;
          raw.firstError ??= `a sampled answer had status ${status}`;
        }
      }
      for (const concurrency of P.httpLevels) {
        const client = new KmsClient(fx.clientOptions());
        clients.push(client);
        await measure({ id: `http.retrieveKey.c${concurrency}`, name: 'SDK retrieveKey', transport: 'http', concurrency, limit: 'common' }, (seq) => client.retrieveKey(fx.keyUris[seq % fx.keyUris.length]!), P.netMs);
        await client.close();
      }
    }

    // 4. WebSocket through the SDK.
    if (parts.has('ws')) {
      for (const concurrency of P.wsLevels) {
        const client = new KmsClient(fx.clientOptions({ transport: 'websocket', WebSocket: WebSocket as unknown as WebSocketConstructor }));
        clients.push(client);
        await measure({ id: `ws.retrieveKey.c${concurrency}`, name: 'SDK retrieveKey', transport: 'websocket', concurrency, limit: 'common' }, (seq) => client.retrieveKey(fx.keyUris[seq % fx.keyUris.length]!), P.netMs);
        await client.close();
      }
    }

    const seconds = (performance.now() - started) / 1000;
    const errors = results.reduce((n, r) => n + r.errors, 0);
    const report = {
      schema: 'openkms-bench/1',
      date: new Date().toISOString(),
      quick: flags.quick,
      node: process.version,
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model.trim() ?? '',
      loadavg: loadavg(),
      seconds,
      payloadBytes: bytes,
      cryptoLimit: {
        common: { ...limits.common, what: 'AES-256-GCM decrypt + JSON.parse + JSON.stringify + AES-256-GCM encrypt, raw node:crypto, one core' },
        handshake: { ...limits.handshake, what: 'RSA-OAEP(SHA-1) CEK decrypt + AES-256-GCM + P-256 keygen + ECDH + HKDF + PS256 sign, raw node:crypto, one core' },
      },
      results,
      errors,
      serverProblems: fx.problems,
    };
    const out = resolve(flags.out ?? fileURLToPath(new URL('./report.json', import.meta.url)));
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
    say();
    say(`${results.length} measurements in ${seconds.toFixed(1)} s; report: ${out}`);
    if (fx.problems.length) say(`the KMS logged ${fx.problems.length} problem(s), first: ${fx.problems[0]}`);
    if (errors) say(`${errors} request(s) failed`);
    if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
    return errors || fx.problems.some((p) => p.startsWith('error')) ? 1 : 0;
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await fx.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
    // Pooled keep-alive sockets may hold the loop a little longer than needed; do not wait for them.
    setTimeout(() => process.exit(code), 500).unref();
  },
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
