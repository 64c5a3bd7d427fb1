/**
 * The storage deadline (src/store/deadline.ts): a store call that hangs, or that fails because
 * storage cannot be reached, becomes STORAGE_UNAVAILABLE (a 503) with the original as `cause`;
 * anything else passes through unchanged, and so do results: the whole Store contract runs on a
 * wrapped SQLite store. The failures are real ones where they can be had in-process (a refused
 * socket, a file locked by another connection); PostgreSQL's own are in test/failures.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { KmsError } from '@openkms/protocol';
import type { KeyRow } from '../../src/model.js';
import { extendRequestDeadline, isStorageUnavailable, outsideRequest, remainingMs, StorageTimeout, withDeadline, withinRequestDeadline, withRequestDeadline } from '../../src/store/deadline.js';
import { GroupCommit } from '../../src/store/group-commit.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { rejectsWith } from '../support/core.js';
import { storeContract } from './contract.js';

const dbPath = () => join(mkdtempSync(join(tmpdir(), 'kms-deadline-')), 'kms.db');

// One file for the suite: every open() is another instance on it, as the contract expects.
const contractFile = dbPath();
storeContract('sqlite behind a storage deadline', async () => withDeadline(new SqliteStore(contractFile), 2000));

const keyRow = (cmkId: string): KeyRow => ({
  id: randomUUID(),
  userId: 'alice@a.example',
  clientId: 'c1',
  createdAt: 1_800_000_000_000,
  expiresAt: 1_800_000_000_000 + 3600_000,
  resourceId: null,
  bindDate: null,
  bindSeq: null,
  cmkId,
  sealed: new Uint8Array([9]),
});

/** A real connection error: what connecting to a port nobody listens on fails with. */
async function refusedConnection(): Promise<Error> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  const socket = connect(port, '127.0.0.1');
  const [err] = (await once(socket, 'error').catch((e: unknown) => [e])) as [Error];
  return err;
}

