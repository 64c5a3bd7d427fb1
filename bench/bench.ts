/**
 * `npm run bench`: the KMS as it runs in production — a separate `kms serve` process, on SQLite and
 * (when its server answers) PostgreSQL — loaded from this process, every figure also given as a
 * ratio to the crypto limit measured in the same run (ARCHITECTURE.md "Measure, don't guess").
 *
 * Throughput is reported per wall-second and per *server CPU-second* (the CPU time of the serving
 * processes, read from /proc): on a small shared machine the load process and other work take
 * cores from the server, and the CPU-second figure is what the KMS itself costs. The crypto limit
 * is counted per CPU-second of its thread too, so both sides of a ratio move alike.
 *
 *   1. the limit: one handshake and one common message on raw node:crypto, compact JOSE included;
 *   2. the SDK (KmsClient.retrieveKey, HTTP and WebSocket): its throughput and client CPU per request;
 *      then per backend, over HTTP batch and WebSocket, at concurrency 1, 16 and 64: handshakes,
 *      retrieve key, create keys (count 1 and 100, in keys), bind, retrieve a resource's 10 newest
 *      keys; client and server latency percentiles (server: the KMS's own request histogram);
 *   3. `--workers 2` against `--workers 1` (handshakes and retrieve key);
 *   4. a warm federated retrieve (B serving A's key from its copy);
 *   5. cost growth: retrieve key with 10³, 10⁵ and 10⁶ keys stored, and RSS with 100,000 channels;
 *   6. with --peer: the PyKMIP server on the same create/get work (bench/peers/).
 *
 * Writes bench/results/latest.json (or --out), latest.txt (the table) and latest.svg (a chart).
 * Flags: --quick (SQLite only, fewer points: under a minute), --peer, --json (the report on stdout,
 * the table on stderr), --backends sqlite,postgres (which of the two), --cpu-prof DIR (every `kms serve`
 * writes a V8 CPU profile there when it stops). Exits non-zero when any request failed; never on a time.
 */
