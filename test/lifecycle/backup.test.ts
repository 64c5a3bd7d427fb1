/**
 * `kms backup` and `kms restore` end to end (OPERATING.md): a KMS serving on SQLite, with keys,
 * a resource and an authorization made through the SDK, is backed up while a client keeps
 * writing to it; the file is owner-only and holds no root key. It restores into an empty SQLite
 * file and into a PostgreSQL schema, where `kms serve` hands out the same keys, the counters and
 * the audit chain go on, and `kms audit verify` passes; a backup of the PostgreSQL copy restores
 * into SQLite again. Refused with one clear line, before anything is written: a database holding
 * data, a file cut short or altered, a backup of another KMS, another root key, a newer schema.
 * A backup of an older schema version restores and is migrated on.
 *
 * PostgreSQL: 127.0.0.1:5432, database `test` (KMS_TEST_POSTGRES_URL overrides it), a fresh schema,
 * dropped afterwards; skipped without a server, except under CI=true.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { KmsClient, type KeyRep } from '@openkms/client';
import { BackupWriter, readBackup, type BackupHeader } from '../../packages/server/dist/src/store/backup-file.js';
import { SCHEMA_VERSION } from '../../packages/server/dist/src/store/migrations.js';
import type { TableShape, Value } from '../../packages/server/dist/src/store/snapshot.js';
import { oneClearLine, runKms, runKmsAsync, serve, type Served } from '../support/cli.js';
import { onEachBackend } from '../support/nodes.js';

const AUTHORITY = 'kms.backup.example';
const DOMAIN = 'backup.example';
const TEST = { timeout: 120_000 };

const work = mkdtempSync(join(tmpdir(), 'kms-life-backup-'));
const source = join(work, 'source');
const backupFile = join(work, 'kms.backup');
let served: Served;
let alice: KmsClient;
/** Made before the backup: unbound, and bound to `resourceUri` (bob is authorized on it). */
let keys: KeyRep[];
let bound: KeyRep[];
let resourceUri: string;
const clients: KmsClient[] = [];

const configOf = (dir: string) => join(dir, 'kms.json');
const idOf = (uri: string) => uri.slice(uri.lastIndexOf('/') + 1);

/** `clientId`: an unbound key is readable only from the client that created it, so alice comes back as the same client. */
function client(dir: string, url: string, user: string, clientId?: string): KmsClient {
  const r = runKms(['token', '--config', configOf(dir), '--user', user]);
  assert.equal(r.code, 0, r.stderr);
  const c = new KmsClient({ url, authority: AUTHORITY, token: r.stdout.trim(), trustAnchors: [readFileSync(join(dir, 'ca.pem'), 'utf8')], debounceMs: 0, clientId });
  clients.push(c);
  return c;
}

/** A folder of the same KMS (config, root key, certificates, dev issuer) without its database: where a restore goes. */
function sameKmsFolder(name: string): string {
  const dir = join(work, name);
  mkdirSync(dir);
  for (const f of readdirSync(source)) if (!f.startsWith('kms.db')) copyFileSync(join(source, f), join(dir, f));
  return dir;
}

/** A folder of its own, made by `kms init`. */
function initFolder(name: string, authority: string): string {
  const dir = join(work, name);
  const r = runKms(['init', '--dir', dir, '--authority', authority, '--domain', DOMAIN]);
  assert.equal(r.code, 0, r.stderr);
  return dir;
}

/** Writes a backup file with `edit` applied to the entries of `from` (a fresh digest: a well-formed file). */
async function rewritten(
  from: string,
  to: string,
  edit: { header?: (h: BackupHeader) => BackupHeader; table?: (t: TableShape) => boolean; row?: (t: TableShape, row: Value[]) => boolean; dropColumns?: Record<string, string[]> },
): Promise<void> {
  let writer: BackupWriter | undefined;
  let table: TableShape | undefined;
  let keep = true;
  let kept: number[] | undefined;
  for await (const entry of readBackup(from)) {
    if ('header' in entry) {
      const { format: _f, formatVersion: _v, ...h } = edit.header ? edit.header(entry.header) : entry.header;
      writer = BackupWriter.create(to, h);
    } else if ('table' in entry) {
      table = entry.table;
      keep = edit.table ? edit.table(table) : true;
      const drop = edit.dropColumns?.[table.name] ?? [];
      kept = table.columns.flatMap((c, i) => (drop.includes(c.name) ? [] : [i]));
      if (keep) writer!.startTable({ ...table, columns: kept.map((i) => table!.columns[i]!) });
    } else if ('row' in entry) {
      if (keep && (edit.row ? edit.row(table!, entry.row) : true)) writer!.row(kept!.map((i) => entry.row[i]!));
    }
  }
  writer!.finish();
}

