/**
 * The Store contract against PostgreSQL (OPERATING.md, "CI"): the server on 127.0.0.1:5432, database
 * `test`, trust auth (KMS_TEST_POSTGRES_URL overrides the URL). Each run works in a fresh schema of
 * its own, dropped at the end. Without a reachable server the suite is skipped and says why, except
 * under CI=true, where that is a failure.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, describe, test } from 'node:test';
import pg from 'pg';
import { postgresProblem, shownUrl, TEST_POSTGRES_URL } from '../../src/testing/harness.js';
import { postgresConnection, PostgresStore } from '../../src/store/postgres.js';
import { migrations } from '../../src/store/migrations.js';
import { storeContract } from './contract.js';
import { electedContract } from './elected.js';

const URL_ = TEST_POSTGRES_URL;
const shown = shownUrl(URL_);
const schema = `kms_test_${randomBytes(6).toString('hex')}`;

const problem = await postgresProblem(URL_);

if (problem !== undefined) {
  if (process.env.CI === 'true') {
    test('PostgreSQL store contract', () => assert.fail(`${problem} (required under CI=true)`));
  } else {
    test('PostgreSQL store contract', { skip: `skipped: ${problem}` }, () => {});
  }
} else {
  // Root-level hook: runs after every suite of this file, the contract's own after (close) included.
  after(async () => {
    const client = new pg.Client({ connectionString: URL_ });
    await client.connect();
    try {
      await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    } finally {
      await client.end();
    }
  });

  storeContract('postgres', () => PostgresStore.open(URL_, { schema }));
  electedContract('postgres', () => PostgresStore.open(URL_, { schema }));

  describe('PostgreSQL specifics', () => {
    test('the lookups by key are index scans, and a page of keysCreatedBy is read in its index order, not sorted', async () => {
      await (await PostgresStore.open(URL_, { schema })).close();
      const client = new pg.Client({ connectionString: URL_ });
      await client.connect();
      try {
        // Whatever the table sizes: which plans the indexes allow, not which the planner prefers now.
        await client.query(`SET search_path = ${schema}; SET enable_seqscan = off; SET enable_bitmapscan = off`);
        const plan = async (sql: string, params: unknown[]) => (await client.query(`EXPLAIN ${sql}`, params)).rows.map((r: Record<string, string>) => r['QUERY PLAN']).join('\n');
        assert.match(await plan('SELECT * FROM keys WHERE id = ANY($1::text[])', [['a', 'b']]), /Index Scan using keys_pkey/);
        assert.match(await plan('SELECT * FROM resources WHERE id = ANY($1::text[])', [['a']]), /Index Scan using resources_pkey/);
        assert.match(await plan('SELECT * FROM authorizations WHERE resource_id = ANY($1::text[]) ORDER BY resource_id, created_at, id COLLATE "C"', [['a']]), /Index Scan using authorizations_by_resource/);
        const byCreator = await plan('SELECT * FROM keys WHERE user_id = $1 AND id > $2 COLLATE "C" ORDER BY id COLLATE "C" LIMIT $3', ['u', '', 10]);
        assert.match(byCreator, /Index Scan using keys_by_creator/);
        assert.doesNotMatch(byCreator, /Sort/, 'the page comes in index order');
      } finally {
        await client.end();
      }
    });

    test('two instances starting together migrate once; the schema parameter selects the schema', async () => {
      const fresh = `${schema}_m`;
      try {
        const stores = await Promise.all([PostgresStore.open(URL_, { schema: fresh }), PostgresStore.open(`${URL_}?schema=${fresh}`)]);
        const client = new pg.Client({ connectionString: URL_ });
        await client.connect();
        try {
          const r = await client.query(`SELECT version FROM ${fresh}.schema_migrations ORDER BY version`);
          assert.deepEqual(r.rows.map((x) => x.version), migrations.map((m) => m.version));
          assert.equal((await client.query(`SELECT value FROM ${fresh}.counters WHERE name = 'bind_seq'`)).rowCount, 1);
        } finally {
          await client.end();
        }
        await Promise.all(stores.map((s) => s.ping()));
        await Promise.all(stores.map((s) => s.close()));
        // Reopening applies nothing and works.
        await (await PostgresStore.open(URL_, { schema: fresh })).close();
      } finally {
        const client = new pg.Client({ connectionString: URL_ });
        await client.connect();
        await client.query(`DROP SCHEMA IF EXISTS ${fresh} CASCADE`);
        await client.end();
      }
    });

    test('leadership: the lock dies with its connection (onLost at once, the other takes over); other schemas elect separately', async () => {
      const [one, two, elsewhere] = await Promise.all([PostgresStore.open(URL_, { schema }), PostgresStore.open(URL_, { schema }), PostgresStore.open(URL_, { schema: `${schema}_l` })]);
      const admin = new pg.Client({ connectionString: URL_ });
      await admin.connect();
      const a = await one.leadership('a');
      const b = await two.leadership('b');
      const c = await elsewhere.leadership('c');
      try {
        assert.equal(await a.claim(0), true);
        assert.equal(await c.claim(0), true, 'another schema has its own leader');
        assert.equal(await b.claim(0), false);
        const lost = new Promise<number>((resolve) => (a.onLost = () => resolve(performance.now())));
        // The leader's own session, found by its application_name and its lock.
        const leaders = await admin.query(
          `SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
           WHERE a.application_name = 'openkms-leader' AND l.objid = hashtext($1)::oid`,
          [schema],
        );
        assert.equal(leaders.rowCount, 1, 'one session holds the lock of this schema');
        const killedAt = performance.now();
        await admin.query('SELECT pg_terminate_backend($1)', [leaders.rows[0].pid]);
        const at = await lost;
        assert.ok(at - killedAt < 5000, `the leader noticed in ${Math.round(at - killedAt)} ms`);
        // The client sees its socket close a moment before the server's backend has exited and
        // released its locks: the other takes over once it has, so it asks again for a while.
        let tookOver = false;
        for (let i = 0; i < 100 && !tookOver; i++) {
          tookOver = await b.claim(0);
          if (!tookOver) await new Promise((resolve) => setTimeout(resolve, 20));
        }
        assert.equal(tookOver, true, 'the lock was released with the session: the other takes over');
        assert.equal(await a.claim(0), false, 'the former leader reconnects and does not lead');
      } finally {
        await Promise.all([a.release(), b.release(), c.release()]);
        await admin.query(`DROP SCHEMA IF EXISTS ${schema}_l CASCADE`);
        await admin.end();
        await Promise.all([one.close(), two.close(), elsewhere.close()]);
      }
    });

    test('races the contract does not pin: creates sharing keys, activations in one scope', async () => {
      const store = await PostgresStore.open(URL_, { schema });
      try {
        const now = 1_900_000_000_000;
        const cmk = randomUUID();
        await store.insertCmk({ id: cmk, state: 'inactive', assignedOrgId: 'pg-races', createdAt: now, sealed: new Uint8Array([1]) });
        const keys = Array.from({ length: 4 }, () => ({
          id: randomUUID(), userId: 'alice@a.example', clientId: 'c1', createdAt: now, expiresAt: now + 3600_000,
          resourceId: null, bindDate: null, bindSeq: null, cmkId: cmk, sealed: new Uint8Array([7]),
        }));
        await store.insertKeys(keys);
        const bind = (id: string) => ({ id, userId: 'alice@a.example', clientId: 'c1', bindDate: now, expiresAt: now + 1000, now });
        // The same keys in different orders: all-or-nothing, one winner, no deadlock.
        const orders = Array.from({ length: 12 }, (_, i) => [...keys].sort(() => (i % 2 ? 1 : -1) * (Math.random() - 0.3)));
        const outcomes = await Promise.all(
          orders.map((order) => store.createResource({ id: randomUUID(), creator: 'alice@a.example', createdAt: now, expiresAt: null }, [], order.map((k) => bind(k.id)))),
        );
        assert.equal(outcomes.filter((o) => o === 'bound').length, 1, outcomes.join());
        assert.equal(outcomes.filter((o) => o === 'already-bound').length, 11);
        const bound = await Promise.all(keys.map((k) => store.getKey(k.id)));
        assert.equal(new Set(bound.map((k) => k!.resourceId)).size, 1, 'all four keys went to the one winner');
        assert.equal(new Set(bound.map((k) => k!.bindSeq)).size, 4, 'distinct bind_seq');

        // Activations in one scope at once: every call succeeds, one CMK stays active.
        const ids = Array.from({ length: 10 }, () => randomUUID());
        await Promise.all(ids.map((id, i) => store.insertCmk({ id, state: 'active', assignedOrgId: 'pg-races', createdAt: now + i, sealed: new Uint8Array([1]) })));
        await Promise.all(ids.map((id) => store.setCmkState(id, 'active')));
        assert.equal((await store.listCmks('pg-races')).filter((c) => c.state === 'active').length, 1);
      } finally {
        await store.close();
      }
    });

    test('a bind waiting on a sweep that destroys its resource is missing, and binds nothing', async () => {
      const store = await PostgresStore.open(URL_, { schema });
      // Another session of the same schema, playing the sweep: it locks the resource as sweep() does.
      const sweeper = new pg.Client({ connectionString: postgresConnection(URL_, schema).connectionString });
      await sweeper.connect();
      try {
        const now = 1_900_000_000_000;
        const cmk = randomUUID();
        await store.insertCmk({ id: cmk, state: 'inactive', assignedOrgId: 'pg-sweep-race', createdAt: now, sealed: new Uint8Array([1]) });
        const key = {
          id: randomUUID(), userId: 'alice@a.example', clientId: 'c1', createdAt: now, expiresAt: now + 3600_000,
          resourceId: null, bindDate: null, bindSeq: null, cmkId: cmk, sealed: new Uint8Array([7]),
        };
        await store.insertKeys([key]);
        const resource = { id: randomUUID(), creator: 'alice@a.example', createdAt: now, expiresAt: now };
        await store.createResource(resource, [], []);
        await sweeper.query('BEGIN');
        await sweeper.query('SELECT id FROM resources WHERE id = $1 FOR UPDATE', [resource.id]);
        const sweeperPid = (await sweeper.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
        const binding = store.bindKey({ id: key.id, userId: key.userId, clientId: key.clientId, bindDate: now, expiresAt: now + 1000, now, resourceId: resource.id });
        // Until the bind waits on the sweeper's lock (it cannot get past it before COMMIT).
        while ((await sweeper.query('SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))', [sweeperPid])).rowCount === 0) {
          await new Promise((r) => setTimeout(r, 5));
        }
        await sweeper.query('DELETE FROM resources WHERE id = $1', [resource.id]);
        await sweeper.query('COMMIT');
        assert.equal(await binding, 'missing');
        assert.equal((await store.getKey(key.id))!.resourceId, null);
      } finally {
        await sweeper.end();
        await store.close();
      }
    });

    test('the database itself refuses a record that forks the audit chain (a writer that skipped the head lock)', async () => {
      const store = await PostgresStore.open(URL_, { schema });
      const intruder = new pg.Client({ connectionString: postgresConnection(URL_, schema).connectionString });
      await intruder.connect();
      try {
        await store.appendAudit((head) => [{ seq: head.seq + 1, time: 1, principal: null, clientId: null, method: null, uri: null, status: 200, peer: null, requestId: null, node: 'n', prevHash: head.hash, hash: `h-${randomUUID()}` }]);
        const head = await store.auditHead();
        const insert = (seq: number, prevHash: string) =>
          intruder.query(`INSERT INTO audit (seq, time, status, node, prev_hash, hash) VALUES ($1, 1, 200, 'intruder', $2, $3)`, [seq, prevHash, `x-${randomUUID()}`]);
        const last = (await intruder.query('SELECT prev_hash FROM audit WHERE seq = $1', [head.seq])).rows[0].prev_hash as string;
        await assert.rejects(insert(head.seq, last), /audit_pkey/, 'a second record in its place');
        const refused = /audit record \d+ does not follow the record before it/;
        await assert.rejects(insert(head.seq + 1, last), refused, 'a second successor of one record');
        await assert.rejects(insert(head.seq + 1, `x-${randomUUID()}`), refused, 'a record after no record');
        await assert.rejects(insert(head.seq + 2, head.hash), refused, 'a record past a gap');
        await insert(head.seq + 1, head.hash);
      } finally {
        await intruder.end();
        await store.close();
      }
    });

    test('a bad schema name is refused before connecting', async () => {
      await assert.rejects(PostgresStore.open(URL_, { schema: 'Robert"; DROP' }), /lower-case SQL identifier/);
    });
  });
}
