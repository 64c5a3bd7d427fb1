import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { LEADER_LEASE_MS } from '../../src/limits.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { storeContract } from './contract.js';
import { electedContract } from './elected.js';

// One file for the suite: every open() is another instance on it, as another process would be.
const file = join(mkdtempSync(join(tmpdir(), 'kms-store-')), 'kms.db');
storeContract('sqlite', async () => new SqliteStore(file));
electedContract('sqlite', async () => new SqliteStore(file));

test('the SQLite lease: taken over once expired, never before; the former holder then no longer leads', async () => {
  const [one, two] = [new SqliteStore(file), new SqliteStore(file)];
  const t = 2_000_000_000_000;
  try {
    const a = await one.leadership('node-a');
    const b = await two.leadership('node-b');
    assert.equal(await a.claim(t), true);
    assert.equal(await b.claim(t + LEADER_LEASE_MS - 1), false, 'not before the lease ends');
    assert.equal(await b.claim(t + LEADER_LEASE_MS), true, 'expired: taken over');
    assert.equal(await a.claim(t + LEADER_LEASE_MS + 1), false, 'the former holder does not lead');
    await a.release();
    assert.equal(await b.claim(t + LEADER_LEASE_MS + 2), true, 'a release by a non-holder changes nothing');
    await b.release();
  } finally {
    await one.close();
    await two.close();
  }
});

test('the database itself refuses a record that forks the audit chain (a writer that skipped the head lock)', async () => {
  const store = new SqliteStore(file);
  await store.appendAudit((head) => [{ seq: head.seq + 1, time: 1, principal: null, clientId: null, method: null, uri: null, status: 200, peer: null, requestId: null, node: 'n', prevHash: head.hash, hash: `h-${randomUUID()}` }]);
  const head = await store.auditHead();
  await store.close();
  const db = new Database(file);
  try {
    const insert = db.prepare(`INSERT INTO audit (seq, time, status, node, prev_hash, hash) VALUES (?, 1, 200, 'intruder', ?, ?)`);
    assert.throws(() => insert.run(head.seq, 'elsewhere', `x-${randomUUID()}`), /UNIQUE constraint failed: audit\.seq/);
    const [last] = db.prepare('SELECT prev_hash FROM audit WHERE seq = ?').all(head.seq) as { prev_hash: string }[];
    assert.throws(() => insert.run(head.seq + 1, last!.prev_hash, `x-${randomUUID()}`), /UNIQUE constraint failed: audit\.prev_hash/, 'a second successor of one record');
  } finally {
    db.close();
  }
});
