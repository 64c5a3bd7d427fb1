/**
 * The database as rows, read in one consistent snapshot while the KMS keeps serving, and written
 * back into an empty database: what `kms backup` and `kms restore` move (cli/backup.ts; the file
 * is store/backup-file.ts). Both backends give the same tables, columns and values in the same
 * order, so a backup of either restores into either.
 *
 * - Reading: SQLite, one read transaction (WAL: writers go on, the reader keeps the snapshot it
 *   began with); PostgreSQL, one `REPEATABLE READ READ ONLY` transaction, rows fetched through a
 *   cursor. Rows are taken as stored: sealed columns stay sealed under the root key, which is
 *   never read here.
 * - Writing: one transaction creates the schema at the backup's version (the shared migrations),
 *   checks under its lock that the database holds no data, and inserts the rows; opening the store
 *   afterwards migrates on to the current version, as for any older database.
 *
 * Which tables are state and which are transient is decided here (BACKED_UP, TRANSIENT; see
 * docs/decisions.md "Backup and restore"); a table that is neither fails the backup, so a new
 * migration cannot be left out of backups unnoticed.
 */
import { chmodSync, existsSync } from 'node:fs';
import Database from 'better-sqlite3';
import pg from 'pg';
import { migrationSql, migrations, SCHEMA_VERSION } from './migrations.js';
import { insertRows, LOCK_CLASS, LOCK_MIGRATE, postgresConnection } from './postgres.js';

export type ColumnType = 'text' | 'integer' | 'bytes';
export interface Column {
  name: string;
  type: ColumnType;
}
/** A column's value: text, a safe integer, bytes, or NULL. */
export type Value = string | number | Uint8Array | null;

export interface TableShape {
  name: string;
  columns: Column[];
}

/**
 * The tables a backup holds, in the order a restore inserts them: a table after those its foreign
 * keys name. All of them are what the KMS promised or owes: keys, resources, authorizations and
 * CMKs; the counters (bind order, change and invalidation marks) and the audit chain with its
 * head; federation's record of who fetched a KRO, the copies of peers' KROs (and their archive) and the invalidations
 * received; the replay window of signed peer requests (a request accepted before the backup must
 * stay refused after a restore); the invalidation pushes still owed to peers.
 */
export const BACKED_UP: readonly string[] = [
  'cmks',
  'resources',
  'keys',
  'authorizations',
  'counters',
  'audit',
  'audit_head',
  'peer_fetches',
  'federated_copies',
  'federated_archive',
  'federated_keys',
  'federated_invalidations',
  'peer_requests',
  'peer_request_counts',
  'push_outbox',
];

/** What processes on the database hold for a while, not state: left out of a backup, and why. */
export const TRANSIENT: Readonly<Record<string, string>> = {
  schema_migrations: 'the backup names its schema version; a restore records its own migrations',
  channels: 'ECDHE sessions of clients connected at the time, with sealed channel keys; they expire within hours, and a client handshakes again',
  retry_answers: 'answers remembered per (channel, requestId) for the retry window, of those channels',
  changes: "the change feed of the processes' caches; a restored database has no process yet, and change_seq goes on",
  leader_lease: 'the election among the processes serving now',
  nodes: 'the heartbeats of the processes serving now',
};

/**
 * Rows the migrations seed, which do not make a database hold data (an SQL condition that holds
 * for them): counters still at 0, the audit head of an empty log, a lease nobody holds.
 */
export const SEEDED: Readonly<Record<string, string>> = {
  counters: 'value = 0',
  audit_head: 'seq = 0',
  leader_lease: "holder = ''",
};

/** A refusal or failure with one clear line: a bad backup, a database that cannot take it. */
export class SnapshotError extends Error {
  override name = 'SnapshotError';
}

type Row = Value[];

