import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { AuditLog, verifyAudit, type AuditEntry } from '../src/audit/audit.js';
import { SqliteStore } from '../src/store/sqlite.js';

const entry = (i: number): AuditEntry => ({ time: 1_800_000_000_000 + i, principal: `u${i}@a.example`, clientId: 'c', method: 'update', uri: '/ping', status: 200, peer: null, requestId: String(i) });

test('concurrent records are group-committed into one intact chain, across reopen', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'kms-audit-')), 'kms.db');
  let store = new SqliteStore(file);
  let log = await AuditLog.open(store);
  await Promise.all(Array.from({ length: 250 }, (_, i) => log.record(entry(i))));
  assert.deepEqual(await verifyAudit(store), { ok: true, records: 250 });
  await store.close();
  store = new SqliteStore(file);
  log = await AuditLog.open(store);
  await log.record(entry(250));
  await log.flush();
  assert.deepEqual(await verifyAudit(store), { ok: true, records: 251 });
  await store.close();

  const db = new Database(file);
  db.prepare('UPDATE audit SET status = 403 WHERE seq = 100').run();
  db.close();
  store = new SqliteStore(file);
  const broken = await verifyAudit(store);
  assert.equal(broken.ok, false);
  assert.equal(!broken.ok && broken.seq, 100);
  await store.close();
});
