/**
 * Caches that follow other processes' writes (src/coherence.ts, the channel cache, the keyring),
 * two "nodes" on one database — one SQLite file, one PostgreSQL schema — each with its own store,
 * keyring, channels and change follower. What node 1 writes through the Store is applied by node 2
 * from the change feed; what is changed behind the feed's back (rows deleted by hand) is caught by
 * the re-check backstop, or by the flush when the follower lost its signal or found a gap.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import pg from 'pg';
import { CachedRows } from '../src/cached-rows.js';
import { Channels } from '../src/channels.js';
import { Coherence } from '../src/coherence.js';
import { Keyring, localRootKey } from '../src/keyring/keyring.js';
import { CHANNEL_RECHECK_MS, ROW_CACHE_MS } from '../src/limits.js';
import { silentLogger } from '../src/logger.js';
import { Secret } from '../src/secret.js';
import { PostgresStore } from '../src/store/postgres.js';
import { SqliteStore } from '../src/store/sqlite.js';
import type { Store } from '../src/store/store.js';
import { postgresProblem, TEST_POSTGRES_URL } from '../src/testing/harness.js';

interface Backend {
  open(): Promise<Store>;
  /** SQL on the database directly, behind the stores' back. */
  sql(text: string, params?: unknown[]): Promise<void>;
  /** What a writer's transaction does for the other processes (PostgreSQL: NOTIFY; SQLite: nothing, they poll). */
  notify(): Promise<void>;
  cleanup(): Promise<void>;
}

const rootKey = localRootKey(new Uint8Array(randomBytes(32)), 'a test key');

