/**
 * What `kms init --force` must not orphan: a database made under the folder's root key. A new
 * root key makes every key stored there unreadable, so init refuses while one holds data. Only
 * reads: nothing is created or migrated while looking (a SQLite file that is not there stays
 * absent; PostgreSQL is asked with plain SELECTs).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { postgresConnection } from '../store/postgres.js';
import { SEEDED } from '../store/snapshot.js';
import { postgresAddress, postgresProblem } from '../server.js';

/**
 * Bookkeeping of the schema, not data: a database that holds only this, and the rows the
 * migrations seed (store/snapshot.ts SEEDED), is as good as empty.
 */
const NOT_DATA = new Set(['schema_migrations']);
const rowsOf = (table: string, from: string) => `SELECT 1 FROM ${from}${SEEDED[table] ? ` WHERE NOT (${SEEDED[table]})` : ''} LIMIT 1`;
const CHECK_TIMEOUT_MS = 5_000;

/** The databases a folder's KMS would use: its default kms.db, and whatever its kms.json names. */
function databasesOf(dir: string, configFile: string): string[] {
  const urls = [`sqlite:${join(dir, 'kms.db')}`];
  if (!existsSync(configFile)) return urls;
  try {
    const url = (JSON.parse(readFileSync(configFile, 'utf8')) as { storage?: { url?: unknown } }).storage?.url;
    if (typeof url === 'string') urls.push(url.startsWith('sqlite:') && !isAbsolute(url.slice(7)) && url !== 'sqlite::memory:' ? `sqlite:${resolve(dir, url.slice(7))}` : url);
  } catch {
    // A kms.json that does not parse names nothing; the default database is still looked at.
  }
  return [...new Set(urls)];
}

function sqliteTablesWithRows(path: string): string[] {
  // Not opened readonly: a readonly connection to a WAL database leaves -wal and -shm files behind,
  // while the last read-write connection removes them on close. query_only keeps it a reader.
  const db = new Database(path, { fileMustExist: true });
  try {
    db.pragma('query_only = ON');
    const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").all() as { name: string }[]).map((t) => t.name);
    return tables.filter((t) => !NOT_DATA.has(t) && db.prepare(rowsOf(t, `"${t.replaceAll('"', '""')}"`)).get() !== undefined);
  } finally {
    db.close();
  }
}

async function postgresTablesWithRows(url: string): Promise<string[]> {
  const { connectionString, schema } = postgresConnection(url);
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: CHECK_TIMEOUT_MS, query_timeout: CHECK_TIMEOUT_MS });
  client.on('error', () => {}); // a dropped connection fails the query below, which says so
  await client.connect();
  try {
    const { rows } = await client.query<{ table_schema: string; table_name: string }>(
      "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema = COALESCE($1, current_schema())",
      [schema ?? null],
    );
    const full: string[] = [];
    for (const { table_schema, table_name } of rows) {
      if (NOT_DATA.has(table_name)) continue;
      const ident = (s: string) => `"${s.replaceAll('"', '""')}"`;
      const found = await client.query(rowsOf(table_name, `${ident(table_schema)}.${ident(table_name)}`));
      if (found.rowCount) full.push(table_name);
    }
    return full;
  } finally {
    await client.end().catch(() => {});
  }
}

const listed = (tables: string[]) => `table${tables.length === 1 ? '' : 's'} ${tables.slice(0, 5).join(', ')}${tables.length > 5 ? ', …' : ''}`;

/**
 * Why `dir` may not get a new root key, in one line, or undefined when none of its databases holds
 * data. A database that cannot be read, or a PostgreSQL that cannot be reached, is a reason too:
 * init cannot tell that it is empty.
 */
export async function dataHeldFor(dir: string, configFile: string): Promise<string | undefined> {
  for (const url of databasesOf(dir, configFile)) {
    const held = await dataHeldAt(url, `storage.url of ${configFile}`);
    if (held) return held;
  }
  return undefined;
}

/**
 * Why the database at `url` (a SQLite path already resolved) is not empty, in one line, or
 * undefined when it holds no data or does not exist yet. `named`: where a PostgreSQL URL came
 * from, for the message (never the URL itself, which may hold a password).
 */
export async function dataHeldAt(url: string, named: string): Promise<string | undefined> {
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length);
    if (path === ':memory:' || path === '' || !existsSync(path) || statSync(path).size === 0) return undefined;
    let tables: string[];
    try {
      tables = sqliteTablesWithRows(path);
    } catch (err) {
      return `${path} exists and cannot be read as a KMS database (${(err as Error).message}); move it away first`;
    }
    if (tables.length > 0) return `${path} holds data (${listed(tables)})`;
  } else if (url.startsWith('postgres://') || url.startsWith('postgresql://')) {
    let tables: string[];
    try {
      tables = await postgresTablesWithRows(url);
    } catch (err) {
      return `cannot tell whether the database holds data: ${postgresProblem(url, err)}`;
    }
    if (tables.length > 0) return `the PostgreSQL database at ${postgresAddress(url)} (${named}) holds data (${listed(tables)})`;
  }
  return undefined;
}