import { createPrivateKey, randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { cpus, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { commonOp, handshakeOp, measureLimit, type Limit } from './crypto-limit.js';
import { handshakesOnThreads } from './limit-threads.js';
import { postBatch, sealHandshake, User } from './fixtures.js';
import { backends, histogramQuantile, kms, kmsFolder, postgresCpuSeconds, profileServers, serve, type Backend, type BackendName, type KmsFolder, type ServingKms } from './kms-process.js';
import WebSocket from 'ws';
import { KmsClient, type WebSocketConstructor } from '@openkms/client';
import { closedLoop, median, percentiles, settle } from './load.js';
import { chart } from './chart.js';
import { pykmipAvailable, startPyKmip } from './peers/pykmip.js';
import { load, type Outgoing, type Traffic, type Transport } from './wire.js';
import { MAX_CACHED_KEYS } from '@openkms/server/testing';

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    peer: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    out: { type: 'string' },
    backends: { type: 'string' },
    'cpu-prof': { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});
if (flags.help) {
  process.stdout.write('usage: npm run bench -- [--quick] [--peer] [--json] [--out FILE] [--backends sqlite,postgres] [--cpu-prof DIR]\n');
  process.exit(0);
}

const QUICK = {
  backends: ['sqlite'] as BackendName[],
  ms: 500,
  warmMs: 120,
  limitRuns: 3,
  limitMs: 250,
  /** Which (transport, concurrency) points each scenario is measured at. */
  points: { http: [1, 16, 64], websocket: [64] } as Record<Transport, number[]>,
  growth: [1_000, 10_000],
  channels: 2_000,
  bindSupply: 4_000,
  sdkPoints: [64],
};
const FULL = {
  backends: ['sqlite', 'postgres'] as BackendName[],
  ms: 1_500,
  warmMs: 300,
  limitRuns: 5,
  limitMs: 500,
  points: { http: [1, 16, 64], websocket: [1, 16, 64] } as Record<Transport, number[]>,
  growth: [1_000, 100_000, 1_000_000],
  channels: 100_000,
  bindSupply: 12_000,
  sdkPoints: [1, 64],
};
const P = flags.quick ? QUICK : FULL;
if (flags.backends !== undefined) {
  const named = flags.backends.split(',').map((b) => b.trim());
  for (const b of named) if (b !== 'sqlite' && b !== 'postgres') throw new Error(`--backends takes sqlite, postgres; got ${b}`);
  P.backends = named as BackendName[];
}
profileServers(flags['cpu-prof']);

const say = (line = ''): void => {
  (flags.json ? process.stderr : process.stdout).write(`${line}\n`);
};

type LimitName = 'handshake' | 'common';
type Unit = 'handshakes' | 'messages' | 'keys';

export interface Result {
  name: string;
  backend: BackendName | 'pykmip';
  transport: Transport | 'kmip';
  concurrency: number;
  workers: number;
  /** What opsPerSec counts: handshakes, messages, or keys (create keys count 100: 100 per message). */
  unit: Unit;
  opsPerSec: number;
  opsPerServerCpuSec: number;
  /** Client round trip of one message (a batch's POST for HTTP). */
  p50Ms: number;
  p99Ms: number;
  /** The server's own time per request (kms_request_duration_seconds), one serving process only. */
  serverP50Ms?: number;
  serverP99Ms?: number;
  /** Messages per server CPU-second ÷ the matching limit (handshake or common message). */
  ratioToLimit: number;
  /** Which limit: `handshake` or `common` (message). */
  against: LimitName;
  /** Server CPU seconds per wall second (up to the number of serving processes). */
  serverCores: number;
  /** On PostgreSQL: its server processes' CPU seconds per wall second (the storage work done there). */
  databaseCores?: number;
  /** The SDK's measurements: the load process's CPU per request (ms), the SDK's own cost. */
  clientCpuMsPerOp?: number;
  ops: number;
  seconds: number;
  errors: number;
  firstError?: string;
}

const started = performance.now();
const results: Result[] = [];
const notes: string[] = [];
let limit: Record<LimitName, Limit> = { handshake: { perCpuSecond: 0, runs: [] }, common: { perCpuSecond: 0, runs: [] } };
/** The limit's two operations, measured again at the end of the run (relimit). */
let limitOps: Record<LimitName, () => void> | undefined;

/**
 * The limit measured again once everything else ran, and every ratio taken against the median of
 * all its runs, first and last: a shared host's cores do not give the same work per CPU-second all
 * through a run of minutes (seen here: the same common-message loop at 29,700 and at 39,700 per
 * CPU-second in two runs an hour apart), and
 * a limit from one moment alone would put the figures measured at another above or below it.
 * The lines printed while the run goes are against the first measurement; the table and JSON
 * written, against both.
 */
function relimit(): void {
  if (!limitOps) return;
  const first = limit;
  const late = { common: measureLimit(limitOps.common, P.limitRuns, P.limitMs), handshake: measureLimit(limitOps.handshake, P.limitRuns, P.limitMs) };
  const both = (name: LimitName): Limit => {
    const runs = [...first[name].runs, ...late[name].runs];
    return { perCpuSecond: median(runs), runs };
  };
  limit = { common: both('common'), handshake: both('handshake') };
  for (const r of results) r.ratioToLimit *= first[r.against].perCpuSecond / limit[r.against].perCpuSecond;
  say();
  say(`crypto limit again at the end: common message ${num(late.common.perCpuSecond)} /s (runs ${late.common.runs.map(num).join(', ')}), handshake ${num(late.handshake.perCpuSecond)} /s (runs ${late.handshake.runs.map(num).join(', ')})`);
  say(`ratios below and in the files against the median of all ${limit.common.runs.length} runs: common message ${num(limit.common.perCpuSecond)} /s, handshake ${num(limit.handshake.perCpuSecond)} /s`);
  say(HEADER);
  for (const r of results) say(row(r));
}
const extra: Record<string, unknown> = {};

// ---- measuring one scenario -------------------------------------------------------------------------

interface Scenario {
  name: string;
  limit: LimitName;
  unit: Unit;
  /** Units per message (create keys count 100: 100). */
  perMessage?: number;
  traffic(): Traffic;
}

async function measure(server: ServingKms, backend: Result['backend'], scenario: Scenario, transport: Transport, concurrency: number, opts: { perConnection?: number; ms?: number } = {}): Promise<Result> {
  const traffic = scenario.traffic();
  const driver = await load(transport, server.url, concurrency, traffic, opts.perConnection);
  const latencies: number[] = [];
  let r;
  let cpu;
  let dbCpu: number | undefined;
  let before;
  let after;
  try {
    await driver.run(P.warmMs);
    await settle(30);
    before = server.workers === 1 ? await server.latencyHistogram() : undefined;
    const cpu0 = server.cpuSeconds();
    const db0 = backend === 'postgres' ? postgresCpuSeconds() : 0;
    r = await driver.run(opts.ms ?? P.ms, latencies);
    cpu = server.cpuSeconds() - cpu0;
    dbCpu = backend === 'postgres' ? postgresCpuSeconds() - db0 : undefined;
    after = server.workers === 1 ? await server.latencyHistogram() : undefined;
  } finally {
    await driver.close();
  }
  const per = scenario.perMessage ?? 1;
  const messages = r.ops;
  const lat = percentiles(latencies);
  const q = (p: number) => (before && after ? histogramQuantile(before, after, p) : undefined);
  const serverP50 = q(50);
  const serverP99 = q(99);
  const perCpu = cpu > 0 ? messages / cpu : 0;
  const result: Result = {
    name: scenario.name,
    backend,
    transport,
    concurrency,
    workers: server.workers,
    unit: scenario.unit,
    opsPerSec: (messages * per) / r.seconds,
    opsPerServerCpuSec: perCpu * per,
    p50Ms: lat.p50,
    p99Ms: lat.p99,
    ...(serverP50 !== undefined ? { serverP50Ms: serverP50 * 1000, serverP99Ms: (serverP99 ?? 0) * 1000 } : {}),
    ratioToLimit: perCpu / limit[scenario.limit].perCpuSecond,
    against: scenario.limit,
    serverCores: cpu / r.seconds,
    ...(dbCpu !== undefined ? { databaseCores: dbCpu / r.seconds } : {}),
    ops: messages * per,
    seconds: r.seconds,
    errors: r.errors,
    ...(r.firstError ? { firstError: r.firstError } : {}),
  };
  results.push(result);
  say(row(result));
  return result;
}

// ---- the table ----------------------------------------------------------------------------------------

const num = (n: number): string => Math.round(n).toLocaleString('en-US');
const msf = (n: number | undefined): string => (n === undefined ? '–' : n < 1 ? n.toFixed(3) : n < 10 ? n.toFixed(2) : n.toFixed(1));
const COLS = [34, 9, 9, 4, 2, 10, 12, 7, 7, 7, 7, 7, 5, 5];
const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(COLS[i]!) : c.padStart(COLS[i]!))).join(' ');
const HEADER = line(['measured', 'backend', 'transport', 'conc', 'w', 'per wall s', 'per srv CPU s', 'ratio', 'p50 ms', 'p99 ms', 'srv p50', 'srv p99', 'cores', 'db']);
function row(r: Result): string {
  return (
    line([
      `${r.name}${r.unit === 'keys' ? ' (keys)' : ''}`,
      r.backend,
      r.transport,
      String(r.concurrency),
      String(r.workers),
      num(r.opsPerSec),
      num(r.opsPerServerCpuSec),
      `${(r.ratioToLimit * 100).toFixed(1)}%`,
      msf(r.p50Ms),
      msf(r.p99Ms),
      msf(r.serverP50Ms),
      msf(r.serverP99Ms),
      r.serverCores.toFixed(2),
      r.databaseCores === undefined ? '' : r.databaseCores.toFixed(2),
    ]) + (r.errors ? `   ${r.errors} errors: ${r.firstError}` : '')
  );
}

