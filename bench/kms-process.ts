/**
 * The KMS under measurement as the separate process it is in production: `kms init` on a fresh
 * folder, `kms serve` on a fresh database (SQLite in the folder, or a fresh PostgreSQL schema,
 * dropped afterwards), and what the benchmark reads of it from outside: the CPU time of the
 * serving processes (the primary and its `--workers`), their resident memory, and the server-side
 * request latency histogram of /metrics. The load comes from another process (the benchmark's), so
 * its CPU is never counted as the server's.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { NO_RATE_LIMITS, postgresProblem, TEST_POSTGRES_URL } from '@openkms/server/testing';

const KMS_BIN = fileURLToPath(new URL('../packages/server/bin/kms.js', import.meta.url));
/** Clock ticks per second of /proc/<pid>/stat's utime and stime. */
const TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

export type BackendName = 'sqlite' | 'postgres';

export interface Backend {
  name: BackendName;
  /** `kms serve` arguments for a fresh database, and how to drop it afterwards. */
  fresh(): Promise<{ args: string[]; drop(): Promise<void> }>;
}

/** Runs a `kms` command to completion; its stdout. */
export function kms(args: string[]): string {
  const r = spawnSync(process.execPath, [KMS_BIN, ...args], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`kms ${args.slice(0, 2).join(' ')}: ${(r.stderr || r.error?.message || '').trim()}`);
  return r.stdout;
}

/** SQLite always; PostgreSQL when its server answers (else the reason it is left out). */
export async function backends(): Promise<{ list: Backend[]; leftOut?: string }> {
  const list: Backend[] = [{ name: 'sqlite', fresh: async () => ({ args: [], drop: async () => {} }) }];
  const problem = await postgresProblem(TEST_POSTGRES_URL);
  if (problem !== undefined) return { list, leftOut: `PostgreSQL left out: ${problem}` };
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
    name: 'postgres',
    async fresh() {
      const schema = `kms_bench_${randomBytes(6).toString('hex')}`;
      return {
        args: ['--db', `${TEST_POSTGRES_URL}${TEST_POSTGRES_URL.includes('?') ? '&' : '?'}schema=${schema}`],
        drop: () => query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`),
      };
    },
  });
  return { list };
}

export interface KmsFolder {
  dir: string;
  config: string;
  authority: string;
  domain: string;
  /** A development bearer token for `user` (the dev issuer of the folder). */
  token(user: string): string;
  remove(): void;
}

/** `kms init` on a fresh folder, with the rate limits off (one principal as fast as it can go). */
export function kmsFolder(authority: string, domain: string, port?: number, extra: Record<string, unknown> = {}): KmsFolder {
  const dir = mkdtempSync(join(tmpdir(), 'kms-bench-'));
  kms(['init', '--dir', dir, '--authority', authority, '--domain', domain, ...(port ? ['--port', String(port)] : [])]);
  const config = join(dir, 'kms.json');
  writeFileSync(config, JSON.stringify({ ...JSON.parse(readFileSync(config, 'utf8')), limits: NO_RATE_LIMITS, ...extra }, null, 2));
  return {
    dir,
    config,
    authority,
    domain,
    token: (user) => kms(['token', '--config', config, '--user', user, '--ttl', '36000']).trim(),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** utime + stime of one process, in seconds (0 when it is gone). */
function cpuOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // After the command: state(0) ppid(1) … utime(11) stime(12).
    return (Number(fields[11]) + Number(fields[12])) / TICKS;
  } catch {
    return 0;
  }
}

/** The direct children of `pid` (cluster workers of the primary). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/**
 * CPU seconds of every PostgreSQL server process on this machine (comm `postgres`): on PostgreSQL the
 * storage work runs there, outside the KMS's processes, and is reported beside the server's own.
 */
export function postgresCpuSeconds(): number {
  let sum = 0;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/comm`, 'utf8').trim() === 'postgres') sum += cpuOf(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return sum;
}

function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export interface ServingKms {
  url: string;
  workers: number;
  /** CPU seconds used so far by the primary and its workers. */
  cpuSeconds(): number;
  /** Resident memory of each serving process (the primary alone, or each worker), in bytes. */
  rssBytes(): number[];
  /** The kms_request_duration_seconds histogram: cumulative counts per upper bound (s), summed over operations. */
  latencyHistogram(): Promise<Map<number, number>>;
  stop(): Promise<void>;
}

/** Node options of every `kms serve` started (the benchmark's --cpu-prof DIR sets them). */
let serveNodeArgs: string[] = [];
export function profileServers(dir: string | undefined): void {
  serveNodeArgs = dir ? ['--cpu-prof', `--cpu-prof-dir=${dir}`] : [];
}

/** `kms serve` on `folder` (port 0 unless given), resolved once it says where it listens. */
export async function serve(folder: KmsFolder, options: { workers?: number; args?: string[]; port?: number; nodeArgs?: string[] } = {}): Promise<ServingKms> {
  const workers = options.workers ?? 1;
  const child = spawn(
    process.execPath,
    [...(options.nodeArgs ?? serveNodeArgs), KMS_BIN, 'serve', '--config', folder.config, '--port', String(options.port ?? 0), '--log-level', 'warn', '--workers', String(workers), ...(options.args ?? [])],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      const m = /listening on (\S+)/.exec(stderr);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`kms serve exited with ${code}: ${stderr.trim()}`)));
  });
  const pid = child.pid!;
  // With --workers N the primary forks N workers that serve; wait until all are there.
  let serving = [pid];
  if (workers > 1) {
    for (let i = 0; i < 100 && serving.length < workers + 1; i++) {
      serving = [pid, ...childrenOf(pid)];
      if (serving.length < workers + 1) await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    url,
    workers,
    cpuSeconds: () => serving.reduce((sum, p) => sum + cpuOf(p), 0),
    rssBytes: () => (workers > 1 ? serving.slice(1) : serving).map(rssOf),
    async latencyHistogram() {
      const text = await (await fetch(`${url}/metrics`)).text();
      const buckets = new Map<number, number>();
      for (const m of text.matchAll(/^kms_request_duration_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\d+(?:\.\d+)?)/gm)) {
        const le = m[1] === '+Inf' ? Infinity : Number(m[1]);
        buckets.set(le, (buckets.get(le) ?? 0) + Number(m[2]));
      }
      return buckets;
    },
    stop: () => stopChild(child, stderr),
  };
}

function stopChild(child: ChildProcess, stderr: string): Promise<void> {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve, reject) => {
    child.removeAllListeners('exit');
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`kms serve exited with ${code} on SIGTERM: ${stderr.trim().slice(-500)}`))));
    child.kill('SIGTERM');
  });
}

/**
 * Percentile `p` (0–100) of the requests counted between two histogram readings, interpolated
 * linearly inside its bucket (Prometheus's histogram_quantile); undefined without requests.
 */
export function histogramQuantile(before: Map<number, number>, after: Map<number, number>, p: number): number | undefined {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const count = (le: number) => (after.get(le) ?? 0) - (before.get(le) ?? 0);
  const total = count(Infinity);
  if (!(total > 0)) return undefined;
  const rank = (p / 100) * total;
  let lower = 0;
  let below = 0;
  for (const le of bounds) {
    const c = count(le);
    if (c >= rank) {
      if (le === Infinity) return lower;
      return lower + ((le - lower) * (rank - below)) / Math.max(c - below, 1e-9);
    }
    lower = le;
    below = c;
  }
  return lower;
}
