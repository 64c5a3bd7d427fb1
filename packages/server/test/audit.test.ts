import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { AuditLog, GENESIS, auditHash, newNodeId, verifyAudit, type AuditEntry } from '../src/audit/audit.js';
import { migrationSql, migrations } from '../src/store/migrations.js';
import { SqliteStore } from '../src/store/sqlite.js';

const entry = (i: number): AuditEntry => ({ time: 1_800_000_000_000 + i, principal: `u${i}@a.example`, clientId: 'c', method: 'update', uri: '/ping', status: 200, peer: null, requestId: String(i) });

const key = randomBytes(32);

test('concurrent records are group-committed into one intact chain, across reopen', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'kms-audit-')), 'kms.db');
  let store = new SqliteStore(file);
  let log = new AuditLog(store, key);
  const first = log.node;
  await Promise.all(Array.from({ length: 250 }, (_, i) => log.record(entry(i))));
  assert.deepEqual(await verifyAudit(store, key), { ok: true, records: 250, nodes: { [first]: 250 }, unattributed: 0 });
  await store.close();
  store = new SqliteStore(file);
  log = new AuditLog(store, key);
  assert.notEqual(log.node, first, 'a restarted process is another node');
  await log.record(entry(250));
  await log.flush();
  assert.deepEqual(await verifyAudit(store, key), { ok: true, records: 251, nodes: { [first]: 250, [log.node]: 1 }, unattributed: 0 });
  await store.close();

  const db = new Database(file);
  db.prepare('UPDATE audit SET status = 403 WHERE seq = 100').run();
  db.close();
  store = new SqliteStore(file);
  const broken = await verifyAudit(store, key);
  assert.equal(broken.ok, false);
  assert.equal(!broken.ok && broken.seq, 100);
  await store.close();
});

test('a chain recomputed without the key does not verify', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'kms-audit-')), 'kms.db');
  const store = new SqliteStore(file);
  const log = new AuditLog(store, key);
  for (let i = 0; i < 3; i++) await log.record(entry(i));
  await store.close();
  // A forger with database access rewrites record 2 and recomputes every hash, with a guessed key.
  const db = new Database(file);
  const forged = randomBytes(32);
  let prev = GENESIS;
  for (const row of db.prepare('SELECT * FROM audit ORDER BY seq').all() as Record<string, unknown>[]) {
    const e = { time: Number(row.time), principal: row.seq === 2 ? 'mallory@a.example' : (row.principal as string), clientId: row.client_id as string, method: row.method as string, uri: row.uri as string, status: Number(row.status), peer: null, requestId: row.request_id as string, node: row.node as string };
    const hash = auditHash(forged, prev, Number(row.seq), e);
    db.prepare('UPDATE audit SET principal = ?, prev_hash = ?, hash = ? WHERE seq = ?').run(e.principal, prev, hash, row.seq);
    prev = hash;
  }
  db.prepare('UPDATE audit_head SET hash = ? WHERE id = 1').run(prev);
  db.close();
  const reopened = new SqliteStore(file);
  const result = await verifyAudit(reopened, key);
  assert.equal(result.ok, false);
  assert.equal(!result.ok && result.seq, 1);
  assert.equal((await verifyAudit(reopened, forged)).ok, true, 'only the right key tells');
  await reopened.close();
});

/** Writes `n` records as `node`, runs `tamper` on the file as someone with database access would, verifies again. */
async function verifiedAfter(n: number, tamper: string, node?: string) {
  const file = join(mkdtempSync(join(tmpdir(), 'kms-audit-')), 'kms.db');
  const store = new SqliteStore(file);
  const log = new AuditLog(store, key, node);
  for (let i = 0; i < n; i++) await log.record(entry(i));
  await store.close();
  const db = new Database(file);
  db.prepare(tamper).run();
  db.close();
  const reopened = new SqliteStore(file);
  try {
    return await verifyAudit(reopened, key);
  } finally {
    await reopened.close();
  }
}

test('the node is part of what is hashed: a record moved to another node does not verify', async () => {
  assert.deepEqual(await verifiedAfter(3, "UPDATE audit SET node = 'node-2' WHERE seq = 2", 'node-1'), { ok: false, records: 1, seq: 2, problem: 'record 2 was altered' });
});

test('removing the newest records is told: the chain ends before the head the log recorded', async () => {
  assert.deepEqual(await verifiedAfter(4, 'DELETE FROM audit WHERE seq >= 3'), { ok: false, records: 2, seq: 3, problem: "records 3 to 4 are missing (the log's head is record 4)" });
});