/** What both backends offer to read and write the schema's tables. */
interface Connection {
  /** The last migration applied; 0 when there is no schema. */
  schemaVersion(): Promise<number>;
  /** The tables of the schema (SQLite's own excluded). */
  tables(): Promise<string[]>;
  shape(table: string): Promise<{ columns: Column[]; key: string[] }>;
  /** The table's rows in key order (text compared byte by byte on both backends). */
  rows(table: string, columns: Column[], key: string[]): AsyncGenerator<Row>;
  /** Rows other than the seeded ones. */
  holdsData(table: string): Promise<boolean>;
  run(sql: string, params?: unknown[]): Promise<void>;
  insert(table: string, columns: string[], rows: Row[]): Promise<void>;
  beginSnapshot(): Promise<void>;
  beginWrite(): Promise<void>;
  commit(): Promise<void>;
  rollback(): Promise<void>;
  close(): Promise<void>;
}

const ident = (s: string) => `"${s.replaceAll('"', '""')}"`;

function columnType(table: string, column: string, declared: string): ColumnType {
  const t = declared.toLowerCase();
  if (t === 'text') return 'text';
  if (t === 'bigint' || t === 'integer') return 'integer';
  if (t === 'blob' || t === 'bytea') return 'bytes';
  throw new SnapshotError(`column ${table}.${column} has a type backups do not know (${declared})`);
}

/** A value as stored, checked against its column's type: both backends give the same. */
function normalized(table: string, column: Column, v: unknown): Value {
  if (v === null || v === undefined) return null;
  if (column.type === 'bytes' && v instanceof Uint8Array) return v;
  if (column.type === 'text' && typeof v === 'string') return v;
  if (column.type === 'integer' && (typeof v === 'number' || typeof v === 'bigint' || (typeof v === 'string' && /^-?\d+$/.test(v)))) {
    const n = Number(v);
    if (Number.isSafeInteger(n)) return n;
  }
  throw new SnapshotError(`a value of ${table}.${column.name} is not a ${column.type} as the schema says`);
}

class SqliteConnection implements Connection {
  constructor(private readonly db: Database.Database) {}

  async schemaVersion(): Promise<number> {
    const has = this.db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").get();
    if (!has) return 0;
    return Number((this.db.prepare('SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations').get() as { v: number }).v);
  }

