/**
 * The backup file (`kms backup --out FILE`): JSON lines that say what they are.
 *
 *     {"format":"openkms-backup","formatVersion":1,"schemaVersion":8,"authority":"kms.a.example","createdAt":"…","kmsVersion":"…"}
 *     {"table":"cmks","columns":[{"name":"id","type":"text"},…,{"name":"sealed","type":"bytes"}]}
 *     ["3f0c…","active",null,1764000000000,"AQ…"]                       one line per row
 *     …                                                                  table after table
 *     {"end":"openkms-backup","rows":{"cmks":1,…},"sha256":"…"}
 *
 * A row is an array in the order of its table's columns: text as a string, integers as numbers,
 * bytes as base64, NULL as null. The trailer counts each table's rows and carries the SHA-256 of
 * every byte before it, so a file cut short (no trailer), altered (another digest, other counts)
 * or with anything after the trailer is refused as a whole before a restore writes anything.
 *
 * Written to a temporary file beside FILE (owner-only, 0600), synced, then renamed over FILE: FILE
 * is never half written, and a backup that fails leaves the previous one in place.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { closeSync, createReadStream, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Column, ColumnType, TableShape, Value } from './snapshot.js';

export const BACKUP_FORMAT = 'openkms-backup';
export const BACKUP_FORMAT_VERSION = 1;

/** The longest line a restore reads: far above any row the schema can hold. */
export const MAX_LINE_BYTES = 16 * 1024 * 1024;

export interface BackupHeader {
  format: typeof BACKUP_FORMAT;
  formatVersion: number;
  /** The schema version the rows are of (store/migrations.ts). */
  schemaVersion: number;
  /** The KMS the database belongs to: a restore refuses a backup of another. */
  authority: string;
  /** ISO 8601, when the snapshot was taken. */
  createdAt: string;
  /** The kms that wrote the file. */
  kmsVersion: string;
}

export interface BackupTrailer {
  end: typeof BACKUP_FORMAT;
  /** Rows per table, every table of the file named. */
  rows: Record<string, number>;
  /** Hex SHA-256 of every byte of the file before this line. */
  sha256: string;
}

/** A file that cannot be restored, said in one line. */
export class BackupFileError extends Error {
  override name = 'BackupFileError';
}

const TYPES: readonly ColumnType[] = ['text', 'integer', 'bytes'];
const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
/** Buffered before each write to the file. */
const WRITE_CHUNK = 1024 * 1024;

