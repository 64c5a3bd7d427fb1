/**
 * `kms backup` and `kms restore` (OPERATING.md): an online, consistent copy of the database, and
 * that copy put back into an empty database. The rows are moved as stored (store/snapshot.ts): the
 * keys stay sealed under the root key, which is never in a backup: back it up apart, and restore
 * with the same one. The file is store/backup-file.ts.
 */
import { existsSync, rmSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { verifyAudit } from '../audit/audit.js';
import { ConfigError, loadConfig, type KmsConfig } from '../config.js';
import { sealedUnder, type RootKey } from '../keyring/keyring.js';
import { openStore, postgresProblem, withRootKey } from '../server.js';
import { BackupFileError, BackupWriter, readBackup, type BackupHeader } from '../store/backup-file.js';
import { SCHEMA_VERSION } from '../store/migrations.js';
import { readSnapshot, restoreSnapshot, SnapshotError, type RestoreEntry, type TableShape, type Value } from '../store/snapshot.js';
import { KMS_VERSION } from '../version.js';
import { DEFAULT_CONFIG, UsageError, flagOrEnv, parse } from './args.js';
import { dataHeldAt } from './existing-data.js';

const BACKUP_USAGE = `usage: kms backup [--config D/kms.json] [--db URL] --out FILE
  writes an online, consistent backup of the database (--db, else the config's storage.url) to FILE
  while the KMS keeps serving: one snapshot (SQLite: a read transaction; PostgreSQL: REPEATABLE READ),
  every table that is state (not the nodes, channels or other transient rows), keys still sealed under
  the root key. The root key is never in it: back up root.key apart. FILE is written owner-only
  (0600) and appears whole or not at all (an existing FILE is replaced).
Environment: KMS_CONFIG, KMS_DB, KMS_BACKUP_OUT.`;

const RESTORE_USAGE = `usage: kms restore [--config D/kms.json] [--db URL] --from FILE
  restores a backup of this KMS (the config's authority) into an empty database (--db, else the
  config's storage.url), in one transaction, then migrates it to the current schema and verifies
  the audit chain. Needs the root key the backup was made under (rootKey.file, KMS_ROOT_KEY,
  or the same HSM key: rootKey.pkcs11 with KMS_HSM_PIN).
  Refuses, before writing anything, a file cut short, altered, of another KMS or of a newer schema,
  CMKs sealed under another root key, and a database that holds data.
Environment: KMS_CONFIG, KMS_DB, KMS_RESTORE_FROM, KMS_ROOT_KEY, KMS_HSM_PIN.`;

/** The storage URL to use, a SQLite path made absolute against the config's folder. */
function storageUrl(flag: string | undefined, config: KmsConfig): string {
  const url = flagOrEnv(flag, 'KMS_DB') ?? config.storage.url;
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length);
    if (path === '' || path === ':memory:') throw new UsageError(`--db ${url}: backup and restore need a SQLite file, e.g. sqlite:kms.db`);
    return `sqlite:${isAbsolute(path) ? path : resolve(config.baseDir, path)}`;
  }
  if (url.startsWith('postgres://') || url.startsWith('postgresql://')) return url;
  throw new UsageError(`--db must be sqlite:PATH or postgres://…, got ${url.split(':')[0]}:`);
}

/** A failure said in one line: the file's problems name the file; PostgreSQL's never the password. */
function oneLine(err: unknown, url: string, file?: string): never {
  if (err instanceof BackupFileError) throw new ConfigError(`${file}: ${err.message}`);
  if (err instanceof SnapshotError) throw new ConfigError(err.message);
  if (err instanceof ConfigError || err instanceof UsageError) throw err;
  if (url.startsWith('sqlite:')) throw new ConfigError(`SQLite database ${url.slice('sqlite:'.length)}: ${(err as Error).message ?? String(err)}`);
  throw new ConfigError(postgresProblem(url, err));
}

