/**
 * Test harness, also exported as `@openkms/server/testing` for integration tests of applications:
 * a real KMS (real SQLite file, real keys and certificates, real sockets) on an ephemeral port. The KMS folder (keys, CA, dev issuer) is made once per test process because RSA
 * key generation is slow; every KMS started gets its own fresh database.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import pg from 'pg';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { initKmsDir } from '../cli/init.js';
import { loadConfig, parseConfig, type KmsConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { devIssuerOf, startKms, type RunningKms } from '../server.js';

const folders = new Map<string, Promise<string>>();
const scratch: string[] = [];

function removeAtExit(dir: string): void {
  if (scratch.length === 0) process.once('exit', () => scratch.forEach((d) => rmSync(d, { recursive: true, force: true })));
  scratch.push(dir);
}

/** A KMS folder for `authority`/`domains`, made once per process. */
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

export interface TestKms extends RunningKms {
  config: KmsConfig;
  dir: string;
  dbPath: string;
  /** Every log line the server wrote. */
  logs: string[];
  token(user: string, opts?: { roles?: string[]; ttlSeconds?: number }): Promise<string>;
}

export interface TestKmsOptions {
  authority?: string;
  domains?: string[];
  now?: () => number;
  /** Deep-merged into the folder's kms.json. */
  config?: Record<string, unknown>;
  /** Reuse a database file (restart tests). */
  dbPath?: string;
  /** A fixed port (default: any free one). */
  port?: number;
}

function merge(base: Record<string, unknown>, patch: Record<string, unknown>): Record<string, unknown> {
  const out = { ...base };
  for (const [k, v] of Object.entries(patch)) {
    const b = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b) ? merge(b as Record<string, unknown>, v as Record<string, unknown>) : v;
  }
  return out;
}

export async function startTestKms(options: TestKmsOptions = {}): Promise<TestKms> {
  const dir = await kmsFolder(options.authority, options.domains);
  const base = loadConfig(join(dir, 'kms.json'));
  const { baseDir, ...raw } = base;
  const config = options.config ? parseConfig(merge(raw as Record<string, unknown>, options.config), baseDir) : base;
  let dbPath = options.dbPath;
  if (dbPath === undefined) {
    const dir = mkdtempSync(join(tmpdir(), 'kms-db-'));
    dbPath = join(dir, 'kms.db');
    // Removed when the process ends, not at close(): a test may restart a KMS on the same file.
    removeAtExit(dir);
  }
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      logs.push(String(chunk));
      done();
    },
  });
  const running = await startKms(config, {
    db: `sqlite:${dbPath}`,
    port: options.port ?? 0,
    host: '127.0.0.1',
    now: options.now,
    logger: createLogger('debug', sink),
    sweeper: false,
  });
  const issuer = devIssuerOf(config)!;
  return {
    ...running,
    config,
    dir,
    dbPath,
    logs,
    token: (user, opts) => issuer.issue(user, { roles: opts?.roles, ttlSeconds: opts?.ttlSeconds, now: options.now?.() }),
  };
}

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

/** Why PostgreSQL at `url` cannot be used, or undefined when it answers. */
export async function postgresProblem(url = TEST_POSTGRES_URL): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
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