  async tables(): Promise<string[]> {
    return (this.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map((t) => t.name);
  }

  async shape(table: string): Promise<{ columns: Column[]; key: string[] }> {
    const info = this.db.prepare(`PRAGMA table_info(${ident(table)})`).all() as { name: string; type: string; pk: number }[];
    return {
      columns: info.map((c) => ({ name: c.name, type: columnType(table, c.name, c.type) })),
      key: info.filter((c) => c.pk > 0).sort((a, b) => a.pk - b.pk).map((c) => c.name),
    };
  }

  async *rows(table: string, columns: Column[], key: string[]): AsyncGenerator<Row> {
    const order = (key.length > 0 ? key : columns.map((c) => c.name)).map(ident).join(', ');
    const stmt = this.db.prepare(`SELECT ${columns.map((c) => ident(c.name)).join(', ')} FROM ${ident(table)} ORDER BY ${order}`).raw(true).safeIntegers(true);
    for (const r of stmt.iterate() as Iterable<unknown[]>) yield r.map((v, i) => normalized(table, columns[i]!, v));
  }

  async holdsData(table: string): Promise<boolean> {
    const seeded = SEEDED[table];
    return this.db.prepare(`SELECT 1 FROM ${ident(table)}${seeded ? ` WHERE NOT (${seeded})` : ''} LIMIT 1`).get() !== undefined;
  }

  async run(sql: string, params: unknown[] = []): Promise<void> {
    if (params.length === 0) this.db.exec(sql);
    else this.db.prepare(sql).run(...params);
  }

  async insert(table: string, columns: string[], rows: Row[]): Promise<void> {
    const stmt = this.db.prepare(`INSERT INTO ${ident(table)} (${columns.map(ident).join(', ')}) VALUES (${columns.map(() => '?').join(', ')})`);
    for (const r of rows) stmt.run(...r.map((v) => (v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : v)));
  }

  async beginSnapshot(): Promise<void> {
    // Deferred: the snapshot is taken at the first read and kept until COMMIT; writers go on (WAL).
    this.db.exec('BEGIN');
  }

  async beginWrite(): Promise<void> {
    this.db.exec('BEGIN IMMEDIATE');
  }

  async commit(): Promise<void> {
    this.db.exec('COMMIT');
  }

  async rollback(): Promise<void> {
    if (this.db.inTransaction) this.db.exec('ROLLBACK');
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

/** Rows per FETCH from the backup's cursor. */
const FETCH = 1000;

class PostgresConnection implements Connection {
  constructor(
    private readonly client: pg.Client,
    private readonly schema: string | undefined,
  ) {}

  private async all(sql: string, params: unknown[] = []): Promise<Record<string, unknown>[]> {
    return (await this.client.query(sql, params)).rows as Record<string, unknown>[];
  }

  async schemaVersion(): Promise<number> {
    if (!(await this.tables()).includes('schema_migrations')) return 0;
    return Number((await this.all('SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations'))[0]!.v);
  }

  async tables(): Promise<string[]> {
    const rows = await this.all("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema = current_schema() ORDER BY table_name");
    return rows.map((r) => r.table_name as string);
  }

  async shape(table: string): Promise<{ columns: Column[]; key: string[] }> {
    const columns = await this.all('SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position', [table]);
    const key = await this.all(
      `SELECT k.column_name FROM information_schema.table_constraints c
       JOIN information_schema.key_column_usage k ON k.constraint_schema = c.constraint_schema AND k.constraint_name = c.constraint_name AND k.table_name = c.table_name
       WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = current_schema() AND c.table_name = $1 ORDER BY k.ordinal_position`,
      [table],
    );
    return {
      columns: columns.map((c) => ({ name: c.column_name as string, type: columnType(table, c.column_name as string, c.data_type as string) })),
      key: key.map((k) => k.column_name as string),
    };
  }

  async *rows(table: string, columns: Column[], key: string[]): AsyncGenerator<Row> {
    const type = new Map(columns.map((c) => [c.name, c.type]));
    // COLLATE "C": text in byte order, as SQLite's BINARY compares it.
    const order = (key.length > 0 ? key : columns.map((c) => c.name)).map((k) => `${ident(k)}${type.get(k) === 'text' ? ' COLLATE "C"' : ''}`).join(', ');
    await this.client.query(`DECLARE backup_rows NO SCROLL CURSOR FOR SELECT ${columns.map((c) => ident(c.name)).join(', ')} FROM ${ident(table)} ORDER BY ${order}`);
    try {
      for (;;) {
        const batch = await this.client.query({ text: `FETCH ${FETCH} FROM backup_rows`, rowMode: 'array' });
        for (const r of batch.rows as unknown[][]) yield r.map((v, i) => normalized(table, columns[i]!, v));
        if (batch.rows.length < FETCH) break;
      }
    } finally {
      await this.client.query('CLOSE backup_rows');
    }
  }

  async holdsData(table: string): Promise<boolean> {
    const seeded = SEEDED[table];
    return (await this.all(`SELECT 1 FROM ${ident(table)}${seeded ? ` WHERE NOT (${seeded})` : ''} LIMIT 1`)).length > 0;
  }

  async run(sql: string, params: unknown[] = []): Promise<void> {
    await this.client.query(sql, params);
  }

  async insert(table: string, columns: string[], rows: Row[]): Promise<void> {
    await insertRows(this.client, ident(table), columns.map(ident), rows.map((r) => r.map((v) => (v instanceof Uint8Array && !Buffer.isBuffer(v) ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : v))));
  }

  async beginSnapshot(): Promise<void> {
    await this.client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  }

  async beginWrite(): Promise<void> {
    await this.client.query('BEGIN');
    // The lock migrations take (store/postgres.ts): a KMS starting meanwhile migrates after this commits.
    await this.client.query(`SELECT pg_advisory_xact_lock(${LOCK_CLASS}, ${LOCK_MIGRATE})`);
    if (this.schema) await this.client.query(`CREATE SCHEMA IF NOT EXISTS ${this.schema}`);
    // Nothing else writes the tables until COMMIT, so "it holds no data" stays true while rows go in.
    const tables = await this.tables();
    if (tables.length > 0) await this.client.query(`LOCK TABLE ${tables.map(ident).join(', ')} IN ACCESS EXCLUSIVE MODE`);
  }

  async commit(): Promise<void> {
    await this.client.query('COMMIT');
  }

  async rollback(): Promise<void> {
    await this.client.query('ROLLBACK').catch(() => {});
  }

  async close(): Promise<void> {
    await this.client.end().catch(() => {});
  }
}

const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Opens the database a storage URL names (a SQLite path is already resolved). Reading needs a
 * database that exists: a SQLite file that is not there is refused, not created.
 */
async function connect(url: string, purpose: 'read' | 'write'): Promise<Connection> {
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length);
    if (path === '' || path === ':memory:') throw new SnapshotError('a backup needs a SQLite file, not an in-memory database');
    if (purpose === 'read' && !existsSync(path)) throw new SnapshotError(`no database at ${path}`);
    let db: Database.Database;
    try {
      db = new Database(path, { fileMustExist: purpose === 'read' });
    } catch (err) {
      throw new SnapshotError(`cannot open SQLite database ${path}: ${(err as Error).message}`);
    }
    if (purpose === 'read') db.pragma('query_only = ON');
    else {
      // As SqliteStore opens it: owner-only, WAL, constraints checked while the rows go in.
      chmodSync(path, 0o600);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
    }
    db.pragma('busy_timeout = 5000');
    return new SqliteConnection(db);
  }
  const { connectionString, schema } = postgresConnection(url);
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  client.on('error', () => {}); // a dropped connection fails the query in progress, which says so
  await client.connect();
  return new PostgresConnection(client, schema);
}

/** The schema's tables as a backup holds them, after checking that every table is classified. */
async function backedUpShapes(c: Connection): Promise<(TableShape & { key: string[] })[]> {
  const present = await c.tables();
  const unknown = present.filter((t) => !BACKED_UP.includes(t) && !(t in TRANSIENT));
  if (unknown.length > 0) throw new SnapshotError(`the database has tables backups do not know (${unknown.join(', ')}): is it newer than this kms?`);
  const shapes = [];
  for (const name of BACKED_UP) if (present.includes(name)) shapes.push({ name, ...(await c.shape(name)) });
  return shapes;
}

export interface Snapshot {
  schemaVersion: number;
  tables: TableShape[];
  /** One table's rows, in key order, values as in `tables[…].columns`. */
  rows(table: TableShape): AsyncGenerator<Value[]>;
}

/**
 * Calls `read` with one consistent snapshot of the database at `url`, which stays open (and
 * unchanged, whatever the KMS writes meanwhile) until `read` settles. Nothing is written.
 */
export async function readSnapshot<T>(url: string, read: (snapshot: Snapshot) => Promise<T>): Promise<T> {
  const c = await connect(url, 'read');
  try {
    await c.beginSnapshot();
    const schemaVersion = await c.schemaVersion();
    if (schemaVersion === 0) throw new SnapshotError('the database holds no KMS schema: nothing to back up');
    if (schemaVersion > SCHEMA_VERSION) throw new SnapshotError(`the database is at schema version ${schemaVersion}, newer than this kms knows (${SCHEMA_VERSION})`);
    const shapes = await backedUpShapes(c);
    const keys = new Map(shapes.map((s) => [s.name, s.key]));
    const result = await read({
      schemaVersion,
      tables: shapes.map(({ name, columns }) => ({ name, columns })),
      rows: (t) => c.rows(t.name, t.columns, keys.get(t.name) ?? []),
    });
    await c.commit();
    return result;
  } finally {
    await c.rollback().catch(() => {});
    await c.close();
  }
}

/** What a restore consumes: a table's shape, then its rows, table after table. */
export type RestoreEntry = { table: TableShape } | { row: Value[] };

/** Rows inserted per statement. */
const BATCH = 500;

/**
 * Writes `entries` into the database at `url`, which must hold no data, as schema version
 * `schemaVersion`, in one transaction: nothing is written unless every row is (a bad row, a
 * constraint, a failure of `entries` itself roll it all back). Returns the rows written per table.
 * The database is left at `schemaVersion`; opening a store on it migrates it on.
 */
export async function restoreSnapshot(url: string, schemaVersion: number, entries: AsyncIterable<RestoreEntry>): Promise<Record<string, number>> {
  if (!Number.isSafeInteger(schemaVersion) || schemaVersion < 1) throw new SnapshotError(`schema version ${schemaVersion} is not one this kms knows`);
  if (schemaVersion > SCHEMA_VERSION) throw new SnapshotError(`the backup is of schema version ${schemaVersion}, newer than this kms knows (${SCHEMA_VERSION}): restore it with a newer kms`);
  const c = await connect(url, 'write');
  try {
    await c.beginWrite();
    const current = await c.schemaVersion();
    if (current > schemaVersion) {
      throw new SnapshotError(`the database's schema is already at version ${current}, newer than the backup's (${schemaVersion}): restore into a new database or schema`);
    }
    const full: string[] = [];
    for (const t of await c.tables()) if (t !== 'schema_migrations' && (await c.holdsData(t))) full.push(t);
    if (full.length > 0) throw new SnapshotError(`the database holds data (tables ${full.join(', ')}): restore needs an empty database`);

    // The schema as it was when the backup was made; the rows go in before any later migration.
    await c.run('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)');
    const sqlite = url.startsWith('sqlite:');
    for (const m of migrations) {
      if (m.version <= current || m.version > schemaVersion) continue;
      await c.run(migrationSql(m, sqlite ? 'sqlite' : 'postgres'));
      await c.run(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (${sqlite ? '?, ?, ?' : '$1, $2, $3'})`, [m.version, m.name, Date.now()]);
    }
    const shapes = new Map((await backedUpShapes(c)).map((s) => [s.name, s]));

    const counts: Record<string, number> = {};
    let table: TableShape | undefined;
    let batch: Value[][] = [];
    const flush = async () => {
      if (table && batch.length > 0) await c.insert(table.name, table.columns.map((col) => col.name), batch);
      batch = [];
    };
    for await (const entry of entries) {
      if ('table' in entry) {
        await flush();
        table = entry.table;
        const shape = shapes.get(table.name);
        if (!shape) throw new SnapshotError(`the backup holds a table ${table.name} that schema version ${schemaVersion} does not have`);
        const same = shape.columns.length === table.columns.length && shape.columns.every((col, i) => col.name === table!.columns[i]!.name && col.type === table!.columns[i]!.type);
        if (!same) throw new SnapshotError(`the backup's table ${table.name} has other columns than schema version ${schemaVersion} gives it`);
        if (table.name in counts) throw new SnapshotError(`the backup holds table ${table.name} twice`);
        counts[table.name] = 0;
        // Only the seeded rows (it holds no data): the backup's own rows replace them.
        await c.run(`DELETE FROM ${ident(table.name)}`);
      } else {
        if (!table) throw new SnapshotError('the backup holds a row before any table');
        batch.push(entry.row);
        counts[table.name]! += 1;
        if (batch.length >= BATCH) await flush();
      }
    }
    await flush();
    await c.commit();
    return counts;
  } catch (err) {
    await c.rollback();
    // The database's own refusals (a constraint, a lost connection: they carry a code) in one line;
    // anything else, such as the entries failing, as it was thrown.
    const e = err as { message?: string; code?: unknown };
    if (err instanceof SnapshotError || typeof e.code !== 'string') throw err;
    throw new SnapshotError(`cannot restore: ${String(e.message ?? e.code).split('\n')[0]}; nothing was written`);
  } finally {
    await c.close();
  }
}