// ---- scenarios ------------------------------------------------------------------------------------------

/** A pool of messages sent round and round (reads: answering one again is the same work). */
function cycle(pool: Outgoing[]): (seq: number) => Outgoing {
  return (seq) => pool[seq % pool.length]!;
}

/** A user with keys and resources to read and bind, on one served KMS. */
interface Workload {
  user: User;
  /** Unbound keys of the user (readable by it: same clientId). */
  keys: string[];
  /** Resources with 20 bound keys each. */
  resources: string[];
  handshakes: Outgoing[];
}

async function createKeys(user: User, total: number, parallel = 2): Promise<string[]> {
  const bodies = Array.from({ length: Math.ceil(total / 100) }, (_, i) => ({ method: 'create', uri: '/keys', count: Math.min(100, total - i * 100) }));
  const answers = await user.askAll(bodies, 201, parallel);
  return answers.flatMap((a) => ((a.keys as { uri: string }[] | undefined) ?? []).map((k) => k.uri));
}

async function handshakePool(user: User, size: number): Promise<Outgoing[]> {
  const { authority, kid, staticPublic } = user.server;
  return Promise.all(Array.from({ length: size }, async () => {
    const h = await sealHandshake(authority, kid, staticPublic, user.client);
    return { message: h.message, requestId: h.requestId };
  }));
}

async function workload(server: ServingKms, folder: KmsFolder, keyCount = 1_000): Promise<Workload> {
  const user = await User.connect(server.url, folder.token(`alice@${folder.domain}`));
  const keys = await createKeys(user, keyCount);
  const resources: string[] = [];
  for (let r = 0; r < 20; r++) {
    const bound = await createKeys(user, 20);
    const res = await user.ask({ method: 'create', uri: '/resources', keyUris: bound }, 201);
    resources.push((res.resource as { uri: string }).uri);
  }
  return { user, keys, resources, handshakes: await handshakePool(user, 600) };
}

async function sealAll(user: User, bodies: Record<string, unknown>[]): Promise<Outgoing[]> {
  return Promise.all(bodies.map((b) => user.seal(b)));
}