describe('a storage deadline', () => {
  const stores: SqliteStore[] = [];
  const open = (path = dbPath(), busyTimeoutMs?: number) => {
    const s = new SqliteStore(path, { busyTimeoutMs });
    stores.push(s);
    return s;
  };
  after(() => Promise.all(stores.map((s) => s.close())));

  test('a call that hangs is STORAGE_UNAVAILABLE once the deadline passes, naming the method in its cause', async () => {
    const real = open();
    const hanging = Object.assign(Object.create(real) as SqliteStore, { getKey: () => new Promise(() => {}) });
    const started = performance.now();
    const err = await rejectsWith(withDeadline(hanging, 100).getKey('k'), 'STORAGE_UNAVAILABLE', 503, /^storage unavailable: retry later$/);
    const waited = performance.now() - started;
    assert.ok(err.cause instanceof StorageTimeout);
    assert.equal(err.cause.method, 'getKey');
    assert.match(err.cause.message, /getKey did not answer within 100 ms/);
    // A hang guard, not a speed claim: it did not wait for the call, which never ends.
    assert.ok(waited >= 90 && waited < 5000, `answered after ${waited} ms`);
  });

  test('calls waiting together each time out at their own deadline: a shorter one made after a longer one is not held to it', async () => {
    const real = open();
    const hanging = Object.assign(Object.create(real) as SqliteStore, { getKey: () => new Promise(() => {}), getResource: () => new Promise(() => {}) });
    const ended: string[] = [];
    const long = withDeadline(hanging, 1000).getKey('k').catch((err: KmsError) => ended.push(`long ${(err.cause as StorageTimeout).ms}`));
    const short = withDeadline(hanging, 50).getResource('r').catch((err: KmsError) => ended.push(`short ${(err.cause as StorageTimeout).ms}`));
    // One that answers in between changes neither.
    assert.equal(await withDeadline(real, 1000).getKey(randomUUID()), undefined);
    await Promise.all([long, short]);
    assert.deepEqual(ended, ['short 50', 'long 1000']);
  });

  test('a connection error is STORAGE_UNAVAILABLE with the error itself as cause', async () => {
    const refused = await refusedConnection();
    assert.equal((refused as NodeJS.ErrnoException).code, 'ECONNREFUSED');
    const failing = Object.assign(Object.create(open()) as SqliteStore, { ping: () => Promise.reject(refused) });
    const err = await rejectsWith(withDeadline(failing, 1000).ping(), 'STORAGE_UNAVAILABLE', 503);
    assert.equal(err.cause, refused);
  });

  test('a file another connection holds locked is STORAGE_UNAVAILABLE (SQLITE_BUSY) within the busy timeout', async () => {
    const path = dbPath();
    const store = open(path, 100);
    const cmkId = randomUUID();
    await store.insertCmk({ id: cmkId, state: 'active', assignedOrgId: null, createdAt: 0, sealed: new Uint8Array([1]) });
    const other = new Database(path);
    other.exec('BEGIN EXCLUSIVE');
    try {
      const wrapped = withDeadline(store, 2000);
      const err = await rejectsWith(wrapped.insertKeys([keyRow(cmkId)]), 'STORAGE_UNAVAILABLE', 503);
      assert.match(String((err.cause as { code?: string }).code), /^SQLITE_BUSY/);
      // Reads go on: WAL lets readers past a writer.
      assert.equal((await wrapped.listCmks()).length, 1);
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    // And once the lock is gone, the same store writes again.
    await withDeadline(store, 2000).insertKeys([keyRow(cmkId)]);
  });

  test('once a write waited its whole busy timeout, the next ones fail fast until the lock is gone', async () => {
    // better-sqlite3 waits synchronously: were every queued write to wait the whole timeout, one
    // request would wait for all of them. Bounds here come from the mechanism, not from speed: a
    // write that waits the busy timeout takes at least that long; one that fails fast does not.
    const BUSY_MS = 3000;
    const path = dbPath();
    const store = open(path, BUSY_MS);
    const cmkId = randomUUID();
    await store.insertCmk({ id: cmkId, state: 'active', assignedOrgId: null, createdAt: 0, sealed: new Uint8Array([1]) });
    const other = new Database(path);
    other.exec('BEGIN EXCLUSIVE');
    const timedWrite = async () => {
      const started = performance.now();
      await assert.rejects(store.insertKeys([keyRow(cmkId)]), (err: { code?: string }) => /^SQLITE_BUSY/.test(String(err.code)));
      return performance.now() - started;
    };
    try {
      assert.ok((await timedWrite()) >= BUSY_MS * 0.9, 'the first write waits the whole busy timeout');
      const next = [await timedWrite(), await timedWrite()];
      assert.ok(next.every((ms) => ms < BUSY_MS * 0.9), `the next writes fail fast: ${next.map(Math.round).join(', ')} ms`);
    } finally {
      other.exec('ROLLBACK');
    }
    // The lock gone, a write succeeds, and the whole busy timeout applies again to the next wait.
    await store.insertKeys([keyRow(cmkId)]);
    other.exec('BEGIN EXCLUSIVE');
    try {
      assert.ok((await timedWrite()) >= BUSY_MS * 0.9, 'after a success the whole timeout is waited again');
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
  });

  test('a database that refuses writes is STORAGE_UNAVAILABLE (SQLITE_READONLY) on write', async () => {
    const store = open(dbPath());
    // File modes do not stop root (CI runs as root), so the database is made read-only the way
    // SQLite itself offers: the same SQLITE_READONLY a read-only file or mount gives.
    (store as unknown as { db: { pragma(p: string): unknown } }).db.pragma('query_only = ON');
    const err = await rejectsWith(withDeadline(store, 2000).insertCmk({ id: randomUUID(), state: 'inactive', assignedOrgId: null, createdAt: 0, sealed: new Uint8Array([1]) }), 'STORAGE_UNAVAILABLE', 503);
    assert.match(String((err.cause as { code?: string }).code), /^SQLITE_READONLY/);
  });

  test('a programming error passes through unchanged: a TypeError, a RangeError of the rules, a constraint', async () => {
    const bug = new TypeError("Cannot read properties of undefined (reading 'id')");
    const buggy = Object.assign(Object.create(open()) as SqliteStore, { getKey: () => Promise.reject(bug) });
    await assert.rejects(withDeadline(buggy, 1000).getKey('k'), (err) => err === bug);
    // A method that throws before returning a promise is classified the same way.
    const thrower = Object.assign(Object.create(open()) as SqliteStore, {
      getKey: () => {
        throw bug;
      },
    });
    await assert.rejects(withDeadline(thrower, 1000).getKey('k'), (err) => err === bug);

    const store = withDeadline(open(), 1000);
    await assert.rejects(store.readAudit(-1, 10), (err) => err instanceof RangeError);
    // A foreign key the caller got wrong (no such CMK) is the caller's bug: not a 503.
    await assert.rejects(store.insertKeys([keyRow(randomUUID())]), (err) => !(err instanceof KmsError) && /FOREIGN KEY/i.test((err as Error).message));
  });

  test('results and the store\'s own members pass through; close() has no deadline', async () => {
    const real = open();
    const wrapped = withDeadline(real, 1000);
    assert.equal(wrapped.kind, 'sqlite');
    const cmk = { id: randomUUID(), state: 'active' as const, assignedOrgId: 'org', createdAt: 5, sealed: new Uint8Array([7, 8]) };
    await wrapped.insertCmk(cmk);
    assert.deepEqual(await wrapped.getCmk(cmk.id), await real.getCmk(cmk.id));
    assert.equal(await wrapped.getKey('nope'), undefined);
    assert.equal(wrapped.close, real.close);
  });

  test('the change feed reads have the deadline; the long-lived change signal passes through as it is', async () => {
    const real = open();
    const hanging = Object.assign(Object.create(real) as SqliteStore, { changesAfter: () => new Promise(() => {}), invalidationMark: () => new Promise(() => {}) });
    const wrapped = withDeadline(hanging, 100);
    await rejectsWith(wrapped.changesAfter(0, 10), 'STORAGE_UNAVAILABLE', 503, /^storage unavailable: retry later$/);
    await rejectsWith(wrapped.invalidationMark(), 'STORAGE_UNAVAILABLE', 503, /^storage unavailable: retry later$/);
    assert.equal(withDeadline(real, 100).changeSignal, real.changeSignal);
  });

  test('a deadline that is not a positive number of milliseconds is refused', () => {
    for (const ms of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) assert.throws(() => withDeadline(open(), ms), RangeError);
  });
});

describe('one deadline per request', () => {
  const stores: SqliteStore[] = [];
  after(() => Promise.all(stores.map((s) => s.close())));
  const slow = (ms: number) => {
    const real = new SqliteStore(dbPath());
    stores.push(real);
    // Each call answers after `ms`: two of them fit one store deadline, not one request deadline.
    return Object.assign(Object.create(real) as SqliteStore, { getKey: (id: string) => new Promise((r) => setTimeout(() => r(real.getKey(id)), ms)) });
  };

  test('calls of one request share its deadline: the second of two slow calls fails with what is left, not a new deadline', async () => {
    const store = withDeadline(slow(300), 500);
    assert.equal(await store.getKey('k'), undefined, 'alone, a call fits its deadline');
    const started = performance.now();
    const err = await rejectsWith(
      withRequestDeadline(500, async () => {
        await store.getKey('a');
        await store.getKey('b');
      }),
      'STORAGE_UNAVAILABLE',
      503,
    );
    const waited = performance.now() - started;
    assert.ok(err.cause instanceof StorageTimeout);
    assert.ok(err.cause.ms < 500, `the second call got ${err.cause.ms} ms, what was left`);
    // Generous: about one deadline (500 ms), never two (1000) unless the machine stalls.
    assert.ok(waited >= 450 && waited < 5000, `failed after ${Math.round(waited)} ms`);
  });

  test('nothing left: a call fails at once without starting; outside a request the whole deadline applies', async () => {
    let started = 0;
    const real = new SqliteStore(dbPath());
    stores.push(real);
    const counting = withDeadline(Object.assign(Object.create(real) as SqliteStore, { getKey: async () => void started++ }), 1000);
    await rejectsWith(withRequestDeadline(1, async () => {
      await new Promise((r) => setTimeout(r, 20));
      await counting.getKey('k');
    }), 'STORAGE_UNAVAILABLE', 503);
    assert.equal(started, 0);
    assert.equal(remainingMs(1234), 1234);
    await withRequestDeadline(1, async () => {
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(remainingMs(1000), 0);
      assert.equal(outsideRequest(() => remainingMs(1000)), 1000, 'shared work runs outside the request');
      extendRequestDeadline(10_000);
      assert.ok(remainingMs(60_000) > 9000, 'extended (a request that asks a peer)');
    });
  });

  test('a wait that is not a storage call is bounded by the request, unbounded outside one', async () => {
    const never = () => new Promise<never>(() => {});
    await rejectsWith(withRequestDeadline(50, () => withinRequestDeadline('audit', never)), 'STORAGE_UNAVAILABLE', 503);
    assert.equal(await withinRequestDeadline('audit', async () => 7), 7);
  });

  test('a group commit started by a request does not inherit its deadline: a later batch has the whole deadline', async () => {
    const real = new SqliteStore(dbPath());
    stores.push(real);
    const store = withDeadline(Object.assign(Object.create(real) as SqliteStore, { getKey: (id: string) => new Promise((r) => setTimeout(() => r(real.getKey(id)), 60)) }), 1000);
    const commits = new GroupCommit<string>(async (ids) => {
      for (const id of ids) await store.getKey(id);
    });
    // The request that starts the drain has 30 ms; the batches take 60 ms each and must all succeed.
    const first = withRequestDeadline(30, () => commits.add('a'));
    const second = commits.add('b');
    await Promise.all([first, second]);
  });
});

describe('which failures mean storage is unavailable', () => {
  const withCode = (code: string, message = 'x') => Object.assign(new Error(message), { code });

  test('connection-level errors, PostgreSQL shutdown and resource classes, SQLite locks and I/O: yes', () => {
    for (const code of ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND', '57P01', '57P02', '57P03', '57014', '08006', '08001', '53300', '53100', 'SQLITE_BUSY', 'SQLITE_BUSY_SNAPSHOT', 'SQLITE_LOCKED', 'SQLITE_IOERR_WRITE', 'SQLITE_FULL', 'SQLITE_READONLY', 'SQLITE_CANTOPEN']) {
      assert.equal(isStorageUnavailable(withCode(code)), true, code);
    }
    for (const message of ['Connection terminated unexpectedly', 'Connection terminated due to connection timeout', 'timeout exceeded when trying to connect', 'Query read timeout', 'Client has encountered a connection error and is not queryable']) {
      assert.equal(isStorageUnavailable(new Error(message)), true, message);
    }
    assert.equal(isStorageUnavailable(new AggregateError([withCode('ECONNREFUSED'), withCode('ECONNREFUSED')])), true, 'a dual-stack refusal');
  });

  test('query errors, constraint violations, bugs and non-errors: no', () => {
    for (const code of ['23505', '23503', '42P01', '42601', '22P02', '40P01', 'SQLITE_CONSTRAINT_UNIQUE', 'SQLITE_ERROR', 'SQLITE_CORRUPT', 'ERR_INVALID_ARG_TYPE']) {
      assert.equal(isStorageUnavailable(withCode(code)), false, code);
    }
    assert.equal(isStorageUnavailable(new TypeError('x is not a function')), false);
    // The message is trusted only from errors that carry no code: a coded error is decided by its code.
    assert.equal(isStorageUnavailable(withCode('23505', 'Connection terminated')), false);
    for (const value of [undefined, null, 'ECONNREFUSED', 503]) assert.equal(isStorageUnavailable(value), false, String(value));
  });
});