/** What a refused restore must leave: no database file in the folder. */
function refusedWithoutWriting(dir: string, r: { code: number | null; stderr: string }, reason: RegExp): void {
  assert.equal(r.code, 1, r.stderr);
  oneClearLine(r.stderr);
  assert.match(r.stderr, reason);
  assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('kms.db')), [], 'no database written');
}

/** Serves `dir` on its database and checks that it hands out the keys made before the backup. */
async function sameKeysServed(dir: string, dbArgs: string[]): Promise<{ server: Served; alice: KmsClient }> {
  const server = await serve(['--config', configOf(dir), '--port', '0', ...dbArgs]);
  const a = client(dir, server.url, `alice@${DOMAIN}`, alice.clientId);
  const b = client(dir, server.url, `bob@${DOMAIN}`);
  for (const k of keys) assert.equal((await a.retrieveKey(k.uri)).jwk.k, k.jwk.k, `alice's ${k.uri}`);
  for (const k of bound) assert.equal((await b.retrieveKey(k.uri)).jwk.k, k.jwk.k, `bob, authorized on the resource, gets ${k.uri}`);
  return { server, alice: a };
}

before(async () => {
  const r = runKms(['init', '--dir', source, '--authority', AUTHORITY, '--domain', DOMAIN]);
  assert.equal(r.code, 0, r.stderr);
  served = await serve(['--config', configOf(source), '--port', '0']);
  alice = client(source, served.url, `alice@${DOMAIN}`);
  keys = await alice.createKeys(3);
  bound = await alice.createKeys(2);
  resourceUri = (await alice.createResource({ authIds: [`bob@${DOMAIN}`], keyUris: bound.map((k) => k.uri) })).resource.uri;
});

after(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => {})));
  await served?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('kms backup', () => {
  test('while the KMS serves and a client writes: exit 0, one 0600 file with every key made before it', TEST, async () => {
    let writing = true;
    let written = 0;
    const writer = (async () => {
      while (writing) written += (await alice.createKeys(1)).length;
    })();
    try {
      while (written < 2) await new Promise((r) => setTimeout(r, 10));
      const r = await runKmsAsync(['backup', '--config', configOf(source), '--out', backupFile]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^backup written to .*kms\.backup: \d+ rows \(.*keys \d+.*\); the root key is not in it\n$/);
    } finally {
      writing = false;
      await writer;
    }
    assert.equal(statSync(backupFile).mode & 0o777, 0o600, 'owner-only');
    assert.deepEqual(readdirSync(work).filter((f) => f.includes('.tmp')), [], 'no temporary file left');
    const lines = readFileSync(backupFile, 'utf8').trimEnd().split('\n');
    const header = JSON.parse(lines[0]!);
    assert.equal(header.format, 'openkms-backup');
    assert.equal(header.authority, AUTHORITY);
    assert.equal(header.schemaVersion, SCHEMA_VERSION);
    const text = lines.join('\n');
    for (const k of [...keys, ...bound]) assert.ok(text.includes(JSON.stringify(idOf(k.uri))), `key ${k.uri} in the backup`);
    for (const k of keys) assert.ok(!text.includes(k.jwk.k), 'key material only sealed');
    assert.ok(!/"table":"(nodes|channels|leader_lease|retry_answers|changes)"/.test(text), 'no transient table');
  });

  test('holds no root key: neither its text nor its bytes (hex, base64, base64url, raw)', TEST, () => {
    const rootKeyText = readFileSync(join(source, 'root.key'), 'utf8').trim();
    const bytes = Buffer.from(rootKeyText, 'base64');
    assert.equal(bytes.length, 32);
    const file = readFileSync(backupFile);
    const text = file.toString('utf8');
    for (const form of [rootKeyText, bytes.toString('hex'), bytes.toString('base64'), bytes.toString('base64url')]) assert.ok(!text.includes(form), `no ${form.slice(0, 6)}…`);
    assert.equal(file.indexOf(bytes), -1, 'not the raw bytes');
  });

  test('bad input: one clear line, no file', TEST, () => {
    const missing = runKms(['backup', '--config', configOf(source)]);
    assert.equal(missing.code, 2);
    oneClearLine(missing.stderr);
    const out = join(work, 'never.backup');
    const noDb = runKms(['backup', '--config', configOf(source), '--db', `sqlite:${join(work, 'absent.db')}`, '--out', out]);
    assert.equal(noDb.code, 1);
    oneClearLine(noDb.stderr);
    assert.match(noDb.stderr, /no database at .*absent\.db/);
    assert.equal(existsSync(out), false);
    assert.equal(existsSync(join(work, 'absent.db')), false, 'not created');
  });
});