/** Every scenario of item 2, for one workload. Writes are sealed as they go (each requestId once). */
async function scenarios(w: Workload): Promise<Scenario[]> {
  const { user } = w;
  const retrieves = await sealAll(user, Array.from({ length: 2048 }, (_, i) => ({ method: 'retrieve', uri: w.keys[(i * 7919) % w.keys.length]! })));
  const resourceKeys = await sealAll(user, Array.from({ length: 1024 }, (_, i) => ({ method: 'retrieve', uri: `${w.resources[i % w.resources.length]!}/keys`, count: 10 })));
  return [
    { name: 'handshake', limit: 'handshake', unit: 'handshakes', traffic: () => ({ next: cycle(w.handshakes), status: 201 }) },
    { name: 'retrieve key', limit: 'common', unit: 'messages', traffic: () => ({ next: cycle(retrieves), status: 200, key: user.channel.key }) },
    { name: 'create keys count 1', limit: 'common', unit: 'keys', perMessage: 1, traffic: () => writes(user, () => ({ method: 'create', uri: '/keys', count: 1 }), 201) },
    { name: 'create keys count 100', limit: 'common', unit: 'keys', perMessage: 100, traffic: () => writes(user, () => ({ method: 'create', uri: '/keys', count: 100 }), 201) },
    { name: 'bind', limit: 'common', unit: 'messages', traffic: () => bindTraffic(w) },
    { name: 'retrieve resource keys count 10', limit: 'common', unit: 'messages', traffic: () => ({ next: cycle(resourceKeys), status: 200, key: user.channel.key }) },
  ];
}

/** Write traffic: each message sealed when it is sent, with its own requestId. */
function writes(user: User, body: (seq: number) => Record<string, unknown> | undefined, status: number): Traffic {
  return {
    next: (seq) => {
      const b = body(seq);
      return b ? user.seal(b) : undefined;
    },
    status,
    key: user.channel.key,
  };
}

/** Binds of keys created for it beforehand, spread over the workload's resources. */
let bindSupply: string[] = [];
function bindTraffic(w: Workload): Traffic {
  return writes(w.user, (seq) => {
    const key = bindSupply.pop();
    return key ? { method: 'update', uri: key, resourceUri: w.resources[seq % w.resources.length]! } : undefined;
  }, 200);
}

// ---- the sections ---------------------------------------------------------------------------------------

async function freePort(): Promise<number> {
  return new Promise((resolveP, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolveP(port));
    });
  });
}

/** Item 2 (and the limit, measured on the first backend's real payloads before any load). */
async function backendSection(backend: Backend, folder: KmsFolder, first: boolean): Promise<void> {
  const db = await backend.fresh();
  const dbArgs = db.args.length ? db.args : ['--db', `sqlite:${join(folder.dir, `main-${randomUUID()}.db`)}`];
  const server = await serve(folder, { args: dbArgs });
  try {
    const w = await workload(server, folder);
    if (first) await measureTheLimit(w, folder);
    if (first) await sdkSection(server, folder, w);
    for (const scenario of await scenarios(w)) {
      for (const transport of ['http', 'websocket'] as Transport[]) {
        for (const c of P.points[transport]) {
          if (scenario.name === 'bind') bindSupply = await createKeys(w.user, P.bindSupply);
          await measure(server, backend.name, scenario, transport, c);
        }
      }
    }
  } finally {
    await server.stop();
    await db.drop();
  }
  // Item 3: the same handshakes and retrieves on --workers 2.
  for (const workers of [2]) {
    const db2 = await backend.fresh();
    const server2 = await serve(folder, { workers, args: db2.args.length ? db2.args : ['--db', `sqlite:${join(folder.dir, `workers-${randomUUID()}.db`)}`] });
    try {
      const w = await workload(server2, folder);
      const list = (await scenarios(w)).filter((s) => s.name === 'handshake' || s.name === 'retrieve key');
      for (const s of list) {
        const two = await measure(server2, backend.name, s, 'http', 64);
        const one = results.find((r) => r.name === s.name && r.backend === backend.name && r.transport === 'http' && r.concurrency === 64 && r.workers === 1);
        if (!one || one.opsPerSec === 0) continue;
        const scaling = two.opsPerSec / one.opsPerSec;
        const crypto = (extra.limitOnCores as { scaling: number } | undefined)?.scaling;
        say(`  ${s.name}, ${backend.name}: --workers ${workers} gives ${scaling.toFixed(2)}× --workers 1 per wall-second${crypto ? ` (raw node:crypto on ${workers} threads: ${crypto.toFixed(2)}×)` : ''}`);
        ((extra.workersScaling ??= []) as unknown[]).push({ name: s.name, backend: backend.name, workers, scaling, cryptoScaling: crypto });
      }
    } finally {
      await server2.stop();
      await db2.drop();
    }
  }
}