test('a chain written before records named their node is migrated: it verifies and new records follow it', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'kms-audit-')), 'kms.db');
  // The database as the release before nodes left it: migrations 1-3, records hashed without a node.
  const db = new Database(file);
  db.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)');
  for (const m of migrations.filter((m) => m.version <= 3)) {
    db.exec(migrationSql(m, 'sqlite'));
    db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, 0);
  }
  let prev = GENESIS;
  for (let seq = 1; seq <= 3; seq++) {
    const e = entry(seq);
    const hash = auditHash(key, prev, seq, e);
    db.prepare(`INSERT INTO audit (seq, time, principal, client_id, method, uri, status, peer, request_id, prev_hash, hash)
                VALUES (@seq, @time, @principal, @clientId, @method, @uri, @status, @peer, @requestId, @prevHash, @hash)`).run({ seq, ...e, prevHash: prev, hash });
    prev = hash;
  }
  db.close();

  const store = new SqliteStore(file);
  assert.deepEqual(await store.auditHead(), { seq: 3, hash: prev }, 'the head is the last old record');
  const log = new AuditLog(store, key, newNodeId());
  await log.record(entry(4));
  await log.record(entry(5));
  assert.deepEqual(await verifyAudit(store, key), { ok: true, records: 5, nodes: { [log.node]: 2 }, unattributed: 3 });
  assert.deepEqual((await store.readAudit(0, 10)).map((r) => r.node), [null, null, null, log.node, log.node]);
  await store.close();
});

test('node ids name the host and the process, and differ between logs of one process', () => {
  const [a, b] = [newNodeId(), newNodeId()];
  assert.match(a, new RegExp(`^[^/]+/${process.pid}/[0-9a-f]{8}$`));
  assert.notEqual(a, b);
});

test('a record with a string the store would not keep as hashed is refused alone; its group is written', async () => {
  const store = new SqliteStore(join(mkdtempSync(join(tmpdir(), 'kms-audit-')), 'kms.db'));
  const log = new AuditLog(store, key);
  const outcomes = await Promise.allSettled([
    log.record(entry(0)),
    log.record({ ...entry(1), uri: '/ping\ud800' }),
    log.record({ ...entry(2), clientId: 'c\u0000' }),
    log.record(entry(3)),
  ]);
  assert.deepEqual(outcomes.map((o) => o.status), ['fulfilled', 'rejected', 'rejected', 'fulfilled']);
  assert.match(String((outcomes[1] as PromiseRejectedResult).reason), /audit\.uri contains a lone UTF-16 surrogate/);
  assert.match(String((outcomes[2] as PromiseRejectedResult).reason), /audit\.clientId contains U\+0000/);
  assert.deepEqual(await verifyAudit(store, key), { ok: true, records: 2, nodes: { [log.node]: 2 }, unattributed: 0 });
  await store.close();
});

test('onBehalfOf is hashed: removing, changing or adding it is detected; a record without one hashes as before', async () => {
  const plain = { ...entry(1), node: 'n' };
  assert.equal(auditHash(key, GENESIS, 1, { ...plain, onBehalfOf: null }), auditHash(key, GENESIS, 1, plain), 'null is the form of older records');
  const acting = { ...plain, onBehalfOf: 'bob@a.example' };
  assert.notEqual(auditHash(key, GENESIS, 1, acting), auditHash(key, GENESIS, 1, plain));
  // The node stands in its place even when null, so a node cannot pass for an onBehalfOf.
  assert.notEqual(auditHash(key, GENESIS, 1, { ...plain, node: null, onBehalfOf: 'n' }), auditHash(key, GENESIS, 1, plain));

  const file = join(mkdtempSync(join(tmpdir(), 'kms-audit-')), 'kms.db');
  const store = new SqliteStore(file);
  const log = new AuditLog(store, key);
  await log.record({ ...entry(1), principal: 'officer@a.example', onBehalfOf: 'bob@a.example' });
  await log.record(entry(2));
  await log.record({ ...entry(3), principal: 'officer@a.example', onBehalfOf: 'bob@a.example' });
  assert.deepEqual((await store.readAudit(0, 10)).map((r) => r.onBehalfOf), ['bob@a.example', null, 'bob@a.example']);
  assert.equal((await verifyAudit(store, key)).ok, true);
  await store.close();
  for (const [seq, value] of [[1, 'carol@a.example'], [1, null], [2, 'bob@a.example']] as const) {
    const db = new Database(file);
    const before = db.prepare('SELECT on_behalf_of FROM audit WHERE seq = ?').get(seq) as { on_behalf_of: string | null };
    db.prepare('UPDATE audit SET on_behalf_of = ? WHERE seq = ?').run(value, seq);
    db.close();
    const reopened = new SqliteStore(file);
    const result = await verifyAudit(reopened, key);
    await reopened.close();
    assert.equal(result.ok, false, `record ${seq} onBehalfOf → ${value}`);
    assert.equal(!result.ok && result.seq, seq);
    const restore = new Database(file);
    restore.prepare('UPDATE audit SET on_behalf_of = ? WHERE seq = ?').run(before.on_behalf_of, seq);
    restore.close();
  }
});
