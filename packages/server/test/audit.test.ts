import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { AuditLog, GENESIS, auditHash, verifyAudit, type AuditEntry } from '../src/audit/audit.js';
import { SqliteStore } from '../src/store/sqlite.js';

const entry = (i: number): AuditEntry => ({ time: 1_800_000_000_000 + i, principal: `u${i}@a.example`, clientId: 'c', method: 'update', uri: '/ping', status: 200, peer: null, requestId: String(i) });

const key = randomBytes(32);

test('concurrent records are group-committed into one intact chain, across reopen', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'kms-audit-')), 'kms.db');
  let store = new SqliteStore(file);
  let log = await AuditLog.open(store, key);
  await Promise.all(Array.from({ length: 250 }, (_, i) => log.record(entry(i))));
  assert.deepEqual(await verifyAudit(store, key), { ok: true, records: 250 });
  await store.close();
  store = new SqliteStore(file);
  log = await AuditLog.open(store, key);
  await log.record(entry(250));
  await log.flush();
  assert.deepEqual(await verifyAudit(store, key), { ok: true, records: 251 });
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
  const log = await AuditLog.open(store, key);
  for (let i = 0; i < 3; i++) await log.record(entry(i));
  await store.close();
  // A forger with database access rewrites record 2 and recomputes every hash, with a guessed key.
  const db = new Database(file);
  const forged = randomBytes(32);
  let prev = GENESIS;
  for (const row of db.prepare('SELECT * FROM audit ORDER BY seq').all() as Record<string, unknown>[]) {
    const e = { time: Number(row.time), principal: row.seq === 2 ? 'mallory@a.example' : (row.principal as string), clientId: row.client_id as string, method: row.method as string, uri: row.uri as string, status: Number(row.status), peer: null, requestId: row.request_id as string };
    const hash = auditHash(forged, prev, Number(row.seq), e);
    db.prepare('UPDATE audit SET principal = ?, prev_hash = ?, hash = ? WHERE seq = ?').run(e.principal, prev, hash, row.seq);
    prev = hash;
  }
  db.close();
  const reopened = new SqliteStore(file);
  const result = await verifyAudit(reopened, key);
  assert.equal(result.ok, false);
  assert.equal(!result.ok && result.seq, 1);
  assert.equal((await verifyAudit(reopened, forged)).ok, true, 'only the right key tells');
  await reopened.close();
});
