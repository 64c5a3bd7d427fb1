/**
 * `kms serve --workers N`: N worker processes behind one listening socket (node:cluster; the
 * primary accepts and hands each new connection to the next worker in turn). The primary does no
 * KMS work. Each worker runs the ordinary serve path (startKms) and is a node of the database like
 * any other `kms serve` process: its own node id (host/pid/random), heartbeat, audit records and
 * bid to lead. So workers share exactly what nodes share, through the database, and nothing else.
 *
 * Start: the first worker starts alone (on a new database it migrates and makes the first CMK, as
 * a first node would), then the others together; "listening on URL" is printed once all of them
 * serve. A worker that cannot start fails the whole command with its one line (port in use,
 * database unreachable, …); the others are stopped. Afterwards a worker that dies is replaced,
 * unless more than DEATHS_PER_WORKER × N died within CRASH_WINDOW_MS: then everything stops and
 * the command exits 1.
 *
 * Orders go to the workers as messages, not signals: a terminal's Ctrl-C or hangup reaches every
 * process of the group, so a worker leaves SIGINT and SIGHUP to the primary, which passes each on
 * once. SIGTERM sent to a worker itself (a service manager that signals every process) stops it.
 */
import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { KmsError } from '@openkms/protocol';
import { ConfigError } from '../config.js';
import type { Logger } from '../logger.js';
import { UsageError } from './args.js';

export const MAX_WORKERS = 256;
/** A crash loop: more than this many deaths per worker within CRASH_WINDOW_MS. */
const DEATHS_PER_WORKER = 3;
const CRASH_WINDOW_MS = 60_000;

/** `--workers` / KMS_WORKERS: a count from 1 to MAX_WORKERS, or `auto` (one per core); absent: 1. */
export function workerCount(value: string | undefined): number {
  if (value === undefined) return 1;
  if (value === 'auto') return Math.min(availableParallelism(), MAX_WORKERS);
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(n >= 1 && n <= MAX_WORKERS)) throw new UsageError(`--workers must be auto or a whole number from 1 to ${MAX_WORKERS}, got ${value === '' ? 'nothing' : value}`);
  return n;
}

/** This process is a worker of `kms serve --workers`. */
export const isWorker = (): boolean => cluster.isWorker;

type ToWorker = { kms: 'reload' } | { kms: 'stop'; signal: string };
type FromWorker = { kms: 'listening'; url: string; port: number; node: string } | ({ kms: 'failed' } & Failure);

/** Why a worker could not start, classified as main() would print it. */
interface Failure {
  message: string;
  kind: 'usage' | 'known' | 'unexpected';
}

/** The error the primary fails with, printed by main() exactly as the worker's own would be. */
function failureError(f: Failure): Error {
  if (f.kind === 'usage') return new UsageError(f.message);
  if (f.kind === 'known') return new ConfigError(f.message);
  return new Error(f.message);
}

/** In a worker: the primary's orders, and what the worker tells it. */
export class WorkerSide {
  /** On each of the worker's log lines. */
  readonly fields = { role: 'worker', worker: cluster.worker!.id, pid: process.pid };
  /** Resolves with the reason once the worker is to stop. */
  readonly stopRequested: Promise<string>;
  private reloading: () => void = () => {};

  constructor() {
    let stop!: (why: string) => void;
    this.stopRequested = new Promise((resolve) => (stop = resolve));
    const ignore = () => {};
    process.on('SIGINT', ignore);
    process.on('SIGHUP', ignore);
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('message', (m: ToWorker) => {
      if (m?.kms === 'reload') this.reloading();
      else if (m?.kms === 'stop') stop(m.signal);
    });
  }

  onReload(reload: () => void): void {
    this.reloading = reload;
  }

  listening(url: string, port: number, node: string): void {
    send({ kms: 'listening', url, port, node });
  }

  /** Tells the primary why this worker cannot start, and ends it (the primary prints the line). */
  failed(err: unknown): void {
    const message = (err as Error)?.message ?? String(err);
    const kind = err instanceof UsageError ? 'usage' : err instanceof ConfigError || err instanceof KmsError ? 'known' : 'unexpected';
    const code = kind === 'usage' ? 2 : 1;
    process.exitCode = code;
    process.send!({ kms: 'failed', message, kind } satisfies FromWorker, undefined, {}, () => process.exit(code));
  }

