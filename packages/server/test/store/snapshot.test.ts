/**
 * Snapshots of the database (store/snapshot.ts) on both backends: every table of the schema is
 * either backed up or named transient; a snapshot does not see what is written while it is read;
 * a database of schema version 3, made by hand as a kms of that time left it (records naming no
 * node, no audit head yet), restores into SQLite and PostgreSQL, where the later migrations run on
 * top (the audit head computed from the restored records, the counters they seed), the chain
 * verifies and binds go on; the two restored copies back up to the same rows; a restore is all or
 * nothing, and refuses a database holding data or already of a newer schema.
 *
 * PostgreSQL: 127.0.0.1:5432, database `test` (KMS_TEST_POSTGRES_URL overrides it), fresh schemas
 * dropped afterwards; those tests are skipped without a server, except under CI=true.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import pg from 'pg';
import { auditHash, GENESIS, verifyAudit } from '../../src/audit/audit.js';
import { postgresProblem, TEST_POSTGRES_URL } from '../../src/testing/harness.js';
import { BackupWriter, readBackup } from '../../src/store/backup-file.js';
import { migrationSql, migrations, SCHEMA_VERSION } from '../../src/store/migrations.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { BACKED_UP, readSnapshot, restoreSnapshot, SnapshotError, TRANSIENT, type RestoreEntry } from '../../src/store/snapshot.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';

const dir = mkdtempSync(join(tmpdir(), 'kms-snapshot-'));
const auditKey = randomBytes(32);
const NOW = 1_800_000_000_000;
let files = 0;
const sqliteUrl = () => `sqlite:${join(dir, `db-${++files}.db`)}`;

const problem = await postgresProblem(TEST_POSTGRES_URL);
const schemas: string[] = [];
const postgresUrl = (): string => {
  const schema = `kms_snap_${randomBytes(6).toString('hex')}`;
  schemas.push(schema);
  return `${TEST_POSTGRES_URL}${TEST_POSTGRES_URL.includes('?') ? '&' : '?'}schema=${schema}`;
};
after(async () => {
  if (problem !== undefined || schemas.length === 0) return;
  const client = new pg.Client({ connectionString: TEST_POSTGRES_URL });
  await client.connect();
  try {
    for (const s of schemas) await client.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
  } finally {
    await client.end();
  }
});
const openStore = (url: string): Promise<Store> => (url.startsWith('sqlite:') ? Promise.resolve(new SqliteStore(url.slice('sqlite:'.length))) : PostgresStore.open(url));

/** Backs `url` up into a file, as `kms backup` does; returns its path. */
async function backUp(url: string): Promise<string> {
  const path = join(dir, `backup-${++files}`);
  await readSnapshot(url, async (s) => {
    const w = BackupWriter.create(path, { schemaVersion: s.schemaVersion, authority: 'kms.a.example', createdAt: new Date(NOW).toISOString(), kmsVersion: 'test' });
    for (const t of s.tables) {
      w.startTable(t);
      for await (const r of s.rows(t)) w.row(r);
    }
    w.finish();
  });
  return path;
}

async function* entriesOf(path: string): AsyncGenerator<RestoreEntry> {
  for await (const e of readBackup(path)) {
    if ('table' in e) yield { table: e.table };
    else if ('row' in e) yield { row: e.row };
  }
}

async function schemaVersionOf(path: string): Promise<number> {
  for await (const e of readBackup(path)) if ('header' in e) return e.header.schemaVersion;
  throw new Error('no header');
}

const restore = async (url: string, path: string) => restoreSnapshot(url, await schemaVersionOf(path), entriesOf(path));

