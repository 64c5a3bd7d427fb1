import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
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
    const [last] = db.prepare('SELECT prev_hash FROM audit WHERE seq = ?').all(head.seq) as { prev_hash: string }[];
    assert.throws(() => insert.run(head.seq, last!.prev_hash, `x-${randomUUID()}`), /UNIQUE constraint failed: audit\.seq/, 'a second record in its place');
    assert.throws(() => insert.run(head.seq + 1, last!.prev_hash, `x-${randomUUID()}`), /audit record does not follow the record before it/, 'a second successor of one record');
    assert.throws(() => insert.run(head.seq + 1, `x-${randomUUID()}`, `x-${randomUUID()}`), /audit record does not follow the record before it/, 'a record after no record');
    assert.throws(() => insert.run(head.seq + 2, head.hash, `x-${randomUUID()}`), /audit record does not follow the record before it/, 'a record past a gap');
    insert.run(head.seq + 1, head.hash, `x-${randomUUID()}`);
  } finally {
    db.close();
  }
});

// What "destroyed" means at rest on SQLite (docs/decisions.md): secure_delete overwrites the row's
// pages and the sweep's checkpoint retires the WAL, so the file no longer holds even the sealed key.
test('a key the sweeper destroys leaves no trace of its sealed bytes in the database file or its WAL', async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'kms-destroyed-')), 'kms.db');
  const raw = () => Buffer.concat([path, `${path}-wal`].filter((f) => existsSync(f)).map((f) => readFileSync(f)));
  const store = new SqliteStore(path);
  const now = 2_000_000_000_000;
  const cmkId = randomUUID();
  const sealed = randomBytes(64);
  try {
    await store.insertCmk({ id: cmkId, state: 'active', assignedOrgId: null, createdAt: now, sealed: new Uint8Array([1, 2, 3]) });
    const id = randomUUID();
    await store.insertKeys([{ id, userId: 'alice@a.example', clientId: 'c1', createdAt: now - 20_000, expiresAt: now - 10_000, resourceId: null, bindDate: null, bindSeq: null, cmkId, sealed }]);
    assert.notEqual(raw().indexOf(sealed), -1, 'the sealed key is in the files before the sweep');
    assert.equal((await store.sweep(now, 1000)).keys, 1);
    assert.equal(await store.getKey(id), undefined);
    assert.equal(raw().indexOf(sealed), -1, 'the destroyed key is still in the files');
  } finally {
    await store.close();
  }
});
