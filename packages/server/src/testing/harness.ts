/**
 * The testing entry point, exported as `@openkms/server/testing` for integration tests of
 * applications (and used by this project's tests, examples and benchmark): a real KMS (real
 * SQLite file, real keys and certificates, real sockets) on a loopback port, with its development
 * token issuer standing in for an identity provider. It is what `kms init` + `kms serve` do,
 * in-process. The KMS folder (keys, CA, dev issuer) is made once per process and authority,
 * because RSA key generation is slow; every KMS started gets its own fresh database.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import pg from 'pg';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { FILES, initKmsDir } from '../cli/init.js';
import { loadConfig, parseConfig, type KmsConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { devIssuerOf, startKms, type RunningKms, type StartOptions } from '../server.js';

const folders = new Map<string, Promise<string>>();
const scratch: string[] = [];

function removeAtExit(dir: string): void {
  if (scratch.length === 0) process.once('exit', () => scratch.forEach((d) => rmSync(d, { recursive: true, force: true })));
  scratch.push(dir);
}

/** A KMS folder for `authority`/`domains`, made once per process (removed when it exits). */
export function kmsFolder(authority = 'kms.a.example', domains = ['a.example']): Promise<string> {
  const key = `${authority}|${domains.join(',')}`;
  let folder = folders.get(key);
  if (!folder) {
    const dir = mkdtempSync(join(tmpdir(), 'kms-test-'));
    folder = initKmsDir({ dir, authority, domains }).then(() => dir);
    folders.set(key, folder);
    removeAtExit(dir);
  }
  return folder;
}

export interface DevKms extends RunningKms {
  /** e.g. kms.a.example */
  authority: string;
  /** The KMS folder's ca.pem: what every user's client trusts. */
  trustAnchors: string[];
  /** The configuration it runs with (the folder's kms.json, with `config` merged in). */
  config: KmsConfig;
  /** The KMS folder (shared by every KMS of this authority in the process). */
  dir: string;
  dbPath: string;
  /** Every log line the server wrote (empty when a `logger` of one's own was given). */
  logs: string[];
  /** A development token for `user` (e.g. alice@a.example), issued at the KMS's clock. */
  token(user: string, opts?: { roles?: string[]; ttlSeconds?: number }): Promise<string>;
}

export interface DevKmsOptions {
  /** Default kms.a.example. */
  authority?: string;
  /** The user domains it serves; default a.example. */
  domains?: string[];
  /** The KMS's clock (and the tokens'); default Date.now. */
  now?: () => number;
  /** Deep-merged into the folder's kms.json. */
  config?: Record<string, unknown>;
  /** Reuse a database file (restart tests); default a fresh one, removed when the process exits. */
  dbPath?: string;
  /** A storage URL instead of the SQLite file (e.g. postgres://…?schema=NAME: nodes on one database). */
  db?: string;
  /** A fixed port (default: any free one); the KMS listens on 127.0.0.1. */
  port?: number;
  /** The lowest level kept in `logs` (default debug: tests check that no level leaks a secret). */
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** Where the kept log lines are also written (e.g. process.stdout); default nowhere. */
  logTo?: NodeJS.WritableStream;
  /** A logger of one's own instead of the kept lines (the benchmark's costs nothing below warn). */
  logger?: StartOptions['logger'];
}

function merge(base: Record<string, unknown>, patch: Record<string, unknown>): Record<string, unknown> {
  const out = { ...base };
  for (const [k, v] of Object.entries(patch)) {
    const b = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b) ? merge(b as Record<string, unknown>, v as Record<string, unknown>) : v;
  }
  return out;
}

/**
 * Starts a development KMS. The sweeper is off: whoever needs expired channels and keys gone calls
 * `kms.sweep()` at the moment it chooses. close() stops it; the folder and database stay until the
 * process exits (a test may restart a KMS on the same database).
 */
export async function startDevKms(options: DevKmsOptions = {}): Promise<DevKms> {
  const dir = await kmsFolder(options.authority, options.domains);
  const base = loadConfig(join(dir, FILES.config));
  const { baseDir, ...raw } = base;
  const config = options.config ? parseConfig(merge(raw as Record<string, unknown>, options.config), baseDir) : base;
  let dbPath = options.dbPath;
  if (dbPath === undefined) {
    const dbDir = mkdtempSync(join(tmpdir(), 'kms-db-'));
    dbPath = join(dbDir, 'kms.db');
    removeAtExit(dbDir);
  }
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      logs.push(String(chunk));
      if (options.logTo) options.logTo.write(chunk, done);
      else done();
    },
  });
  const issuer = devIssuerOf(config);
  if (!issuer) throw new Error(`the KMS folder ${dir} has no development token issuer (identity.dev.enabled is false)`);
  const running = await startKms(config, {
    db: options.db ?? `sqlite:${dbPath}`,
    port: options.port ?? 0,
    host: '127.0.0.1',
    now: options.now,
    logger: options.logger ?? createLogger(options.logLevel ?? 'debug', sink),
    sweeper: false,
  });
  return {
    ...running,
    authority: config.authority,
    trustAnchors: [readFileSync(join(dir, FILES.ca), 'utf8')],
    config,
    dir,
    dbPath,
    logs,
    token: (user, opts) => issuer.issue(user, { roles: opts?.roles, ttlSeconds: opts?.ttlSeconds, now: options.now?.() }),
  };
}

/**
 * The request limits turned off (`config: { limits: NO_RATE_LIMITS }`): for load tests and the
 * benchmark, which send as one principal from one address as fast as they can, exactly what the
 * default limits stop. Nothing else should need it.
 */
export const NO_RATE_LIMITS = { requestsPerMinutePerPrincipal: 0, handshakesPerMinutePerAddress: 0 } as const;

/** A clock the test moves by hand. */
export function manualClock(start = Date.now()): { now: () => number; advance(ms: number): void; set(ms: number): void } {
  let t = start;
  return {
    now: () => t,
    advance(ms) {
      t += ms;
    },
    set(ms) {
      t = ms;
    },
  };
}

/** The PostgreSQL that tests use (CI runs one on 127.0.0.1:5432, database `test`). */
export const TEST_POSTGRES_URL = process.env.KMS_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/** A URL for messages: the password, if any, replaced. */
export const shownUrl = (url: string): string => url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');

/**
 * Why PostgreSQL at `url` cannot be used, or undefined when it answers. A server that is not there
 * refuses at once; the generous timeout is for one that is there on a loaded machine, where a
 * connection can take seconds and a short limit would call it absent (a failure under CI=true).
 */
export async function postgresProblem(url = TEST_POSTGRES_URL): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return undefined;
  } catch (err) {
    const e = err as { code?: string; message?: string; errors?: { code?: string }[] };
    return `PostgreSQL not reachable at ${shownUrl(url)}: ${e.code ?? e.errors?.[0]?.code ?? e.message}`;
  } finally {
    await client.end().catch(() => {});
  }
}

export { SOFTHSM_MODULE, softHsm, softHsmProblem, withoutSoftHsm, type SoftHsm } from './softhsm.js';
// The KMS's own node:crypto codec: the benchmark seals its load with it, as fast as a client can.
export { fastCodec } from '../codec/fast-codec.js';
/** How many key rows a node keeps in memory (cached-rows.ts): a benchmark reading more keys than this reads storage. */
export { MAX_CACHED_KEYS } from '../limits.js';
