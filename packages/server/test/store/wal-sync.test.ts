import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { auditRecordQueued, outsideRequest, withRequestDeadline } from '../../src/store/deadline.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { WalSync, type Fsync } from '../../src/store/wal-sync.js';

/** An fsync that completes only when the test says so. */
function heldFsync(): { fsync: Fsync; calls: number; release(err?: NodeJS.ErrnoException): void } {
  const pending: ((err: NodeJS.ErrnoException | null) => void)[] = [];
  const held = {
    calls: 0,
    fsync: ((_fd, done) => {
      held.calls += 1;
      pending.push(done);
    }) as Fsync,
    release(err?: NodeJS.ErrnoException) {
      const done = pending.shift();
      assert.ok(done, 'an fsync is under way');
      done(err ?? null);
    },
  };
  return held;
}

/** Whether `p` settles within a few turns of the event loop (a held fsync never lets it). */
async function settles(p: Promise<unknown>): Promise<boolean> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return settled;
}

const walFile = () => {
  const path = join(mkdtempSync(join(tmpdir(), 'kms-wal-')), 'kms.db-wal');
  writeFileSync(path, 'frames');
  return path;
};

test('syncs asked for while an fsync is under way share the next one, which starts when it ends', async () => {
  const held = heldFsync();
  const wal = new WalSync(walFile(), held.fsync);
  const first = wal.sync();
  const [second, third] = [wal.sync(), wal.sync()];
  assert.equal(held.calls, 1, 'the one under way may have started before their commits: not theirs');
  assert.equal(second, third, 'one fsync for both');
  assert.equal(await settles(second), false);
  held.release();
  await first;
  assert.equal(await settles(second), false, 'the next fsync is still under way');
  assert.equal(held.calls, 2);
  held.release();
  await second;
  await third;
  await wal.close();
});

test('after one failed fsync every sync fails, without trusting a later fsync', async () => {
  const held = heldFsync();
  const wal = new WalSync(walFile(), held.fsync);
  const first = wal.sync();
  const second = wal.sync();
  held.release(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }));
  await assert.rejects(first, (err: { code?: string }) => err.code === 'SQLITE_IOERR_FSYNC');
  await assert.rejects(second, (err: { code?: string }) => err.code === 'SQLITE_IOERR_FSYNC');
  await assert.rejects(wal.sync(), (err: { code?: string }) => err.code === 'SQLITE_IOERR_FSYNC');
  assert.equal(held.calls, 1, 'no fsync is tried after the failure');
  await wal.close();
});

test('no WAL file: nothing is waiting in one', async () => {
  const held = heldFsync();
  const wal = new WalSync(join(mkdtempSync(join(tmpdir(), 'kms-wal-')), 'none.db-wal'), held.fsync);
  await wal.sync();
  assert.equal(held.calls, 0);
  await wal.close();
});

test('a SQLite write resolves once durable, but inside a request before its audit record, which makes it durable, at once', async () => {
  const held = heldFsync();
  const store = new SqliteStore(join(mkdtempSync(join(tmpdir(), 'kms-wal-')), 'kms.db'), { fsync: held.fsync });
  const write = () => store.recordPeerFetch(randomUUID(), 'kms://peer.example', 1);
  try {
    const outside = write();
    assert.equal(await settles(outside), false, 'outside a request: waits for its fsync');
    held.release();
    await outside;

    await withRequestDeadline(60_000, async () => {
      assert.equal(await settles(write()), true, 'before the record: the record makes it durable');
      auditRecordQueued();
      const late = write();
      assert.equal(await settles(late), false, 'after the record was queued: waits for its own fsync');
      held.release();
      await late;
      // The audit batch runs outside the request (group-commit.ts) and always waits.
      const audit = outsideRequest(() => store.appendAudit((head) => [{ seq: head.seq + 1, time: 1, principal: null, clientId: null, method: null, uri: null, status: 200, peer: null, requestId: null, node: 'n', prevHash: head.hash, hash: 'h1' }]));
      assert.equal(await settles(audit), false, 'the audit batch waits for its fsync');
      held.release();
      await audit;
    });
    const inRequestAudit = withRequestDeadline(60_000, () => store.appendAudit((head) => [{ seq: head.seq + 1, time: 2, principal: null, clientId: null, method: null, uri: null, status: 200, peer: null, requestId: null, node: 'n', prevHash: head.hash, hash: 'h2' }]));
    assert.equal(await settles(inRequestAudit), false, 'an audit append waits for its fsync wherever it is called');
    held.release();
    await inRequestAudit;
  } finally {
    await store.close();
  }
});

test('a serving store checkpoints its WAL on a thread of its own, not in a commit', async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'kms-wal-')), 'kms.db');
  const store = new SqliteStore(path, { backgroundCheckpoints: true });
  try {
    const cmkId = randomUUID();
    await store.insertCmk({ id: cmkId, state: 'active', assignedOrgId: null, createdAt: 1, sealed: new Uint8Array(32) });
    const before = statSync(path).size;
    // 10 MB of rows: past the thread's 8 MB, far below the 64 MB at which a commit would checkpoint.
    for (let i = 0; i < 26; i++) {
      await store.insertKeys(Array.from({ length: 100 }, () => ({ id: randomUUID(), userId: 'u', clientId: 'c', createdAt: 1, expiresAt: 2, resourceId: null, bindDate: null, bindSeq: null, cmkId, sealed: new Uint8Array(4096) })));
    }
    // A commit that checkpoints (SQLite's own, at 1000 pages) would have kept the WAL near 4 MB.
    assert.ok(statSync(`${path}-wal`).size > 8_000_000, 'no commit checkpointed');
    // A hang guard, not a speed claim: the thread looks every 100 ms.
    const until = performance.now() + 20_000;
    while (statSync(path).size < before + 7_000_000 && performance.now() < until) await new Promise((r) => setTimeout(r, 50));
    assert.ok(statSync(path).size >= before + 7_000_000, 'the database file holds the rows: the thread checkpointed them');
  } finally {
    await store.close();
  }
});