/** The SDK (KmsClient.retrieveKey) against the same server: its figures and its client CPU per request. */
async function sdkSection(server: ServingKms, folder: KmsFolder, w: Workload): Promise<void> {
  const options = {
    url: server.url,
    token: folder.token(`alice@${folder.domain}`),
    trustAnchors: [readFileSync(join(folder.dir, 'ca.pem'), 'utf8')],
    authority: folder.authority,
    clientId: 'bench-client',
  };
  for (const transport of ['http', 'websocket'] as Transport[]) {
    for (const c of P.sdkPoints) {
      const client = new KmsClient(transport === 'http' ? options : { ...options, transport: 'websocket', WebSocket: WebSocket as unknown as WebSocketConstructor });
      try {
        const op = (seq: number) => client.retrieveKey(w.keys[seq % w.keys.length]!);
        await closedLoop(c, P.warmMs, op);
        await settle(30);
        const latencies: number[] = [];
        const before = await server.latencyHistogram();
        const cpu0 = server.cpuSeconds();
        const mine0 = process.cpuUsage();
        const r = await closedLoop(c, P.ms, op, latencies);
        const mine = process.cpuUsage(mine0);
        const cpu = server.cpuSeconds() - cpu0;
        const after = await server.latencyHistogram();
        const lat = percentiles(latencies);
        const serverP50 = histogramQuantile(before, after, 50);
        const serverP99 = histogramQuantile(before, after, 99);
        const result: Result = {
          name: 'SDK retrieveKey',
          backend: 'sqlite',
          transport,
          concurrency: c,
          workers: server.workers,
          unit: 'messages',
          opsPerSec: r.opsPerSec,
          opsPerServerCpuSec: cpu > 0 ? r.ops / cpu : 0,
          p50Ms: lat.p50,
          p99Ms: lat.p99,
          ...(serverP50 !== undefined ? { serverP50Ms: serverP50 * 1000, serverP99Ms: (serverP99 ?? 0) * 1000 } : {}),
          ratioToLimit: cpu > 0 ? r.ops / cpu / limit.common.perCpuSecond : 0,
          against: 'common',
          serverCores: cpu / r.seconds,
          clientCpuMsPerOp: (mine.user + mine.system) / 1000 / Math.max(1, r.ops),
          ops: r.ops,
          seconds: r.seconds,
          errors: r.errors,
          ...(r.firstError ? { firstError: r.firstError } : {}),
        };
        results.push(result);
        say(`${row(result)}   client ${(result.clientCpuMsPerOp! * 1000).toFixed(0)} µs CPU per request`);
      } finally {
        await client.close();
      }
    }
  }
}

async function measureTheLimit(w: Workload, folder: KmsFolder): Promise<void> {
  const { user } = w;
  const retrieveBody = { requestId: randomUUID(), client: user.client, method: 'retrieve', uri: w.keys[0]! };
  const retrieveAnswer = await user.ask({ method: 'retrieve', uri: w.keys[0]! }, 200);
  const h = await sealHandshake(user.server.authority, user.server.kid, user.server.staticPublic, user.client);
  const [hAnswer] = await postBatch(user.url, [h.message]);
  const handshakeAnswer = await user.open(hAnswer!);
  const staticKey = createPrivateKey(readFileSync(join(folder.dir, 'static-key.pem'), 'utf8'));
  const request = new TextEncoder().encode(JSON.stringify(retrieveBody));
  const handshakeInputs = { staticKey, kid: user.server.kid, request: h.plaintext, answer: handshakeAnswer as unknown as Record<string, unknown> };
  limitOps = { common: commonOp({ request, answer: retrieveAnswer as unknown as Record<string, unknown>, kid: user.channel.uri }), handshake: handshakeOp(handshakeInputs) };
  limit = { common: measureLimit(limitOps.common, P.limitRuns, P.limitMs), handshake: measureLimit(limitOps.handshake, P.limitRuns, P.limitMs) };
  // What a second core gives raw node:crypto here: the ceiling of --workers 2 against --workers 1.
  let onOne = 0;
  let onTwo = 0;
  try {
    onOne = await handshakesOnThreads(handshakeInputs, 1, P.limitMs * 2);
    onTwo = await handshakesOnThreads(handshakeInputs, 2, P.limitMs * 2);
    extra.limitOnCores = { handshakesPerWallSecond: { oneThread: onOne, twoThreads: onTwo }, scaling: onTwo / onOne };
  } catch (err) {
    notes.push(`the limit on two threads left out: ${err instanceof Error ? err.message : String(err)}`);
  }
  extra.payloadBytes = {
    retrieveRequest: request.byteLength,
    retrieveAnswer: Buffer.byteLength(JSON.stringify(retrieveAnswer)),
    handshakeRequest: h.plaintext.byteLength,
    handshakeAnswer: Buffer.byteLength(JSON.stringify(handshakeAnswer)),
  };
  say(`crypto limit, raw node:crypto with compact JOSE, per CPU-second of one core (median of ${P.limitRuns} × ${P.limitMs} ms):`);
  say(`  common message (JWE dir/A256GCM open + JSON + seal)                     ${num(limit.common.perCpuSecond).padStart(8)} /s   runs ${limit.common.runs.map(num).join(', ')}`);
  say(`  handshake (JWE RSA-OAEP open + P-256 keygen/ECDH/HKDF + JWS PS256 sign) ${num(limit.handshake.perCpuSecond).padStart(8)} /s   runs ${limit.handshake.runs.map(num).join(', ')}`);
  if (onOne > 0) say(`  handshakes on 1 and 2 threads at once, per wall-second: ${num(onOne)}, ${num(onTwo)} (a second core gives raw node:crypto ${(onTwo / onOne).toFixed(2)}×)`);
  say(`  payloads: retrieve ${String((extra.payloadBytes as Record<string, number>).retrieveRequest)} B → ${String((extra.payloadBytes as Record<string, number>).retrieveAnswer)} B, handshake ${h.plaintext.byteLength} B → ${String((extra.payloadBytes as Record<string, number>).handshakeAnswer)} B`);
  say();
  say('ratio = messages per server CPU-second ÷ the limit (handshakes ÷ the handshake limit, the rest ÷ the common-message limit);');
  say('p50/p99: client round trip of a message (HTTP: its batch); srv p50/p99: the KMS\'s own time (one serving process); cores: server CPU ÷ wall; db: PostgreSQL CPU ÷ wall');
  say(HEADER);
}