await onEachBackend('kms restore', (backend) => {
  describe(`kms restore into ${backend.name}`, () => {
    let dir: string;
    before(() => {
      dir = sameKmsFolder(`restored-${backend.name}`);
    });

    test('into an empty database: the rows counted, the audit chain verified', TEST, async () => {
      const r = runKms(['restore', '--config', configOf(dir), ...backend.dbArgs, '--from', backupFile]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^restored \d+ rows from .*kms\.backup \(made \d{4}-.*\): .*keys \d+/m);
      assert.match(r.stdout, /^audit log intact: [1-9]\d* records$/m);
      const ids = (await backend.sql<{ id: string }>(dir, 'SELECT id FROM keys')).map((k) => k.id);
      for (const k of [...keys, ...bound]) assert.ok(ids.includes(idOf(k.uri)));
      assert.deepEqual(await backend.sql(dir, 'SELECT * FROM nodes'), [], 'no node of the source');
    });

    test('kms serve on it: the same keys; binds and the audit chain go on; kms audit verify passes', TEST, async () => {
      const bindSeq = async () => Number((await backend.sql<{ value: unknown }>(dir, "SELECT value FROM counters WHERE name = 'bind_seq'"))[0]!.value);
      const seqBefore = await bindSeq();
      assert.equal(seqBefore, bound.length, 'the bind counter as it was');
      const { server, alice: a } = await sameKeysServed(dir, backend.dbArgs);
      try {
        const [fresh] = await a.createKeys(1);
        await a.bindKey(fresh!.uri, resourceUri);
        assert.equal((await a.retrieveResourceKeys(resourceUri))[0]!.uri, fresh!.uri, 'the newest bind first: bind_seq went on');
        assert.equal(await bindSeq(), seqBefore + 1);
      } finally {
        assert.equal(await server.stop(), 0);
      }
      const v = runKms(['audit', 'verify', '--config', configOf(dir), ...backend.dbArgs]);
      assert.equal(v.code, 0, v.stderr);
      assert.match(v.stdout, /^audit log intact: \d+ records/);
    });

    test('refuses a database that holds data: one clear line, nothing written', TEST, async () => {
      const count = async () => Number((await backend.sql<{ n: unknown }>(dir, 'SELECT COUNT(*) AS n FROM audit'))[0]!.n);
      const before = await count();
      const r = runKms(['restore', '--config', configOf(dir), ...backend.dbArgs, '--from', backupFile]);
      assert.equal(r.code, 1, r.stderr);
      oneClearLine(r.stderr);
      assert.match(r.stderr, /refusing to restore: .*holds data .*restore needs an empty database/);
      assert.equal(await count(), before);
    });

    test('a backup of it restores into a SQLite file (from PostgreSQL: across backends); every option from the environment', TEST, async () => {
      const again = join(dir, 'again.backup');
      const db: Record<string, string> = backend.dbArgs.length > 0 ? { KMS_DB: backend.dbArgs[1]! } : {};
      const b = runKms(['backup'], { KMS_CONFIG: configOf(dir), ...db, KMS_BACKUP_OUT: again });
      assert.equal(b.code, 0, b.stderr);
      const target = sameKmsFolder(`from-${backend.name}`);
      const r = runKms(['restore'], { KMS_CONFIG: configOf(target), KMS_RESTORE_FROM: again });
      assert.equal(r.code, 0, r.stderr);
      const { server } = await sameKeysServed(target, []);
      assert.equal(await server.stop(), 0);
      assert.equal(runKms(['audit', 'verify', '--config', configOf(target)]).code, 0);
    });
  });
});