/** Runs a write to the backup file; a failure (a full disk) says so, not as a database problem. */
function writing<T>(file: string, write: () => T): T {
  try {
    return write();
  } catch (err) {
    throw new ConfigError(`cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

const counted = (rows: Record<string, number>) =>
  Object.entries(rows)
    .map(([t, n]) => `${t} ${n}`)
    .join(', ');
const total = (rows: Record<string, number>) => Object.values(rows).reduce((a, b) => a + b, 0);

/** Both commands' flags: the config, the database and the backup file (`fileFlag`), each also from the environment. */
function commandLine(argv: string[], command: string, fileFlag: 'out' | 'from', fileEnv: string, usage: string): { config: KmsConfig; url: string; urlFrom: string; file: string } {
  const { values } = parse(argv, { config: { type: 'string' }, db: { type: 'string' }, [fileFlag]: { type: 'string' } }, { usage });
  const file = flagOrEnv(values.str(fileFlag), fileEnv);
  if (!file) throw new UsageError(`kms ${command} needs --${fileFlag} FILE (or ${fileEnv})`);
  const config = loadConfig(flagOrEnv(values.str('config'), 'KMS_CONFIG') ?? DEFAULT_CONFIG);
  const urlFrom = values.str('db') !== undefined ? '--db' : process.env.KMS_DB ? 'KMS_DB' : 'storage.url of the config';
  return { config, url: storageUrl(values.str('db'), config), urlFrom, file: resolve(file) };
}

export async function backupCommand(argv: string[]): Promise<void> {
  const { config, url, file } = commandLine(argv, 'backup', 'out', 'KMS_BACKUP_OUT', BACKUP_USAGE);
  let writer: BackupWriter | undefined;
  let rows: Record<string, number>;
  try {
    rows = await readSnapshot(url, async (snapshot) => {
      const w = (writer = writing(file, () =>
        BackupWriter.create(file, { schemaVersion: snapshot.schemaVersion, authority: config.authority, createdAt: new Date().toISOString(), kmsVersion: KMS_VERSION }),
      ));
      for (const table of snapshot.tables) {
        writing(file, () => w.startTable(table));
        for await (const row of snapshot.rows(table)) writing(file, () => w.row(row));
      }
      return writing(file, () => w.finish());
    });
  } catch (err) {
    writer?.abort();
    oneLine(err, url);
  }
  process.stdout.write(`backup written to ${file}: ${total(rows)} rows (${counted(rows)}); the root key is not in it\n`);
}

/**
 * Reads the whole file once before anything is written: its header must be of this KMS and of a
 * schema this kms knows, its trailer must match, its CMKs must unseal under this root key.
 */
async function checkedBackup(file: string, config: KmsConfig, rootKey: RootKey): Promise<{ header: BackupHeader; sha256: string }> {
  let header: BackupHeader | undefined;
  let sha256 = '';
  let table: TableShape | undefined;
  const cmks: { id: string; sealed: Uint8Array }[] = [];
  for await (const entry of readBackup(file)) {
    if ('header' in entry) {
      header = entry.header;
      if (header.authority.toLowerCase() !== config.authority.toLowerCase()) {
        throw new BackupFileError(`a backup of ${header.authority}, not of ${config.authority} (the config's authority)`);
      }
      if (header.schemaVersion > SCHEMA_VERSION) throw new BackupFileError(`its schema version ${header.schemaVersion} is newer than this kms knows (${SCHEMA_VERSION}): restore it with a newer kms`);
    } else if ('table' in entry) {
      table = entry.table;
    } else if ('row' in entry && table?.name === 'cmks') {
      const at = (name: string): Value | undefined => entry.row[table!.columns.findIndex((c) => c.name === name)];
      const id = at('id');
      const sealed = at('sealed');
      if (typeof id !== 'string' || !(sealed instanceof Uint8Array)) throw new BackupFileError('a CMK row has no id or sealed key');
      cmks.push({ id, sealed });
    } else if ('trailer' in entry) {
      sha256 = entry.trailer.sha256;
    }
  }
  const foreign = cmks.find((cmk) => !sealedUnder(rootKey, cmk));
  if (foreign) throw new BackupFileError(`CMK ${foreign.id} was not sealed under this config's root key: restoring needs the root key the backup was made under`);
  return { header: header!, sha256 };
}

/**
 * The file's tables and rows as a restore takes them. Its trailer ends them, checked again, and
 * must be the one checkedBackup read: a file replaced meanwhile rolls the restore back.
 */
async function* entriesOf(file: string, sha256: string): AsyncGenerator<RestoreEntry> {
  for await (const entry of readBackup(file)) {
    if ('table' in entry) yield { table: entry.table };
    else if ('row' in entry) yield { row: entry.row };
    else if ('trailer' in entry && entry.trailer.sha256 !== sha256) throw new BackupFileError('it changed while it was being restored');
  }
}

export async function restoreCommand(argv: string[]): Promise<void> {
  const { config, url, urlFrom, file } = commandLine(argv, 'restore', 'from', 'KMS_RESTORE_FROM', RESTORE_USAGE);
  if (!existsSync(file)) throw new ConfigError(`no backup at ${file}`);
  await withRootKey(config, (rootKey) => restoreUnder(rootKey, config, url, urlFrom, file));
}

async function restoreUnder(rootKey: RootKey, config: KmsConfig, url: string, urlFrom: string, file: string): Promise<void> {
  let checked: { header: BackupHeader; sha256: string };
  try {
    checked = await checkedBackup(file, config, rootKey);
  } catch (err) {
    oneLine(err, url, file);
  }
  const { header } = checked;
  const held = await dataHeldAt(url, urlFrom);
  if (held) throw new ConfigError(`refusing to restore: ${held}; restore needs an empty database`);

  // A SQLite file this restore creates is removed again if the restore fails: nothing is left behind.
  const createdFile = url.startsWith('sqlite:') && !existsSync(url.slice('sqlite:'.length)) ? url.slice('sqlite:'.length) : undefined;
  let rows: Record<string, number>;
  try {
    rows = await restoreSnapshot(url, header.schemaVersion, entriesOf(file, checked.sha256));
  } catch (err) {
    if (createdFile) for (const suffix of ['', '-wal', '-shm']) rmSync(`${createdFile}${suffix}`, { force: true });
    oneLine(err, url, file);
  }

  // Opening the store migrates the restored schema on to the current version.
  const store = await openStore(url, config.baseDir);
  try {
    const audit = await verifyAudit(store, rootKey.auditKey());
    const migrated = header.schemaVersion < SCHEMA_VERSION ? `, migrated from schema version ${header.schemaVersion} to ${SCHEMA_VERSION}` : '';
    process.stdout.write(`restored ${total(rows)} rows from ${file} (made ${header.createdAt})${migrated}: ${counted(rows)}\n`);
    if (audit.ok) process.stdout.write(`audit log intact: ${audit.records} records\n`);
    else {
      process.stderr.write(`kms: restored, but the audit log is broken at record ${audit.seq}: ${audit.problem}\n`);
      process.exitCode = 1;
    }
  } finally {
    await store.close();
  }
}