/** Item 4: Bob at B retrieving A's key, served from B's warm copy. */
async function federationSection(): Promise<void> {
  const [portA, portB] = [await freePort(), await freePort()];
  const a = kmsFolder('kms.a.example', 'a.example', portA);
  const b = kmsFolder('kms.b.example', 'b.example', portB);
  let sa: ServingKms | undefined;
  let sb: ServingKms | undefined;
  try {
    kms(['peer', 'add', '--config', a.config, '--authority', 'kms.b.example', '--domain', 'b.example', '--endpoint', `http://127.0.0.1:${portB}`, '--ca', join(b.dir, 'ca.pem')]);
    kms(['peer', 'add', '--config', b.config, '--authority', 'kms.a.example', '--domain', 'a.example', '--endpoint', `http://127.0.0.1:${portA}`, '--ca', join(a.dir, 'ca.pem')]);
    sa = await serve(a, { port: portA });
    // A copy stays warm for the whole run: this measures B serving from it, not re-fetching.
    sb = await serve(b, { port: portB, args: ['--federation-max-staleness', '3600'] });
    const alice = await User.connect(sa.url, a.token('alice@a.example'));
    const keys = await createKeys(alice, 50);
    await alice.ask({ method: 'create', uri: '/resources', keyUris: keys, authIds: ['bob@b.example'] }, 201);
    const bob = await User.connect(sb.url, b.token('bob@b.example'));
    for (const k of keys) await bob.ask({ method: 'retrieve', uri: k }, 200); // the first fetch makes the copy
    const pool = await sealAll(bob, Array.from({ length: 2048 }, (_, i) => ({ method: 'retrieve', uri: keys[i % keys.length]! })));
    const scenario: Scenario = { name: 'federated retrieve key (warm)', limit: 'common', unit: 'messages', traffic: () => ({ next: cycle(pool), status: 200, key: bob.channel.key }) };
    for (const transport of ['http', 'websocket'] as Transport[]) for (const c of P.points[transport]) await measure(sb, 'sqlite', scenario, transport, c);
  } finally {
    await sb?.stop();
    await sa?.stop();
    a.remove();
    b.remove();
  }
}