/** A SQLite database of schema version 3, as a kms of that time wrote it: one CMK, a resource with a bound key, audit records naming no node. */
function schema3Database(): { url: string; keyId: string; resourceId: string; cmkId: string; sealed: Buffer } {
  const url = sqliteUrl();
  const db = new Database(url.slice('sqlite:'.length));
  db.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)');
  for (const m of migrations.filter((x) => x.version <= 3)) {
    db.exec(migrationSql(m, 'sqlite'));
    db.prepare('INSERT INTO schema_migrations VALUES (?, ?, ?)').run(m.version, m.name, NOW);
  }
  const cmkId = randomUUID();
  const keyId = randomUUID();
  const resourceId = randomUUID();
  const sealed = randomBytes(60);
  db.prepare("INSERT INTO cmks VALUES (?, 'active', NULL, ?, ?)").run(cmkId, NOW, randomBytes(60));
  db.prepare('INSERT INTO resources VALUES (?, ?, ?, NULL)').run(resourceId, 'alice@a.example', NOW);
  db.prepare('INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)').run(keyId, 'alice@a.example', 'c1', NOW, NOW + 3_600_000, resourceId, NOW, cmkId, sealed);
  db.prepare('INSERT INTO authorizations VALUES (?, ?, ?, NULL, ?)').run(randomUUID(), resourceId, 'bob@a.example', NOW);
  db.prepare("UPDATE counters SET value = 1 WHERE name = 'bind_seq'").run();
  let prev = GENESIS;
  for (let seq = 1; seq <= 3; seq++) {
    const e = { time: NOW + seq, principal: 'alice@a.example', clientId: 'c1', method: 'create', uri: '/keys', status: 201, peer: null, requestId: `r${seq}` };
    const hash = auditHash(auditKey, prev, seq, e);
    db.prepare('INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').run(seq, e.time, e.principal, e.clientId, e.method, e.uri, e.status, e.peer, e.requestId, prev, hash);
    prev = hash;
  }
  db.close();
  return { url, keyId, resourceId, cmkId, sealed };
}

