/**
 * Every node's caches follow the other nodes' writes within 1 s (issue 8): two `kms serve`
 * processes on one database, on SQLite (the file's change feed, polled) and on PostgreSQL
 * (LISTEN/NOTIFY). A channel cached by node 2 and deleted through node 1 is refused by node 2; an
 * authorization removed through node 1 no longer grants on node 2; on PostgreSQL, node 2's
 * listening connection killed makes it not ready until it listens again, with its caches flushed.
 * Each delay is measured (printed as a diagnostic); the bound asserted is 1 s, polled generously.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { KmsError } from '@openkms/client';
import { onEachBackend, startNodes, within, type Nodes } from '../support/nodes.js';

const TEST = { timeout: 120_000 };
/** What a user is promised; the polls give up only at POLL_LIMIT_MS, so a slow run says by how much it missed. */
const PROMISED_MS = 1000;
const POLL_LIMIT_MS = 10_000;
/** Cached channels are re-read after 5 s whatever the feed says (limits.ts CHANNEL_RECHECK_MS). */
const RECHECK_MS = 5000;

/** Sends one message as is to a node: the status of a refusal under the static key (499: reset, the channel is unknown), else 'channel'. */
async function send(url: string, message: string): Promise<number | 'channel'> {
  const res = await fetch(`${url}/kms/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kmsMessages: [message] }) });
  assert.equal(res.status, 200);
  const [answer] = ((await res.json()) as { kmsMessages: string[] }).kmsMessages;
  const parts = answer!.split('.');
  // Five parts: a JWE under the channel key, so the node still knows the channel. Three: a JWS
  // under the static key: the node could not open the message (its channel is gone).
  if (parts.length === 5) return 'channel';
  return (JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as { status: number }).status;
}

const statusOf = (p: Promise<unknown>) => p.then(
  () => 200,
  (e: unknown) => (e instanceof KmsError ? e.status ?? -1 : -1),
);

const readyz = async (url: string) => (await fetch(`${url}/readyz`)).status;

await onEachBackend('cache coherence between two nodes', (backend) => {
  describe(`two nodes on one ${backend.name} database: caches follow the other node's writes`, () => {
    let cluster: Nodes;
    before(async () => {
      cluster = await startNodes(backend, 2);
    });
    after(() => cluster.stop());

    /** Alice's current channel, used through node 2 (so cached there): one of its messages, replayable. */
    async function channelCachedOnNode2(): Promise<{ message: string; deleteThroughNode1: () => Promise<void> }> {
      let node = 1;
      const alice = cluster.client('alice@nodes.example', () => node);
      await alice.createKeys(1);
      await alice.ping();
      const last = cluster.sent.at(-1)!;
      assert.equal(last.node, 1);
      const message = last.messages[0]!;
      assert.equal(await send(cluster.nodes[1]!.url, message), 'channel', 'node 2 knows the channel');
      return {
        message,
        deleteThroughNode1: async () => {
          node = 0;
          await alice.deleteChannel();
        },
      };
    }

    test('a channel deleted through node 1 is refused by node 2 within 1 s', TEST, async (t) => {
      const delays: number[] = [];
      for (let round = 0; round < 3; round++) {
        const { message, deleteThroughNode1 } = await channelCachedOnNode2();
        await deleteThroughNode1();
        const delay = await within(POLL_LIMIT_MS, 'node 2 refuses the deleted channel', async () => (await send(cluster.nodes[1]!.url, message)) === 499);
        delays.push(delay);
      }
      delays.sort((a, b) => a - b);
      t.diagnostic(`${backend.name}: channel deleted on node 1 → refused on node 2 after ${delays.map((d) => d.toFixed(0)).join(', ')} ms (median ${delays[1]!.toFixed(0)} ms)`);
      assert.ok(delays[1]! < PROMISED_MS, `median ${delays[1]!.toFixed(0)} ms`);
    });

    test('an authorization removed through node 1 no longer grants on node 2 within 1 s', TEST, async (t) => {
      const alice = cluster.client('alice@nodes.example', () => 0);
      const bob = cluster.client('bob@nodes.example', () => 1);
      const [key] = await alice.createKeys(1);
      const { resource } = await alice.createResource({ authIds: ['bob@nodes.example'], keyUris: [key!.uri] });
      assert.equal((await bob.retrieveKey(key!.uri)).jwk.k, key!.jwk.k, 'bob reads it through node 2');
      await alice.deauthorize(resource.uri, 'bob@nodes.example');
      const delay = await within(POLL_LIMIT_MS, 'node 2 refuses bob', async () => (await statusOf(bob.retrieveKey(key!.uri))) === 403);
      t.diagnostic(`${backend.name}: authorization removed on node 1 → refused on node 2 after ${delay.toFixed(0)} ms`);
      assert.ok(delay < PROMISED_MS, `${delay.toFixed(0)} ms`);
    });

    test('a grant made through node 1 is honoured by node 2 at once, its cached refusal decided again on storage', TEST, async () => {
      const alice = cluster.client('alice@nodes.example', () => 0);
      const bob = cluster.client('bob@nodes.example', () => 1);
      const [key] = await alice.createKeys(1);
      const { resource } = await alice.createResource({ authIds: ['carol@nodes.example'], keyUris: [key!.uri] });
      // Twice: the second refusal is decided on what node 2 cached from the first.
      assert.equal(await statusOf(bob.retrieveKey(key!.uri)), 403);
      assert.equal(await statusOf(bob.retrieveKey(key!.uri)), 403);
      await alice.authorize(resource.uri, ['bob@nodes.example']);
      assert.equal((await bob.retrieveKey(key!.uri)).jwk.k, key!.jwk.k, 'at once, whatever node 2 has heard');
    });

    if (backend.name === 'PostgreSQL') {
      test("node 2's listening connection killed: not ready, caches flushed, ready again by itself", TEST, async (t) => {
        const { message } = await channelCachedOnNode2();
        const node2 = cluster.nodes[1]!;
        assert.equal(await readyz(node2.url), 200);
        const listener = `openkms-listen ${node2.pid}`;
        const killed = await backend.sql<{ ok: boolean }>(cluster.dir, 'SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = $1', [listener]);
        const killedAt = performance.now();
        assert.deepEqual(killed, [{ ok: true }], `one connection named ${listener}`);
        await within(POLL_LIMIT_MS, 'node 2 not ready', async () => (await readyz(node2.url)) === 503);
        const notReady = performance.now() - killedAt;
        // Behind the nodes' back (no change recorded): only a flushed cache can notice.
        const id = /"kid":"[^"]*\/ecdhe\/([0-9a-f-]+)"/.exec(Buffer.from(message.split('.')[0]!, 'base64url').toString('utf8'))?.[1];
        assert.ok(id, 'the message names its channel');
        await backend.sql(cluster.dir, 'DELETE FROM channels WHERE id = $1', [id]);
        const back = await within(POLL_LIMIT_MS, 'node 2 ready again', async () => (await readyz(node2.url)) === 200);
        t.diagnostic(`listener killed → /readyz 503 after ${notReady.toFixed(0)} ms, 200 again ${back.toFixed(0)} ms later`);
        const sinceCached = performance.now() - killedAt;
        assert.equal(await send(node2.url, message), 499, 'the cached channel was dropped');
        if (sinceCached >= RECHECK_MS) t.diagnostic(`(${sinceCached.toFixed(0)} ms passed: the re-check backstop alone would have refused it too)`);
        assert.equal(await readyz(cluster.nodes[0]!.url), 200, 'node 1 was not concerned');
        assert.ok(node2.stdout.join('').includes('lost the change notification connection'), 'node 2 said why it was not ready');
        // And it follows node 1's writes again.
        const again = await channelCachedOnNode2();
        await again.deleteThroughNode1();
        await within(POLL_LIMIT_MS, 'node 2 refuses the deleted channel', async () => (await send(node2.url, again.message)) === 499);
      });
    }
  });
});
