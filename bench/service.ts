/**
 * `npm run bench:service`: what `kms serve --workers 2` gives over `--workers 1`, as ratios, on
 * SQLite and on PostgreSQL (127.0.0.1:5432 database `test`, KMS_TEST_POSTGRES_URL overrides it; a
 * fresh schema per run, dropped afterwards; left out when no server answers). Each run is a real
 * `kms serve` process (log level warn) on a fresh KMS folder and database, loaded over HTTP from
 * this process by a closed loop of pre-sealed batches: handshakes (`create /ecdhe`, RSA-OAEP and
 * PS256 on the server: CPU-bound) and retrieveKey on one channel (a storage read and AES-GCM).
 *
 * The load comes from the same machine, so on a small machine it takes cores from the workers: the
 * ratio is what this machine shows, not the KMS's ceiling. Flags: --quick (one short run each),
 * --json (the report on stdout). Exits non-zero when any request failed; never on a time.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createPublicKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { NO_RATE_LIMITS, postgresProblem, TEST_POSTGRES_URL } from '@openkms/server/testing';
import { messages } from './fixtures.js';
import { closedLoop, median, settle } from './load.js';

const KMS_BIN = fileURLToPath(new URL('../packages/server/bin/kms.js', import.meta.url));
const AUTHORITY = 'kms.service.example';
const USER = 'alice@service.example';

const { values: flags } = parseArgs({ options: { quick: { type: 'boolean', default: false }, json: { type: 'boolean', default: false } } });
const P = flags.quick ? { runs: 1, ms: 1500, warmMs: 300 } : { runs: 3, ms: 3000, warmMs: 700 };
const HANDSHAKE = { batch: 10, concurrency: 8 };
const RETRIEVE = { batch: 50, concurrency: 16 };

const say = (line: string) => (flags.json ? process.stderr : process.stdout).write(`${line}\n`);

interface Backend {
  name: 'SQLite' | 'PostgreSQL';
  /** `kms serve` arguments for a fresh database, and how to drop it afterwards. */
  fresh(): Promise<{ args: string[]; drop(): Promise<void> }>;
}

interface Figure {
  opsPerSec: number;
  runs: number[];
  errors: number;
  firstError?: string;
}

function kms(args: string[]): string {
  const r = spawnSync(process.execPath, [KMS_BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`kms ${args[0]}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** `kms serve`, resolved with its URL once it says where it listens. */
function serve(args: string[]): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [KMS_BIN, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  return new Promise((resolve, reject) => {
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      const m = /listening on (\S+)/.exec(stderr);
      if (m) resolve({ url: m[1]!, child });
    });
    child.once('exit', (code) => reject(new Error(`kms serve exited with ${code}: ${stderr.trim()}`)));
  });
}

const stop = (child: ChildProcess) =>
  new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.kill('SIGTERM');
  });

async function post(url: string, batch: string[]): Promise<string[]> {
  const res = await fetch(`${url}/kms/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kmsMessages: batch }) });
  const answers = ((await res.json()) as { kmsMessages?: string[] }).kmsMessages;
  if (res.status !== 200 || answers?.length !== batch.length) throw new Error(`batch answered HTTP ${res.status}`);
  return answers;
}

/** Median ops/s over the runs of `op` (each call is `perCall` operations), after a warm-up. */
async function measure(concurrency: number, perCall: number, op: (seq: number) => Promise<void>): Promise<Figure> {
  await closedLoop(concurrency, P.warmMs, op);
  const runs: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  for (let i = 0; i < P.runs; i++) {
    await settle(200);
    const r = await closedLoop(concurrency, P.ms, op);
    runs.push(r.opsPerSec * perCall);
    errors += r.errors;
    firstError ??= r.firstError;
  }
  return { opsPerSec: median(runs), runs, errors, firstError };
}

