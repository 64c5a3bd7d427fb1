/**
 * The PyKMIP server (Debian's python3-pykmip, run by /usr/bin/python3) as a peer for the
 * benchmark: the same work as the KMS — create one AES-256 key, get a key by id — one request per
 * round trip on persistent TLS connections, driven by `pykmip-load.py` (one process per
 * connection), with the server's CPU time read from /proc around the timed window.
 *
 *   const why = await pykmipAvailable();            // undefined when the peer can run
 *   const peer = await startPyKmip();               // once for all measurements
 *   const r = await peer.measure({ op: 'create', concurrency: 8, ms: 3000 });
 *   await peer.stop();
 *
 * The load client runs on the same machine and competes with the server for cores, as the KMS's
 * own client does in bench.ts; `clientCpuSec` says how much it took.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { access, constants, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Debian's interpreter and entry point, never a pip install (the brief of the comparison). */
const PYTHON = '/usr/bin/python3';
const SERVER = '/usr/bin/pykmip-server';
// The sources stay in bench/peers; this file runs from dist-bench/peers.
const here = (name: string): string => fileURLToPath(new URL(`../../bench/peers/${name}`, import.meta.url));
const SETUP = here('pykmip-setup.sh');
const LOAD = here('pykmip-load.py');

export type PyKmipOp = 'create' | 'get';

export interface PyKmipMeasureOptions {
  op: PyKmipOp;
  concurrency: number;
  /** Length of the timed window. */
  ms: number;
  /** Each connection's warm-up before the window (default 500 ms). */
  warmupMs?: number;
}

export interface PyKmipResult {
  op: PyKmipOp;
  concurrency: number;
  ops: number;
  seconds: number;
  opsPerSec: number;
  /** ops ÷ CPU seconds of the server's processes (main process with its threads, and children). */
  opsPerServerCpuSec: number;
  /** Server CPU seconds ÷ wall seconds of the window: 1 = one core busy throughout. */
  serverCores: number;
  serverCpuSec: number;
  /** CPU seconds the load workers spent in the window (they share the machine with the server). */
  clientCpuSec: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  firstError?: string;
}

export interface PyKmipPeer {
  readonly port: number;
  /** Scratch folder: certificates, server.conf, server.log, pykmip.db. */
  readonly dir: string;
  /** Server process id (its children — the multiprocessing manager, the policy monitor — count too). */
  readonly pid: number;
  measure(opts: PyKmipMeasureOptions): Promise<PyKmipResult>;
  /** Stops the server and, unless the folder was given to startPyKmip, removes it. */
  stop(): Promise<void>;
}

/** Undefined when the peer can run here, else why not. */
export async function pykmipAvailable(): Promise<string | undefined> {
  for (const file of [PYTHON, SERVER, SETUP, LOAD]) {
    try {
      await access(file, constants.R_OK);
    } catch {
      return `${file} is missing${file === SERVER ? ' (apt-get install python3-pykmip)' : ''}`;
    }
  }
  try {
    await run(PYTHON, ['-W', 'ignore', '-c', 'import kmip.pie.client, kmip.services.server.server'], { timeout: 20_000 });
  } catch (err) {
    return `PyKMIP does not import under ${PYTHON}: ${lastLine(err)}`;
  }
  try {
    await run('openssl', ['version'], { timeout: 10_000 });
  } catch {
    return 'openssl is not on PATH (the setup makes the TLS certificates with it)';
  }
  return undefined;
}

