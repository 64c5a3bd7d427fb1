/**
 * Federation with a domain served by two nodes on one database (issue 8): an invalidation that
 * reaches node 1 of B is in force on node 2 at once. Node 2 fetches Alice's KRO from A for Bob;
 * A's answer is held on its way back (a relay in front of A, on node 2's side only) while Alice
 * removes Bob and A pushes the invalidation to node 1. The answer node 2 then receives predates the
 * revocation: it must not be stored nor served, though node 2 itself never heard of the
 * invalidation. Real KMSs (in this process, each its own Kms on loopback), the real SDK, on one
 * SQLite file and on one PostgreSQL schema.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { manualClock, postgresProblem, startDevKms, TEST_POSTGRES_URL, type DevKms } from '@openkms/server/testing';
import { A_AUTH, B_AUTH, caPem, closeClients, freePort, peerEntry, statusOf, TEST, userOn, waitFor } from '../support/federation.js';

after(closeClients);

/** A relay to `target` that, while `hold` is set, keeps each answer to /kms/messages until released. */
function relay(target: string): { url: () => string; server: Server; hold: boolean; held: number; release: () => void } {
  const waiting: (() => void)[] = [];
  const r = {
    hold: false,
    held: 0,
    server: createServer(async (req, res) => {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const answer = await fetch(`${target}${req.url}`, {
        method: req.method,
        headers: { 'content-type': req.headers['content-type'] ?? 'application/json' },
        body: req.method === 'POST' ? Buffer.concat(chunks) : undefined,
      });
      const body = Buffer.from(await answer.arrayBuffer());
      if (r.hold && req.url === '/kms/messages') {
        r.held++;
        await new Promise<void>((resolve) => waiting.push(resolve));
      }
      res.writeHead(answer.status, { 'content-type': answer.headers.get('content-type') ?? 'application/json' });
      res.end(body);
    }),
    url: () => `http://127.0.0.1:${(r.server.address() as AddressInfo).port}`,
    release: () => {
      r.hold = false;
      for (const w of waiting.splice(0)) w();
    },
  };
  return r;
}

function domainOfTwoNodes(name: string, db: () => { url?: string; cleanup?: () => Promise<void> }): void {
  describe(`B's two nodes on one ${name} database`, () => {
    const clock = manualClock();
    let A: DevKms;
    let B1: DevKms;
    let B2: DevKms;
    let caA: string;
    let caB: string;
    let toA: ReturnType<typeof relay>;
    const closers: (() => Promise<unknown>)[] = [];

    before(async () => {
      [caA, caB] = await Promise.all([caPem(A_AUTH, 'a.example'), caPem(B_AUTH, 'b.example')]);
      const storage = db();
      if (storage.cleanup) closers.push(storage.cleanup);
      const portB1 = await freePort();
      // A knows B by node 1's endpoint: that is where its invalidations go.
      A = await startDevKms({ authority: A_AUTH, domains: ['a.example'], now: clock.now, config: { peers: [peerEntry(B_AUTH, 'b.example', `http://127.0.0.1:${portB1}`, caB)] } });
      closers.push(() => A.close());
      toA = relay(A.url);
      await new Promise<void>((resolve) => toA.server.listen(0, '127.0.0.1', resolve));
      closers.push(() => new Promise((resolve) => toA.server.close(resolve)));
      const common = { authority: B_AUTH, domains: ['b.example'], now: clock.now, ...(storage.url ? { db: storage.url } : {}) };
      B1 = await startDevKms({ ...common, port: portB1, config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)] } });
      closers.push(() => B1.close());
      // Node 2: the same KMS (folder, keys) on the same database; it reaches A through the relay.
      B2 = await startDevKms({ ...common, ...(storage.url ? {} : { dbPath: B1.dbPath }), config: { peers: [peerEntry(A_AUTH, 'a.example', toA.url(), caA)] } });
      closers.push(() => B2.close());
    });
    after(async () => {
      toA?.release();
      await closeClients();
      for (const close of closers.reverse()) await close();
    });

    test('an invalidation received by node 1 refuses what node 2 fetched before it; node 2 serves the revocation', TEST, async (t) => {
      const alice = userOn(A, 'alice@a.example', caA, clock);
      const bob = userOn(B2, 'bob@b.example', caB, clock);
      // A first KRO: node 2's channel to A is made and used (nothing of it is held later).
      const [k0, k1] = await alice.createKeys(2);
      await alice.createResource({ authIds: ['bob@b.example'], keyUris: [k0!.uri] });
      assert.equal((await bob.retrieveKey(k0!.uri)).jwk.k, k0!.jwk.k);
      const R = (await alice.createResource({ authIds: ['bob@b.example'], keyUris: [k1!.uri] })).resource.uri;

      // Node 2 asks A for R for Bob; A's answer (Bob authorized) waits in the relay.
      toA.hold = true;
      const bobReads = statusOf(bob.retrieveKey(k1!.uri));
      await waitFor(() => toA.held > 0, "A's answer to node 2, held");
      // Meanwhile Alice removes Bob; A pushes the invalidation to node 1.
      const mark = await B1.store.invalidationMark();
      await alice.deauthorize(R, 'bob@b.example');
      const started = performance.now();
      while ((await B1.store.invalidationMark()) === mark) {
        assert.ok(performance.now() - started < 8000, 'node 1 received the invalidation');
        await new Promise((r) => setTimeout(r, 20));
      }
      t.diagnostic(`node 1 received the invalidation ${(performance.now() - started).toFixed(0)} ms after the revocation`);
      toA.release();
      assert.equal(await bobReads, 403, "node 2 neither stored nor served A's overtaken answer");
      const copy = await B2.store.getCopy(R);
      assert.ok(copy === undefined || !JSON.stringify(copy).includes('bob'), 'no copy granting Bob');
      // The clock never moved: without the invalidation, a stored copy would still be fresh.
      assert.equal(await statusOf(bob.retrieveKey(k1!.uri)), 403);
      assert.equal(await statusOf(userOn(B1, 'bob@b.example', caB, clock).retrieveKey(k1!.uri)), 403, 'node 1 agrees');
    });
  });
}

domainOfTwoNodes('SQLite', () => ({}));

const problem = await postgresProblem(TEST_POSTGRES_URL);
if (problem !== undefined) {
  if (process.env.CI === 'true') test("B's two nodes on one PostgreSQL database", () => assert.fail(`${problem} (required under CI=true)`));
  else test("B's two nodes on one PostgreSQL database", { skip: `skipped: ${problem}` }, () => {});
} else {
  const schema = `kms_fed_nodes_${randomBytes(6).toString('hex')}`;
  domainOfTwoNodes('PostgreSQL', () => ({
    url: `${TEST_POSTGRES_URL}${TEST_POSTGRES_URL.includes('?') ? '&' : '?'}schema=${schema}`,
    cleanup: async () => {
      const client = new pg.Client({ connectionString: TEST_POSTGRES_URL });
      await client.connect();
      try {
        await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      } finally {
        await client.end();
      }
    },
  }));
}