/** One `kms serve --workers N` on a fresh folder and database of `backend`: its handshakes/s and retrieveKey/s. */
async function measureServe(backend: Backend, workers: number): Promise<{ handshake: Figure; retrieveKey: Figure }> {
  const dir = mkdtempSync(join(tmpdir(), 'kms-bench-service-'));
  const db = await backend.fresh();
  let child: ChildProcess | undefined;
  try {
    kms(['init', '--dir', dir, '--authority', AUTHORITY, '--domain', 'service.example']);
    const config = join(dir, 'kms.json');
    // One principal from one address as fast as it can go: without the limits that stop exactly that.
    writeFileSync(config, JSON.stringify({ ...JSON.parse(readFileSync(config, 'utf8')), limits: NO_RATE_LIMITS }, null, 2));
    const bearer = kms(['token', '--config', config, '--user', USER, '--ttl', '3600']).trim();
    const served = await serve(['--config', config, '--port', '0', '--log-level', 'warn', '--workers', String(workers), ...db.args]);
    child = served.child;
    const { url } = served;
    const wellKnown = (await (await fetch(`${url}/.well-known/kms`)).json()) as { rsaPublicKey: { kid: string } };
    const staticPublic = createPublicKey({ key: wellKnown.rsaPublicKey, format: 'jwk' });
    const m = messages(AUTHORITY, wellKnown.rsaPublicKey.kid, staticPublic, { clientId: 'bench-service', credential: { bearer } });
    const channel = await m.channel(async (message) => (await post(url, [message]))[0]!);

    // Keys of this user, and retrieveKey messages for them sealed in advance (repeats are allowed).
    const created = await m.open((await post(url, [(await m.seal(channel, { method: 'create', uri: `kms://${AUTHORITY}/keys`, count: 32 })).message]))[0]!, channel);
    const keys = (created.keys as { uri: string }[] | undefined) ?? [];
    if (created.status !== 201 || keys.length !== 32) throw new Error(`setup: create keys answered ${created.status}`);
    const retrieves = await Promise.all(Array.from({ length: 20 * RETRIEVE.batch }, (_, i) => m.seal(channel, { method: 'retrieve', uri: keys[i % keys.length]!.uri })));
    const retrieveBatches = Array.from({ length: 20 }, (_, i) => retrieves.slice(i * RETRIEVE.batch, (i + 1) * RETRIEVE.batch).map((r) => r.message));
    // Every handshake of a run is a new one (a fresh client key, a new requestId).
    const handshakes = await Promise.all(Array.from({ length: 400 }, () => m.sealHandshake()));
    const handshakeBatches = Array.from({ length: handshakes.length / HANDSHAKE.batch }, (_, i) => handshakes.slice(i * HANDSHAKE.batch, (i + 1) * HANDSHAKE.batch).map((h) => h.message));

    // A sampled answer of each kind is opened and checked: a throughput of refusals is no figure.
    const check = async (answer: string, status: number, under?: { key: Uint8Array }) => {
      const got = (await m.open(answer, under)).status;
      if (got !== status) throw new Error(`an answer had status ${got}, not ${status}`);
    };
    const handshake = await measure(HANDSHAKE.concurrency, HANDSHAKE.batch, async (seq) => {
      const answers = await post(url, handshakeBatches[seq % handshakeBatches.length]!);
      if ((seq & 31) === 0) await check(answers[0]!, 201);
    });
    const retrieveKey = await measure(RETRIEVE.concurrency, RETRIEVE.batch, async (seq) => {
      const answers = await post(url, retrieveBatches[seq % retrieveBatches.length]!);
      if ((seq & 31) === 0) await check(answers[seq % answers.length]!, 200, channel);
    });
    const code = await stop(child);
    child = undefined;
    if (code !== 0) throw new Error(`kms serve --workers ${workers} exited with ${code} on SIGTERM`);
    return { handshake, retrieveKey };
  } finally {
    if (child) await stop(child);
    await db.drop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function backends(): Promise<Backend[]> {
  const list: Backend[] = [{ name: 'SQLite', fresh: async () => ({ args: [], drop: async () => {} }) }];
  const problem = await postgresProblem(TEST_POSTGRES_URL);
  if (problem !== undefined) {
    say(`PostgreSQL left out: ${problem}`);
    return list;
  }
  const query = async (sql: string) => {
    const client = new pg.Client({ connectionString: TEST_POSTGRES_URL });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  list.push({
    name: 'PostgreSQL',
    async fresh() {
      const schema = `kms_bench_${randomBytes(6).toString('hex')}`;
      return {
        args: ['--db', `${TEST_POSTGRES_URL}${TEST_POSTGRES_URL.includes('?') ? '&' : '?'}schema=${schema}`],
        drop: () => query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`),
      };
    },
  });
  return list;
}

async function main(): Promise<number> {
  const fmt = (n: number) => Math.round(n).toLocaleString('en-US').padStart(8);
  say(`kms serve --workers 1 vs 2 on ${cpus().length} cores (${cpus()[0]?.model ?? 'cpu'}); load from this process, ${P.runs} run(s) of ${P.ms} ms, median`);
  say(`load average: ${loadavg().map((l) => l.toFixed(2)).join(', ')} (1, 5, 15 min)`);
  say(`handshakes: POST batches of ${HANDSHAKE.batch} × ${HANDSHAKE.concurrency} at once; retrieveKey: batches of ${RETRIEVE.batch} × ${RETRIEVE.concurrency}`);
  const report: Record<string, unknown>[] = [];
  let failed = 0;
  for (const backend of await backends()) {
    const one = await measureServe(backend, 1);
    const two = await measureServe(backend, 2);
    for (const what of ['handshake', 'retrieveKey'] as const) {
      const [a, b] = [one[what], two[what]];
      failed += a.errors + b.errors;
      const ratio = b.opsPerSec / a.opsPerSec;
      say(`${backend.name.padEnd(10)} ${what.padEnd(11)} workers 1 ${fmt(a.opsPerSec)}/s   workers 2 ${fmt(b.opsPerSec)}/s   ratio ${ratio.toFixed(2)}${a.errors + b.errors ? `   errors ${a.errors + b.errors}: ${a.firstError ?? b.firstError}` : ''}`);
      report.push({ backend: backend.name, operation: what, workers1: a, workers2: b, ratio });
    }
  }
  // Other work on the machine moves every figure: say how busy it was.
  say(`load average: ${loadavg().map((l) => l.toFixed(2)).join(', ')} (1, 5, 15 min)`);
  if (flags.json) process.stdout.write(`${JSON.stringify({ cores: cpus().length, runs: P.runs, ms: P.ms, results: report }, null, 2)}\n`);
  return failed > 0 ? 1 : 0;
}

process.exitCode = await main();