const encoded = (v: Value): string | number | null => (v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') : v);

/** Writes one backup file: header, then tables and their rows, then finish() (or abort()). */
export class BackupWriter {
  private readonly hash: Hash = createHash('sha256');
  private readonly rows: Record<string, number> = {};
  private table: TableShape | undefined;
  private pending: string[] = [];
  private pendingLength = 0;
  private fd: number | undefined;

  private constructor(
    readonly path: string,
    private readonly temp: string,
  ) {
    // 'wx': never an existing file's mode or contents; 0600 from the first byte.
    this.fd = openSync(temp, 'wx', 0o600);
  }

  /** Starts `path`'s temporary file (in the same folder, so the rename stays on one file system). */
  static create(path: string, header: Omit<BackupHeader, 'format' | 'formatVersion'>): BackupWriter {
    const w = new BackupWriter(path, join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`));
    w.line(JSON.stringify({ format: BACKUP_FORMAT, formatVersion: BACKUP_FORMAT_VERSION, ...header }));
    return w;
  }

  private line(text: string): void {
    const line = `${text}\n`;
    this.hash.update(line);
    this.pending.push(line);
    this.pendingLength += line.length;
    if (this.pendingLength >= WRITE_CHUNK) this.drain();
  }

  private drain(): void {
    if (this.pending.length === 0) return;
    writeSync(this.fd!, this.pending.join(''));
    this.pending = [];
    this.pendingLength = 0;
  }

  startTable(table: TableShape): void {
    if (table.name in this.rows) throw new Error(`table ${table.name} written twice`);
    this.table = table;
    this.rows[table.name] = 0;
    this.line(JSON.stringify({ table: table.name, columns: table.columns }));
  }

  row(values: Value[]): void {
    if (!this.table) throw new Error('a row before its table');
    this.line(JSON.stringify(values.map(encoded)));
    this.rows[this.table.name]! += 1;
  }

  /** Writes the trailer, syncs, and renames the file into place; returns the rows per table. */
  finish(): Record<string, number> {
    const trailer: BackupTrailer = { end: BACKUP_FORMAT, rows: this.rows, sha256: this.hash.digest('hex') };
    this.pending.push(`${JSON.stringify(trailer)}\n`);
    this.drain();
    fsyncSync(this.fd!);
    closeSync(this.fd!);
    this.fd = undefined;
    renameSync(this.temp, this.path);
    // The rename itself is durable once the folder is synced.
    const folder = openSync(dirname(this.path), 'r');
    try {
      fsyncSync(folder);
    } catch {
      // Some file systems cannot sync a folder; the file itself is synced.
    } finally {
      closeSync(folder);
    }
    return this.rows;
  }

  /** Removes the temporary file; FILE is left as it was. */
  abort(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    rmSync(this.temp, { force: true });
  }
}

/** A file's lines, as the bytes they are (no newline); a last line without one is reported so. */
async function* linesOf(path: string): AsyncGenerator<{ bytes: Buffer; terminated: boolean }> {
  let rest: Buffer = Buffer.alloc(0);
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) {
    const data = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
    let start = 0;
    for (let nl = data.indexOf(0x0a, start); nl >= 0; nl = data.indexOf(0x0a, start)) {
      yield { bytes: data.subarray(start, nl), terminated: true };
      start = nl + 1;
    }
    rest = data.subarray(start);
    if (rest.length > MAX_LINE_BYTES) throw new BackupFileError(`a line is longer than ${MAX_LINE_BYTES} bytes: not a backup`);
  }
  if (rest.length > 0) yield { bytes: rest, terminated: false };
}

export type BackupEntry = { header: BackupHeader } | { table: TableShape } | { row: Value[] } | { trailer: BackupTrailer };

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function header(v: unknown): BackupHeader {
  if (!isObject(v) || v.format !== BACKUP_FORMAT) throw new BackupFileError('not an openkms backup (its first line is not a backup header)');
  if (v.formatVersion !== BACKUP_FORMAT_VERSION) {
    const newer = typeof v.formatVersion === 'number' && v.formatVersion > BACKUP_FORMAT_VERSION;
    throw new BackupFileError(`backup format version ${String(v.formatVersion)} ${newer ? 'is newer than this kms reads' : 'is not one this kms reads'} (${BACKUP_FORMAT_VERSION})`);
  }
  if (!Number.isSafeInteger(v.schemaVersion) || (v.schemaVersion as number) < 1) throw new BackupFileError('the header has no valid schemaVersion');
  if (typeof v.authority !== 'string' || v.authority === '') throw new BackupFileError('the header names no authority');
  if (typeof v.createdAt !== 'string' || Number.isNaN(Date.parse(v.createdAt))) throw new BackupFileError('the header has no valid createdAt');
  if (typeof v.kmsVersion !== 'string') throw new BackupFileError('the header has no kmsVersion');
  return v as unknown as BackupHeader;
}

function table(v: Record<string, unknown>, line: number): TableShape {
  const { table: name, columns } = v;
  if (typeof name !== 'string' || !IDENTIFIER.test(name)) throw new BackupFileError(`line ${line}: not a table name`);
  if (!Array.isArray(columns) || columns.length === 0) throw new BackupFileError(`line ${line}: table ${name} has no columns`);
  const shaped: Column[] = columns.map((c: unknown) => {
    if (!isObject(c) || typeof c.name !== 'string' || !IDENTIFIER.test(c.name) || !TYPES.includes(c.type as ColumnType)) throw new BackupFileError(`line ${line}: a column of table ${name} is malformed`);
    return { name: c.name, type: c.type as ColumnType };
  });
  if (new Set(shaped.map((c) => c.name)).size !== shaped.length) throw new BackupFileError(`line ${line}: table ${name} names a column twice`);
  return { name, columns: shaped };
}

function row(v: unknown[], shape: TableShape, line: number): Value[] {
  if (v.length !== shape.columns.length) throw new BackupFileError(`line ${line}: a row of ${shape.name} has ${v.length} values, not ${shape.columns.length}`);
  return v.map((x, i) => {
    const col = shape.columns[i]!;
    if (x === null) return null;
    if (col.type === 'text' && typeof x === 'string') return x;
    if (col.type === 'integer' && Number.isSafeInteger(x)) return x as number;
    if (col.type === 'bytes' && typeof x === 'string' && BASE64.test(x)) return new Uint8Array(Buffer.from(x, 'base64'));
    throw new BackupFileError(`line ${line}: ${shape.name}.${col.name} is not ${col.type === 'integer' ? 'an integer' : col.type === 'bytes' ? 'base64' : 'text'}`);
  });
}

/**
 * Reads a backup file, entry by entry, checking as it goes; the trailer (digest, counts) comes
 * last, so a consumer that must not act on a bad file acts only once the generator has finished.
 * Every problem is a BackupFileError of one line.
 */
export async function* readBackup(path: string): AsyncGenerator<BackupEntry> {
  const hash = createHash('sha256');
  const rows: Record<string, number> = {};
  let shape: TableShape | undefined;
  let line = 0;
  let ended = false;
  try {
    for await (const { bytes, terminated } of linesOf(path)) {
      line += 1;
      if (ended) throw new BackupFileError(`line ${line}: data after the trailer`);
      if (!terminated) throw new BackupFileError(`truncated: line ${line} is cut short`);
      let v: unknown;
      try {
        v = JSON.parse(bytes.toString('utf8'));
      } catch {
        throw new BackupFileError(line === 1 ? 'not an openkms backup (its first line is not JSON)' : `line ${line} is not JSON`);
      }
      if (line === 1) {
        hash.update(bytes).update('\n');
        yield { header: header(v) };
      } else if (Array.isArray(v)) {
        if (!shape) throw new BackupFileError(`line ${line}: a row before any table`);
        hash.update(bytes).update('\n');
        rows[shape.name]! += 1;
        yield { row: row(v, shape, line) };
      } else if (isObject(v) && 'table' in v) {
        hash.update(bytes).update('\n');
        shape = table(v, line);
        if (shape.name in rows) throw new BackupFileError(`line ${line}: table ${shape.name} appears twice`);
        rows[shape.name] = 0;
        yield { table: shape };
      } else if (isObject(v) && v.end === BACKUP_FORMAT) {
        const digest = hash.digest('hex');
        if (v.sha256 !== digest) throw new BackupFileError('altered: its content does not match the SHA-256 in its trailer');
        const counted = isObject(v.rows) ? v.rows : {};
        const same = Object.keys(counted).length === Object.keys(rows).length && Object.entries(rows).every(([t, n]) => counted[t] === n);
        if (!same) throw new BackupFileError('altered: its rows do not match the counts in its trailer');
        ended = true;
        yield { trailer: { end: BACKUP_FORMAT, rows, sha256: digest } };
      } else {
        throw new BackupFileError(`line ${line} is not part of a backup`);
      }
    }
  } catch (err) {
    if (err instanceof BackupFileError) throw err;
    const e = err as NodeJS.ErrnoException;
    throw new BackupFileError(`cannot read it: ${e.code ?? e.message}`);
  }
  if (line === 0) throw new BackupFileError('empty: not a backup');
  if (!ended) throw new BackupFileError(`truncated: it ends after line ${line}, before its trailer`);
}