  /** After the KMS closed: leaves the cluster, so the process ends. */
  leave(): void {
    cluster.worker!.disconnect();
  }
}

function send(message: FromWorker): void {
  process.send!(message, undefined, {}, () => {});
}

export interface SuperviseOptions {
  count: number;
  /** The primary's own log (its lines say `role: primary`). */
  logger: Logger;
  /** Prints where the KMS listens, once, when every worker serves. */
  announce(url: string): void;
  /** SIGHUP, besides telling every worker (the primary's own log level). */
  onReload(): void;
}

/** Runs the workers until SIGTERM/SIGINT (then resolves) or until they cannot run (then throws). */
export function superviseWorkers(options: SuperviseOptions): Promise<void> {
  return new Supervisor(options).run();
}

interface Exit {
  code: number | null;
  signal: string | null;
}

interface Member {
  worker: Worker;
  pid: number | undefined;
  /** What it was asked to listen on, beyond the command's own flags (see Supervisor.listenArgs). */
  args: string[];
  listening: boolean;
  failure?: Failure;
  ready: Promise<{ url: string; port: number; node: string }>;
  /** Once it exited and its channel closed (so every message it sent has been read). */
  gone: Promise<Exit>;
}

class Supervisor {
  private readonly members = new Map<number, Member>();
  private deaths: number[] = [];
  private serving = false;
  private stopping: Promise<void> | undefined;
  private fatal: Error | undefined;
  private url = '';
  private port: number | undefined;
  private readonly args = process.argv.slice(2);
  private finished!: () => void;
  /** Resolves once stop() has seen every worker exit. */
  private readonly stopped = new Promise<void>((resolve) => (this.finished = resolve));

  constructor(private readonly options: SuperviseOptions) {}

  async run(): Promise<void> {
    const hangup = () => {
      this.options.onReload();
      for (const m of this.members.values()) tell(m, { kms: 'reload' });
    };
    const term = () => void this.stop('SIGTERM');
    const int = () => void this.stop('SIGINT');
    process.on('SIGHUP', hangup);
    process.on('SIGTERM', term);
    process.on('SIGINT', int);
    try {
      await this.start();
      await this.stopped;
    } finally {
      process.off('SIGHUP', hangup);
      process.off('SIGTERM', term);
      process.off('SIGINT', int);
    }
    if (this.fatal) throw this.fatal;
  }

  private async start(): Promise<void> {
    const { logger, count } = this.options;
    try {
      logger.info({ workers: count }, 'starting the first worker');
      const first = await this.fork().ready;
      [this.url, this.port] = [first.url, first.port];
      if (this.stopping) return;
      await Promise.all(Array.from({ length: count - 1 }, () => this.fork().ready.then((l) => this.samePort(l.port))));
    } catch (err) {
      // A worker that cannot start fails the command with its line; the others stop.
      if (!this.stopping) {
        this.fatal ??= err as Error;
        void this.stop('a worker could not start');
      }
      return;
    }
    if (this.stopping) return;
    this.serving = true;
    logger.info({ workers: count, url: this.url, pids: [...this.members.values()].map((m) => m.pid) }, 'workers serving');
    this.options.announce(this.url);
  }

  /**
   * Cluster shares one listening socket among workers that ask for the same address and port. A
   * new worker asks as the listening ones did (so `--port 0` gives it their port, not a new one);
   * when none listens the socket is gone, and it asks for the port the KMS had.
   */
  private listenArgs(): string[] {
    for (const m of this.members.values()) if (m.listening) return m.args;
    return this.port === undefined ? [] : ['--port', String(this.port)];
  }