describe('kms restore refuses, before writing anything', () => {
  const restore = (dir: string, file: string) => runKms(['restore', '--config', configOf(dir), '--from', file]);

  test('a file cut short, anywhere', TEST, () => {
    const dir = sameKmsFolder('truncated');
    const whole = readFileSync(backupFile);
    const lines = whole.toString('utf8').trimEnd().split('\n');
    const cuts = [whole.subarray(0, Math.floor(whole.length / 2)), Buffer.from(`${lines.slice(0, -1).join('\n')}\n`), whole.subarray(0, whole.length - 1)];
    for (const [i, cut] of cuts.entries()) {
      const file = join(work, `cut-${i}.backup`);
      writeFileSync(file, cut);
      refusedWithoutWriting(dir, restore(dir, file), /cut-\d\.backup: truncated/);
    }
  });

  test('an altered file: a row changed, or a row removed', TEST, () => {
    const dir = sameKmsFolder('altered');
    const lines = readFileSync(backupFile, 'utf8').split('\n');
    const keyRow = lines.findIndex((l) => l.includes(JSON.stringify(idOf(keys[0]!.uri))));
    const changed = [...lines];
    changed[keyRow] = changed[keyRow]!.replace(/"(alice@[^"]+)"/, '"mallory@backup.example"');
    assert.notEqual(changed[keyRow], lines[keyRow]);
    writeFileSync(join(work, 'changed.backup'), changed.join('\n'));
    refusedWithoutWriting(dir, restore(dir, join(work, 'changed.backup')), /altered: its content does not match the SHA-256 in its trailer/);
    writeFileSync(join(work, 'removed.backup'), lines.filter((_, i) => i !== keyRow).join('\n'));
    refusedWithoutWriting(dir, restore(dir, join(work, 'removed.backup')), /altered/);
  });

  test('a backup of another KMS, or one made under another root key', TEST, () => {
    const other = initFolder('other-authority', 'kms.other.example');
    refusedWithoutWriting(other, restore(other, backupFile), /a backup of kms\.backup\.example, not of kms\.other\.example/);
    const otherRoot = initFolder('other-root-key', AUTHORITY);
    refusedWithoutWriting(otherRoot, restore(otherRoot, backupFile), /CMK \S+ was not sealed under this config's root key: restoring needs the root key the backup was made under/);
  });

  test('a backup of a newer schema than this kms knows', TEST, async () => {
    const dir = sameKmsFolder('newer');
    const file = join(work, 'newer.backup');
    await rewritten(backupFile, file, { header: (h) => ({ ...h, schemaVersion: 99 }) });
    refusedWithoutWriting(dir, restore(dir, file), new RegExp(`schema version 99 is newer than this kms knows \\(${SCHEMA_VERSION}\\)`));
  });
});

describe('kms restore of an older schema version', () => {
  test('a backup of schema version 5 restores, is migrated to the current version, and serves the same keys', TEST, async () => {
    // As a kms of schema 5 would have written it: no tables of migrations 6, 7 and 9 (the
    // invalidations received, the push outbox, the archive of copies), no counters they seed,
    // no audit onBehalfOf (migration 9).
    const file = join(work, 'schema-5.backup');
    const LATER_TABLES = ['federated_invalidations', 'push_outbox', 'federated_archive'];
    const LATER_COUNTERS = ['change_seq', 'invalidation_seq'];
    await rewritten(backupFile, file, {
      header: (h) => ({ ...h, schemaVersion: 5 }),
      table: (t) => !LATER_TABLES.includes(t.name),
      dropColumns: { audit: ['on_behalf_of'] },
      row: (t, row) => t.name !== 'counters' || !LATER_COUNTERS.includes(row[0] as string),
    });
    const dir = sameKmsFolder('schema-5');
    const r = runKms(['restore', '--config', configOf(dir), '--from', file]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`migrated from schema version 5 to ${SCHEMA_VERSION}\\b`));
    assert.match(r.stdout, /^audit log intact: /m);
    const { server } = await sameKeysServed(dir, []);
    assert.equal(await server.stop(), 0);
    const v = runKms(['audit', 'verify', '--config', configOf(dir)]);
    assert.equal(v.code, 0, v.stderr);
  });
});