/** Makes the certificates and config in `dir` (default: a fresh temporary folder) and starts the server. */
export async function startPyKmip(opts: { dir?: string; port?: number; logLevel?: string } = {}): Promise<PyKmipPeer> {
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'openkms-pykmip-')));
  const ticks = await clockTicks();
  // Own process group, so that stop() reaches the server's child processes too.
  const child = spawn('/bin/sh', [SETUP, dir, String(opts.port ?? 0)], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PYKMIP_LOG_LEVEL: opts.logLevel ?? 'INFO' },
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise<string>((resolve) =>
    child.once('exit', (code, signal) => resolve(`PyKMIP server exited (${signal ?? code}): ${stderr.trim() || 'no output'}`)),
  );
  const stop = async (): Promise<void> => {
    await stopGroup(child, exited);
    if (!opts.dir) await rm(dir, { recursive: true, force: true });
  };
  try {
    const port = await Promise.race([readPort(child), exited.then((why) => Promise.reject(new Error(why)))]);
    await Promise.race([waitListening(port, 30_000), exited.then((why) => Promise.reject(new Error(why)))]);
    const pid = child.pid!;
    return {
      port,
      dir,
      pid,
      stop,
      measure: (m) => measure(m, { port, dir, pid, ticks, exited }),
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** One measurement on a server of its own (startPyKmip once is cheaper for several). */
export async function measurePyKmip(opts: PyKmipMeasureOptions): Promise<PyKmipResult> {
  const peer = await startPyKmip();
  try {
    return await peer.measure(opts);
  } finally {
    await peer.stop();
  }
}

interface Server {
  port: number;
  dir: string;
  pid: number;
  ticks: number;
  exited: Promise<string>;
}

async function measure(m: PyKmipMeasureOptions, s: Server): Promise<PyKmipResult> {
  const args = [
    LOAD,
    ...['--port', String(s.port), '--certs', join(s.dir, 'certs'), '--op', m.op],
    ...['--concurrency', String(m.concurrency), '--seconds', String(m.ms / 1000)],
    ...['--warmup', String((m.warmupMs ?? 500) / 1000)],
  ];
  const load = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  load.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const closed = new Promise<number | null>((resolve) => load.once('close', (code) => resolve(code)));
  // A hung client must not hang the benchmark: it has the window plus a minute for setup.
  const timer = setTimeout(() => load.kill('SIGKILL'), m.ms + 60_000);
  try {
    let before: { cpu: number; at: number } | undefined;
    let after: { cpu: number; at: number } | undefined;
    let line: Record<string, unknown> | undefined;
    for await (const text of createInterface({ input: load.stdout! })) {
      const msg = JSON.parse(text) as Record<string, unknown>;
      // Sampled as each line arrives: the window opens at "start" and closes when the result is
      // printed, after every worker's last response.
      const sample = { cpu: await treeTicks(s.pid), at: performance.now() };
      if (msg.event === 'start') before = sample;
      else if ('opsPerSec' in msg) (after = sample), (line = msg);
    }
    const code = await closed;
    if (!before || !after || !line) {
      const why = await Promise.race([s.exited, new Promise<string>((r) => setTimeout(() => r(''), 10))]);
      throw new Error(`pykmip-load exited ${code} without a result: ${why || stderr.trim() || 'no output'}`);
    }
    const serverCpuSec = (after.cpu - before.cpu) / s.ticks;
    const ops = Number(line.ops);
    const result: PyKmipResult = {
      op: m.op,
      concurrency: m.concurrency,
      ops,
      seconds: Number(line.seconds),
      opsPerSec: Number(line.opsPerSec),
      opsPerServerCpuSec: serverCpuSec > 0 ? ops / serverCpuSec : 0,
      serverCores: serverCpuSec / ((after.at - before.at) / 1000),
      serverCpuSec,
      clientCpuSec: Number(line.clientCpuSec),
      p50Ms: Number(line.p50Ms),
      p99Ms: Number(line.p99Ms),
      errors: Number(line.errors),
    };
    if (typeof line.firstError === 'string') result.firstError = line.firstError;
    return result;
  } finally {
    clearTimeout(timer);
    if (load.exitCode === null && load.signalCode === null) load.kill('SIGKILL'); // e.g. a line that was not JSON
  }
}

/** utime + stime (clock ticks) of `pid` and of every live descendant. */
async function treeTicks(root: number): Promise<number> {
  const stats: { pid: number; ppid: number; ticks: number }[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const text = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => undefined);
    if (!text) continue; // gone between readdir and read
    // Fields after the command name, which is in parentheses and may itself hold spaces.
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15. The leader's stat covers all its threads.
    stats.push({ pid: Number(name), ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
  }
  const inTree = new Set([root]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of stats) if (!inTree.has(p.pid) && inTree.has(p.ppid)) (inTree.add(p.pid), (grew = true));
  }
  return stats.reduce((sum, p) => (inTree.has(p.pid) ? sum + p.ticks : sum), 0);
}

async function clockTicks(): Promise<number> {
  try {
    const n = Number((await run('getconf', ['CLK_TCK'])).stdout.trim());
    return n > 0 ? n : 100;
  } catch {
    return 100;
  }
}

/** The setup script's first line, `port N`, before it becomes the server. */
async function readPort(child: ChildProcess): Promise<number> {
  for await (const text of createInterface({ input: child.stdout! })) {
    const m = /^port (\d+)$/.exec(text);
    if (m) {
      child.stdout!.resume(); // keep the pipe drained should the server ever write to stdout
      return Number(m[1]);
    }
  }
  throw new Error('pykmip-setup.sh printed no port');
}

/**
 * Polls until the server accepts TCP connections. Each probe costs the server one failed TLS
 * handshake in its log, which is harmless; it binds well before it listens, so the port alone
 * does not say it is ready.
 */
async function waitListening(port: number, ms: number): Promise<void> {
  const end = performance.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const sock = connect(port, '127.0.0.1');
      sock.once('connect', () => (sock.destroy(), resolve(true)));
      sock.once('error', () => resolve(false));
    });
    if (ok) return;
    if (performance.now() > end) throw new Error(`PyKMIP server did not listen on port ${port} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * SIGINT, because PyKMIP's SIGTERM handler only clears a flag its accept loop reads every 10 s;
 * SIGINT interrupts accept at once and the server shuts its manager and policy-monitor processes
 * down. Then SIGKILL to whatever of the group is left: after 10 s, or at once when the server had
 * already died (its children, orphaned, would otherwise stay, holding the output pipes open).
 */
async function stopGroup(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  const signal = (sig: NodeJS.Signals): void => {
    try {
      process.kill(-child.pid!, sig);
    } catch {
      // the group is empty
    }
  };
  if (child.exitCode === null && child.signalCode === null) {
    signal('SIGINT');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
  }
  signal('SIGKILL');
}

/** The last line of a failed command's stderr: for Python, the exception. */
function lastLine(err: unknown): string {
  const e = err as { stderr?: string; message?: string };
  const text = (e.stderr?.trim() || e.message || String(err)).split('\n');
  return text[text.length - 1] ?? '';
}