  private fork(): Member {
    const args = this.listenArgs();
    // A flag given twice takes its last value: the worker's --port is this one.
    cluster.setupPrimary({ args: [...this.args, ...args] });
    const worker = cluster.fork();
    let listened!: (l: { url: string; port: number; node: string }) => void;
    let notListened!: (err: Error) => void;
    const ready = new Promise<{ url: string; port: number; node: string }>((resolve, reject) => ((listened = resolve), (notListened = reject)));
    ready.catch(() => {}); // whoever waits for it sees the failure; a replacement's is logged on exit
    const exited = new Promise<Exit>((resolve) => worker.once('exit', (code: number | null, signal: string | null) => resolve({ code, signal })));
    const disconnected = new Promise<void>((resolve) => worker.once('disconnect', () => resolve()));
    const gone = Promise.all([exited, disconnected]).then(([exit]) => exit);
    const member: Member = { worker, pid: worker.process.pid, args, listening: false, ready, gone };
    worker.on('error', () => {}); // a message to a worker that just died: its exit is what counts
    worker.on('message', (m: FromWorker) => {
      if (m?.kms === 'listening') {
        member.listening = true;
        listened({ url: m.url, port: m.port, node: m.node });
        // Asked to stop before it could hear it: it hears it now.
        if (this.stopping) tell(member, { kms: 'stop', signal: 'stopping' });
      } else if (m?.kms === 'failed') {
        member.failure = { message: String(m.message), kind: m.kind };
      }
    });
    this.members.set(worker.id, member);
    void gone.then((exit) => {
      this.members.delete(worker.id);
      const how = exit.signal ?? `code ${exit.code}`;
      notListened(member.failure ? failureError(member.failure) : new ConfigError(`worker ${worker.id} exited while starting (${how})`));
      this.died(member, exit, how);
    });
    return member;
  }

  private samePort(port: number): void {
    if (port !== this.port) throw new ConfigError(`a worker listens on port ${port}, not on the KMS's port ${this.port}`);
  }

  private died(member: Member, exit: Exit, how: string): void {
    const { logger, count } = this.options;
    if (this.stopping) return;
    if (!this.serving) {
      // While the others start, a worker that served and died is a failed start (the rest is start()'s).
      if (member.listening) {
        this.fatal ??= new ConfigError(`worker ${member.worker.id} exited while the others started (${how})`);
        void this.stop('a worker could not start');
      }
      return;
    }
    const now = Date.now();
    this.deaths = [...this.deaths.filter((t) => now - t < CRASH_WINDOW_MS), now];
    logger.error({ worker: member.worker.id, workerPid: member.pid, code: exit.code, signal: exit.signal, problem: member.failure?.message }, 'worker exited unexpectedly');
    if (this.deaths.length > DEATHS_PER_WORKER * count) {
      this.fatal = new ConfigError(`${this.deaths.length} workers died within ${CRASH_WINDOW_MS / 1000} s (the last: ${member.failure?.message ?? how}); stopping the KMS`);
      void this.stop('crash loop');
      return;
    }
    const next = this.fork();
    logger.warn({ worker: next.worker.id, workerPid: next.pid, replaces: member.worker.id }, 'starting a worker in its place');
    next.ready.then(
      (l) => {
        try {
          this.samePort(l.port);
          logger.info({ worker: next.worker.id, workerPid: next.pid, node: l.node }, 'worker serving');
        } catch (err) {
          this.fatal ??= err as Error;
          void this.stop('port changed');
        }
      },
      () => {},
    );
  }

  private stop(why: string): Promise<void> {
    const { logger } = this.options;
    this.stopping ??= (async () => {
      logger.info({ reason: why, workers: this.members.size }, 'shutting down: stopping the workers');
      const members = [...this.members.values()];
      for (const m of members) tell(m, { kms: 'stop', signal: why });
      const exits = await Promise.all(members.map(async (m) => ({ m, exit: await m.gone })));
      const unclean = exits.filter(({ exit }) => exit.code !== 0);
      // Workers stopped because one could not start are not news; otherwise each unclean stop is.
      if (!this.fatal) {
        for (const { m, exit } of unclean) logger.error({ worker: m.worker.id, workerPid: m.pid, code: exit.code, signal: exit.signal }, 'worker did not stop cleanly');
        if (unclean.length > 0) process.exitCode = 1;
      }
      logger.info({}, 'stopped');
      this.finished();
    })();
    return this.stopping;
  }
}

function tell(member: Member, message: ToWorker): void {
  if (member.worker.isConnected()) member.worker.send(message, () => {});
}