async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 5000): Promise<number> {
  const started = performance.now();
  while (!(await cond())) {
    if (performance.now() - started > ms) assert.fail(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return performance.now() - started;
}

function coherence(name: string, backend: () => Promise<Backend>): void {
  describe(`caches follow another node's writes: ${name}`, () => {
    let db: Backend;
    let t = Date.now();
    const now = () => t;
    const nodes: { store: Store; keyring: Keyring; channels: Channels; rows: CachedRows; coherence: Coherence }[] = [];

    before(async () => {
      db = await backend();
      for (let i = 0; i < 2; i++) {
        const store = await db.open();
        const keyring = await Keyring.open(rootKey, store, now());
        const channels = new Channels('kms.a.example', store, keyring, now);
        const rows = new CachedRows(store, now);
        const follower = new Coherence(store, channels, rows, keyring, silentLogger);
        follower.start();
        await follower.settled(5000);
        nodes.push({ store, keyring, channels, rows, coherence: follower });
      }
    });
    after(async () => {
      for (const n of nodes) {
        n.coherence.close();
        await n.store.close();
      }
      await db.cleanup();
    });

    const channelOnBoth = async () => {
      const channel = await nodes[0]!.channels.create('alice@a.example', 'c1', new Secret(new Uint8Array(randomBytes(32))), 3600_000);
      assert.ok(await nodes[1]!.channels.get(channel.id), 'node 2 reads (and caches) it');
      return channel;
    };

    test('both follow the feed once started', () => {
      assert.deepEqual(nodes.map((n) => n.coherence.current()), [true, true]);
    });

    test('a channel deleted on node 1 is evicted on node 2', async (c) => {
      const channel = await channelOnBoth();
      await nodes[0]!.channels.delete(channel.id);
      const ms = await until('node 2 drops it', async () => (await nodes[1]!.channels.get(channel.id)) === undefined);
      assert.equal(nodes[1]!.channels.cached(channel.id), undefined, 'not in memory either');
      c.diagnostic(`${name}: evicted on node 2 after ${ms.toFixed(0)} ms`);
    });

    test('an expired channel is not answered from memory; get deletes it', async () => {
      const channel = await nodes[0]!.channels.create('alice@a.example', 'c1', new Secret(new Uint8Array(randomBytes(32))), 1000);
      assert.ok(await nodes[1]!.channels.get(channel.id));
      assert.ok(nodes[1]!.channels.cached(channel.id));
      const before = t;
      t = channel.expiresAt;
      try {
        assert.equal(nodes[1]!.channels.cached(channel.id), undefined);
        assert.equal(await nodes[1]!.channels.get(channel.id), undefined);
        assert.equal(await nodes[0]!.store.getChannel(channel.id), undefined, 'deleted, not left to the sweeper');
      } finally {
        t = before;
      }
    });

    test('a CMK rotated on node 1 seals new material on node 2', async () => {
      const rotated = await nodes[0]!.keyring.createCmk(null, now());
      await until("node 2's active CMK", () => nodes[1]!.keyring.activeCmk().id === rotated.id);
    });

    /** An unbound key of alice's and a resource she is authorized on, written on node 1. */
    const keyAndResource = async () => {
      const store = nodes[0]!.store;
      const cmk = nodes[0]!.keyring.activeCmk();
      const id = randomUUID();
      await store.insertKeys([{ id, userId: 'alice@a.example', clientId: 'c1', createdAt: t, expiresAt: t + 3600_000, resourceId: null, bindDate: null, bindSeq: null, cmkId: cmk.id, sealed: nodes[0]!.keyring.seal(cmk.id, new Uint8Array(32), `key:${id}`) }]);
      const resourceId = randomUUID();
      const alice = { id: randomUUID(), resourceId, authId: 'alice@a.example', roleUri: null, createdAt: t };
      assert.equal(await store.createResource({ id: resourceId, creator: 'alice@a.example', createdAt: t, expiresAt: null }, [alice], []), 'bound');
      // Node 2 has heard of all of it before it caches anything (an eviction after it would re-read).
      const head = await store.lastChange();
      await until('node 2 read the feed', () => nodes[1]!.coherence.applied >= head);
      return { id, resourceId, alice };
    };
    const authIds = async (rows: CachedRows, resourceId: string) => (await rows.listAuthorizations(resourceId)).map((a) => a.authId);

    test('a key bound and authorizations changed on node 1 are read so on node 2', async (c) => {
      const { id, resourceId } = await keyAndResource();
      const rows = nodes[1]!.rows;
      assert.equal((await rows.getKey(id))!.resourceId, null, 'node 2 reads (and caches) it unbound');
      assert.deepEqual(await authIds(rows, resourceId), ['alice@a.example']);
      assert.equal(await nodes[0]!.store.bindKey({ id, resourceId, userId: 'alice@a.example', clientId: 'c1', bindDate: t, expiresAt: t + 3600_000, now: t }), 'bound');
      const ms = await until('node 2 reads it bound', async () => (await rows.getKey(id))!.resourceId === resourceId);
      c.diagnostic(`${name}: bind seen on node 2 after ${ms.toFixed(0)} ms`);
      const bob = { id: randomUUID(), resourceId, authId: 'bob@a.example', roleUri: null, createdAt: t };
      await nodes[0]!.store.addAuthorizations(resourceId, [bob], 100);
      await until('node 2 reads bob authorized', async () => (await authIds(rows, resourceId)).includes('bob@a.example'));
      await nodes[0]!.store.deleteAuthorizations(resourceId, [bob.id]);
      await until('node 2 reads bob no longer authorized', async () => !(await authIds(rows, resourceId)).includes('bob@a.example'));
    });

    test('cached rows: served from memory until re-read after ROW_CACHE_MS, and not trusted without the signal', async () => {
      const { id, resourceId } = await keyAndResource();
      const node2 = nodes[1]!;
      assert.deepEqual(await authIds(node2.rows, resourceId), ['alice@a.example']);
      assert.equal((await node2.rows.getKey(id))!.clientId, 'c1');
      // Behind the feed's back: only the re-read (or a lost signal) shows it.
      await db.sql(`UPDATE keys SET client_id = 'c2' WHERE id = $1`, [id]);
      await db.sql('DELETE FROM authorizations WHERE resource_id = $1', [resourceId]);
      assert.equal((await node2.rows.getKey(id))!.clientId, 'c1', 'cached: no read');
      assert.deepEqual(await authIds(node2.rows, resourceId), ['alice@a.example'], 'cached: no read');
      const before = t;
      t += ROW_CACHE_MS;
      try {
        assert.equal((await node2.rows.getKey(id))!.clientId, 'c2', 're-read');
        assert.deepEqual(await authIds(node2.rows, resourceId), [], 're-read');
      } finally {
        t = before;
      }
      await db.sql(`UPDATE keys SET client_id = 'c3' WHERE id = $1`, [id]);
      node2.coherence.lost(new Error('the listening connection ended'));
      try {
        assert.equal(node2.rows.active, false);
        assert.equal((await node2.rows.getKey(id))!.clientId, 'c3', 'read from storage while not following');
        await db.sql(`UPDATE keys SET client_id = 'c4' WHERE id = $1`, [id]);
        assert.equal((await node2.rows.getKey(id))!.clientId, 'c4', 'and nothing cached meanwhile');
      } finally {
        node2.coherence.listening();
        await until('node 2 current again', () => node2.coherence.current());
      }
      assert.deepEqual(node2.rows.sizes(), { keys: 0, resources: 0, authorizationSets: 0 }, 'following again, it starts empty');
    });

    test('a row deleted behind the feed: served from the cache until the re-check, refused after it', async () => {
      const channel = await channelOnBoth();
      await db.sql('DELETE FROM channels WHERE id = $1', [channel.id]);
      assert.ok(await nodes[1]!.channels.get(channel.id), 'cached: no read');
      assert.ok(nodes[1]!.channels.cached(channel.id), 'memory alone answers until the re-check');
      t += CHANNEL_RECHECK_MS - 1;
      assert.ok(nodes[1]!.channels.cached(channel.id));
      t += 1;
      assert.equal(nodes[1]!.channels.cached(channel.id), undefined, 'memory alone does not answer at the re-check');
      assert.equal(await nodes[1]!.channels.get(channel.id), undefined, 're-checked');
    });

    test('without its signal a node trusts no cached channel and is not current; listening again it resynchronises', async () => {
      const channel = await channelOnBoth();
      const node2 = nodes[1]!;
      node2.coherence.lost(new Error('the listening connection ended'));
      assert.equal(node2.coherence.current(), false);
      assert.equal(node2.channels.cached(channel.id), undefined, 'memory alone answers for nothing while not following');
      await db.sql('DELETE FROM channels WHERE id = $1', [channel.id]);
      assert.equal(await node2.channels.get(channel.id), undefined, 'the cached channel is re-read, not trusted');
      const uncached = await nodes[0]!.channels.create('alice@a.example', 'c1', new Secret(new Uint8Array(randomBytes(32))), 3600_000);
      assert.ok(await node2.channels.get(uncached.id));
      await db.sql('DELETE FROM channels WHERE id = $1', [uncached.id]);
      assert.equal(await node2.channels.get(uncached.id), undefined, 'nothing cached while not listening');
      node2.coherence.listening();
      await until('node 2 current again', () => node2.coherence.current());
      // And it follows node 1 again.
      const next = await channelOnBoth();
      await nodes[0]!.channels.delete(next.id);
      await until('node 2 drops it', async () => (await node2.channels.get(next.id)) === undefined);
    });

    test('a gap in the feed (entries swept before they were read) flushes the caches', async () => {
      const channel = await channelOnBoth();
      await db.sql('DELETE FROM channels WHERE id = $1', [channel.id]);
      // Entries node 2 has not read are gone; a later one stands after the gap.
      await db.sql(`UPDATE counters SET value = value + 5 WHERE name = 'change_seq'`);
      await db.sql(`INSERT INTO changes (seq, kind, subject, at) SELECT value, 'channel', 'unrelated', 1 FROM counters WHERE name = 'change_seq'`);
      await db.notify();
      await until('node 2 flushed', async () => (await nodes[1]!.channels.get(channel.id)) === undefined);
      await until('node 2 current again', () => nodes[1]!.coherence.current());
    });
  });
}

coherence('SQLite', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'kms-coherence-')), 'kms.db');
  return {
    open: async () => new SqliteStore(file),
    async sql(text, params = []) {
      const raw = new Database(file);
      try {
        raw.prepare(text.replace(/\$\d+/g, '?')).run(...params);
      } finally {
        raw.close();
      }
    },
    notify: async () => {},
    cleanup: async () => {},
  };
});

const problem = await postgresProblem(TEST_POSTGRES_URL);
if (problem !== undefined) {
  if (process.env.CI === 'true') test('caches follow another node (PostgreSQL)', () => assert.fail(`${problem} (required under CI=true)`));
  else test('caches follow another node (PostgreSQL)', { skip: `skipped: ${problem}` }, () => {});
} else {
  const schema = `kms_coherence_${randomBytes(6).toString('hex')}`;
  const run = async (text: string, params: unknown[] = [], searchPath = true) => {
    const client = new pg.Client({ connectionString: TEST_POSTGRES_URL });
    await client.connect();
    try {
      if (searchPath) await client.query(`SET search_path TO ${schema}`);
      await client.query(text, params);
    } finally {
      await client.end();
    }
  };
  coherence('PostgreSQL', async () => ({
    open: () => PostgresStore.open(TEST_POSTGRES_URL, { schema }),
    sql: (text, params) => run(text, params),
    notify: () => run(`SELECT pg_notify('openkms_changes', current_schema())`),
    cleanup: () => run(`DROP SCHEMA IF EXISTS ${schema} CASCADE`, [], false),
  }));
}