/** Item 5: retrieve key with more and more keys stored, then RSS with many channels. */
async function growthSection(folder: KmsFolder): Promise<void> {
  const server = await serve(folder, { args: ['--db', `sqlite:${join(folder.dir, `growth-${randomUUID()}.db`)}`] });
  const growth: { keys: number; opsPerServerCpuSec: number; ratioToFirst: number }[] = [];
  const uncached: typeof growth = [];
  try {
    const user = await User.connect(server.url, folder.token(`alice@${folder.domain}`));
    const keys: string[] = [];
    for (const count of P.growth) {
      const t0 = performance.now();
      for (const uri of await createKeys(user, count - keys.length, 2)) keys.push(uri); // not push(...): 10⁶ arguments
      say(`  (${num(count)} keys stored; filled in ${((performance.now() - t0) / 1000).toFixed(1)} s${user.retried ? `, ${num(user.retried)} requests answered 503 and sent again` : ''})`);
      // Random keys across all stored, 4096 of them: the node's row cache holds them (the hot set).
      const pool = await sealAll(user, Array.from({ length: 4096 }, () => ({ method: 'retrieve', uri: keys[Math.floor(Math.random() * keys.length)]! })));
      const r = await measure(server, 'sqlite', { name: `retrieve key, ${num(count)} keys stored`, limit: 'common', unit: 'messages', traffic: () => ({ next: cycle(pool), status: 200, key: user.channel.key }) }, 'http', 64);
      growth.push({ keys: count, opsPerServerCpuSec: r.opsPerServerCpuSec, ratioToFirst: r.opsPerServerCpuSec / (growth[0]?.opsPerServerCpuSec ?? r.opsPerServerCpuSec) });
      // And more distinct keys than the row cache holds, read in a cycle: each read goes to storage.
      const cold = MAX_CACHED_KEYS + 10_000;
      if (count < cold) continue;
      const spread = await sealAll(user, Array.from({ length: cold }, (_, i) => ({ method: 'retrieve', uri: keys[Math.floor((i * keys.length) / cold)]! })));
      const c = await measure(server, 'sqlite', { name: `retrieve key, ${num(count)} keys stored, uncached`, limit: 'common', unit: 'messages', traffic: () => ({ next: cycle(spread), status: 200, key: user.channel.key }) }, 'http', 64);
      uncached.push({ keys: count, opsPerServerCpuSec: c.opsPerServerCpuSec, ratioToFirst: c.opsPerServerCpuSec / (growth[0]?.opsPerServerCpuSec ?? c.opsPerServerCpuSec) });
    }
    if (user.retried) notes.push(`growth: ${user.retried} fill requests answered 503 (storage deadline) and were sent again`);
  } finally {
    await server.stop();
  }
  extra.growth = growth;
  extra.growthUncached = uncached;

  const fresh = await serve(folder, { args: ['--db', `sqlite:${join(folder.dir, `channels-${randomUUID()}.db`)}`] });
  try {
    const user = await User.connect(fresh.url, folder.token(`alice@${folder.domain}`));
    await settle(200);
    const baseline = fresh.rssBytes()[0]!;
    const pool = await handshakePool(user, 500);
    const t0 = performance.now();
    let made = 0;
    const worker = async () => {
      while (made < P.channels) {
        const n = Math.min(100, P.channels - made);
        made += n;
        const answers = await postBatch(fresh.url, Array.from({ length: n }, (_, i) => pool[(made + i) % pool.length]!.message));
        const bad = (await Promise.all(answers.map((a) => user.open(a)))).filter((a) => a.status !== 201).length;
        if (bad) throw new Error(`${bad} handshakes refused while opening channels`);
      }
    };
    await Promise.all([worker(), worker()]);
    await settle(500);
    const rss = fresh.rssBytes()[0]!;
    extra.channels = { channels: P.channels, rssBytes: rss, rssBaselineBytes: baseline, seconds: (performance.now() - t0) / 1000 };
    say(`  RSS with ${num(P.channels)} open channels: ${(rss / 2 ** 20).toFixed(0)} MB (${(baseline / 2 ** 20).toFixed(0)} MB before; ${(((rss - baseline) / P.channels) | 0).toLocaleString('en-US')} B per channel)`);
  } finally {
    await fresh.stop();
  }
  say(`  retrieve key per server CPU-second by keys stored: ${growth.map((g) => `${num(g.keys)}: ${num(g.opsPerServerCpuSec)} (${(g.ratioToFirst * 100).toFixed(0)}%)`).join(', ')}`);
  if (uncached.length) say(`  the same, ${num(MAX_CACHED_KEYS + 10_000)} keys read in turn (more than the row cache's ${num(MAX_CACHED_KEYS)}: each read from storage): ${uncached.map((g) => `${num(g.keys)}: ${num(g.opsPerServerCpuSec)} (${(g.ratioToFirst * 100).toFixed(0)}% of ${num(P.growth[0]!)} cached)`).join(', ')}`);
}

