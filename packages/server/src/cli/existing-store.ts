/**
 * The database a reading command (`kms audit`, `kms discovery`) works on, which must exist: opening
 * a SQLite file that is not there would create it, opening PostgreSQL would migrate it, and an
 * empty database answers every question with "nothing", which would read as a clean result.
 */
import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import pg from 'pg';
import { ConfigError, type KmsConfig } from '../config.js';
import { openStore, postgresAddress, postgresProblem } from '../server.js';
import { postgresConnection } from '../store/postgres.js';
import type { Store } from '../store/store.js';
import { flagOrEnv } from './args.js';

const CHECK_TIMEOUT_MS = 5_000;

/**
 * Opening a SQLite file that is not there would create an empty one, and an empty log verifies:
 * a misspelt --db would then read as "intact". Verification only reads what exists.
 */
function refuseMissingSqlite(url: string, baseDir: string, verb: string): void {
  if (!url.startsWith('sqlite:')) return;
  const path = url.slice('sqlite:'.length);
  if (path === ':memory:') throw new ConfigError(`an in-memory database holds nothing to ${verb}`);
  const full = isAbsolute(path) ? path : resolve(baseDir, path);
  if (path !== '' && !existsSync(full)) throw new ConfigError(`no database at ${full}: nothing to ${verb}`);
}

/**
 * Opening PostgreSQL migrates it, creating the tables (and a `?schema=` that is not there): a
 * misnamed schema would read as an empty, intact log. Asked with a plain SELECT first.
 */
async function refuseMissingPostgres(url: string, verb: string): Promise<void> {
  if (!url.startsWith('postgres://') && !url.startsWith('postgresql://')) return;
  const { connectionString, schema } = postgresConnection(url);
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: CHECK_TIMEOUT_MS, query_timeout: CHECK_TIMEOUT_MS });
  client.on('error', () => {}); // a dropped connection fails the query, which says so
  try {
    await client.connect();
    const { rows } = await client.query("SELECT 1 FROM information_schema.tables WHERE table_name = 'audit' AND table_schema = COALESCE($1, current_schema())", [schema ?? null]);
    if (rows.length === 0) throw new ConfigError(`no KMS database at ${postgresAddress(url)}${schema ? ` in schema ${schema}` : ''}: nothing to ${verb}`);
  } catch (err) {
    throw err instanceof ConfigError ? err : new ConfigError(postgresProblem(url, err));
  } finally {
    await client.end().catch(() => {});
  }
}

/** Runs `run` on the store `db` (KMS_DB) or the config's storage names, refused when it does not exist. */
export async function withStore<T>(config: KmsConfig, db: string | undefined, verb: string, run: (store: Store) => Promise<T>): Promise<T> {
  const url = flagOrEnv(db, 'KMS_DB') ?? config.storage.url;
  refuseMissingSqlite(url, config.baseDir, verb);
  await refuseMissingPostgres(url, verb);
  const store = await openStore(url, config.baseDir);
  try {
    return await run(store);
  } finally {
    await store.close();
  }
}