describe('database snapshots', () => {
  const targets: [string, () => string][] = [['SQLite', sqliteUrl]];
  if (problem === undefined) targets.push(['PostgreSQL', postgresUrl]);
  else if (process.env.CI === 'true') test('PostgreSQL targets', () => assert.fail(`${problem} (required under CI=true)`));
  else test('PostgreSQL targets', { skip: `skipped: ${problem}` }, () => {});

  for (const [name, target] of targets) {
    test(`a snapshot does not see what is written while it is read (${name})`, async () => {
      const url = target();
      const store = await openStore(url);
      try {
        await store.insertCmk({ id: 'cmk-1', state: 'active', assignedOrgId: null, createdAt: NOW, sealed: new Uint8Array([1]) });
        const seen = await readSnapshot(url, async (s) => {
          const cmks = [];
          for await (const r of s.rows(s.tables.find((t) => t.name === 'cmks')!)) cmks.push(r);
          // Committed by the KMS after the snapshot began (its first read): not in it.
          await store.insertKeys([{ id: 'late', userId: 'u', clientId: 'c', createdAt: NOW, expiresAt: NOW + 1, resourceId: null, bindDate: null, bindSeq: null, cmkId: 'cmk-1', sealed: new Uint8Array([2]) }]);
          const keys = [];
          for await (const r of s.rows(s.tables.find((t) => t.name === 'keys')!)) keys.push(r);
          return { cmks: cmks.length, keys };
        });
        assert.deepEqual(seen, { cmks: 1, keys: [] }, 'the key written after the snapshot began is not in it');
        assert.ok(await store.getKey('late'), 'the KMS wrote on meanwhile');
      } finally {
        await store.close();
      }
    });
  }

  test('every table the migrations create is either backed up or transient, never both', async () => {
    const url = sqliteUrl();
    await (await openStore(url)).close();
    const db = new Database(url.slice('sqlite:'.length), { readonly: true });
    const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map((t) => t.name);
    db.close();
    assert.deepEqual([...BACKED_UP, ...Object.keys(TRANSIENT)].sort(), tables);
    assert.deepEqual(BACKED_UP.filter((t) => t in TRANSIENT), []);
  });

  test('a restore is all or nothing: a row that breaks a constraint leaves the database empty', async () => {
    const url = sqliteUrl();
    const entries = async function* (): AsyncGenerator<RestoreEntry> {
      const backup = await backUp(schema3Database().url);
      for await (const e of entriesOf(backup)) {
        yield e;
        // A key naming a CMK that is not there: refused by the foreign key, after other rows went in.
        if ('table' in e && e.table.name === 'keys') yield { row: ['k-x', 'u', 'c', NOW, NOW, null, null, null, 'no-such-cmk', new Uint8Array([1])] };
      }
    };
    await assert.rejects(restoreSnapshot(url, 3, entries()), (err: Error) => err instanceof SnapshotError && /cannot restore: .*FOREIGN KEY.*; nothing was written/i.test(err.message));
    const db = new Database(url.slice('sqlite:'.length), { readonly: true });
    assert.deepEqual(db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all(), [], 'not even the schema');
    db.close();
  });

  test('refuses a database that holds data, and one already of a newer schema than the backup', async () => {
    const backup = await backUp(schema3Database().url);
    const full = schema3Database().url;
    await assert.rejects(restore(full, backup), /the database holds data \(tables .*\): restore needs an empty database/);
    const newer = sqliteUrl();
    await (await openStore(newer)).close();
    await assert.rejects(restore(newer, backup), new RegExp(`the database's schema is already at version ${SCHEMA_VERSION}, newer than the backup's \\(3\\): restore into a new database or schema`));
  });

  test(`a schema-3 backup restores into ${targets.map(([n]) => n).join(' and ')}, migrates on, verifies, binds on; both copies back up to the same rows`, async () => {
    const old = schema3Database();
    const backup = await backUp(old.url);
    assert.equal(await schemaVersionOf(backup), 3);
    const bodies: string[] = [];
    for (const [name, target] of targets) {
      const url = target();
      const counts = await restore(url, backup);
      assert.deepEqual(counts, { cmks: 1, resources: 1, keys: 1, authorizations: 1, counters: 1, audit: 3, peer_fetches: 0, federated_copies: 0, federated_keys: 0 }, name);
      const store = await openStore(url); // the later migrations run on top of the restored rows
      try {
        assert.deepEqual(await verifyAudit(store, auditKey), { ok: true, records: 3, nodes: {}, unattributed: 3 }, name);
        assert.equal((await store.auditHead()).seq, 3, `${name}: migration 4 computed the head from the restored records`);
        const key = await store.getKey(old.keyId);
        assert.deepEqual(Buffer.from(key!.sealed), old.sealed, `${name}: sealed bytes as they were`);
        assert.equal(key!.bindSeq, 1);
        assert.equal(await store.lastChange(), 0, `${name}: the counters migration 6 seeds`);
        // bind_seq goes on from the restored counter.
        await store.insertKeys([{ id: 'next', userId: 'alice@a.example', clientId: 'c1', createdAt: NOW, expiresAt: NOW + 3_600_000, resourceId: null, bindDate: null, bindSeq: null, cmkId: old.cmkId, sealed: new Uint8Array([7]) }]);
        const bind = { id: 'next', userId: 'alice@a.example', clientId: 'c1', bindDate: NOW + 10, expiresAt: NOW + 3_600_000, now: NOW + 10 };
        assert.equal(await store.bindKey({ ...bind, resourceId: old.resourceId }), 'bound');
        assert.equal((await store.getKey('next'))!.bindSeq, 2, name);
      } finally {
        await store.close();
      }
      const again = readFileSync(await backUp(url), 'utf8').split('\n');
      bodies.push(again.slice(1, -2).join('\n')); // without the header and the trailer (its digest covers the header)
    }
    for (const body of bodies) assert.equal(body, bodies[0], 'the same rows from either backend');
  });
});