/** Item 6: the PyKMIP server on the same create/get work, one request per round trip. */
async function peerSection(folder: KmsFolder): Promise<void> {
  const problem = await pykmipAvailable();
  if (problem) {
    notes.push(`--peer: PyKMIP left out: ${problem}`);
    say(`  PyKMIP left out: ${problem}`);
    return;
  }
  const server = await serve(folder, { args: ['--db', `sqlite:${join(folder.dir, `peer-${randomUUID()}.db`)}`] });
  // PyKMIP at WARNING: its shipped INFO logging costs it 10–30 % per request; the comparison gives it the better figure.
  const peer = await startPyKmip({ logLevel: 'WARNING' });
  const comparison: Record<string, unknown>[] = [];
  try {
    const w = await workload(server, folder, 1_000);
    const get = await sealAll(w.user, Array.from({ length: 2048 }, (_, i) => ({ method: 'retrieve', uri: w.keys[i % w.keys.length]! })));
    const ours: Record<string, Scenario> = {
      create: { name: 'create keys count 1 (vs PyKMIP)', limit: 'common', unit: 'keys', traffic: () => writes(w.user, () => ({ method: 'create', uri: '/keys', count: 1 }), 201) },
      get: { name: 'retrieve key (vs PyKMIP)', limit: 'common', unit: 'messages', traffic: () => ({ next: cycle(get), status: 200, key: w.user.channel.key }) },
    };
    for (const op of ['create', 'get'] as const) {
      for (const c of [1, 8]) {
        const mine = await measure(server, 'sqlite', ours[op]!, 'websocket', c, { perConnection: 1 });
        const theirs = await peer.measure({ op, concurrency: c, ms: P.ms * 2 });
        const r: Result = {
          name: `PyKMIP ${op === 'create' ? 'create AES-256 key' : 'get key'}`,
          backend: 'pykmip',
          transport: 'kmip',
          concurrency: c,
          workers: 1,
          unit: op === 'create' ? 'keys' : 'messages',
          opsPerSec: theirs.opsPerSec,
          opsPerServerCpuSec: theirs.opsPerServerCpuSec,
          p50Ms: theirs.p50Ms,
          p99Ms: theirs.p99Ms,
          ratioToLimit: theirs.opsPerServerCpuSec / limit.common.perCpuSecond,
          against: 'common',
          serverCores: theirs.serverCores,
          ops: theirs.ops,
          seconds: theirs.seconds,
          errors: theirs.errors,
        };
        results.push(r);
        say(row(r));
        comparison.push({ op, concurrency: c, kms: mine.opsPerSec, pykmip: theirs.opsPerSec, times: mine.opsPerSec / theirs.opsPerSec, timesPerServerCpuSec: mine.opsPerServerCpuSec / theirs.opsPerServerCpuSec });
      }
    }
  } finally {
    await peer.stop();
    await server.stop();
  }
  extra.peer = comparison;
  for (const c of comparison) say(`  vs PyKMIP, ${String(c.op)} at concurrency ${String(c.concurrency)}: ${(c.times as number).toFixed(1)}× its ops per wall second, ${(c.timesPerServerCpuSec as number).toFixed(1)}× per server CPU-second`);
}

// ---- the run --------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  say(`openkms bench${flags.quick ? ' --quick' : ''}: Node ${process.version}, ${cpus().length} × ${cpus()[0]?.model.trim() ?? 'cpu'}, load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const { list, leftOut } = await backends();
  if (leftOut) {
    notes.push(leftOut);
    say(leftOut);
  }
  const folder = kmsFolder('kms.bench.example', 'bench.example');
  try {
    let first = true;
    for (const backend of list.filter((b) => P.backends.includes(b.name))) {
      await backendSection(backend, folder, first);
      first = false;
    }
    await federationSection();
    await growthSection(folder);
    if (flags.peer) await peerSection(folder);
    relimit();
  } finally {
    folder.remove();
  }

  const seconds = (performance.now() - started) / 1000;
  const errors = results.reduce((n, r) => n + r.errors, 0);
  const report = {
    schema: 'openkms-bench/2',
    date: new Date().toISOString(),
    quick: flags.quick,
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model.trim() ?? '',
    loadavg: loadavg(),
    seconds,
    limit: { handshakesPerCore: limit.handshake.perCpuSecond, commonMessagesPerCore: limit.common.perCpuSecond, runs: { handshake: limit.handshake.runs, common: limit.common.runs } },
    results,
    ...extra,
    errors,
    notes,
  };
  const out = resolve(flags.out ?? fileURLToPath(new URL('../bench/results/latest.json', import.meta.url)));
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  const base = out.replace(/\.json$/, '');
  writeFileSync(`${base}.txt`, `${[HEADER, ...results.map(row)].join('\n')}\n`);
  writeFileSync(`${base}.svg`, chart(results, { title: `openkms: messages per server CPU-second ÷ crypto limit (${new Date().toISOString().slice(0, 10)}, ${cpus()[0]?.model.trim() ?? ''})` }));
  say();
  say(`${results.length} measurements in ${seconds.toFixed(0)} s; ${out} (+ .txt, .svg)`);
  if (errors) say(`${errors} request(s) failed`);
  if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
  return errors ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
    setTimeout(() => process.exit(code), 500).unref();
  },
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
