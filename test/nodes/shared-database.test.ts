/**
 * Two `kms serve` processes on ONE database behave as one KMS (issue 8, "stateless nodes"), on
 * SQLite (one file) and on PostgreSQL (one schema): the SDK's requests go to the two nodes in
 * turn, as behind a round-robin load balancer, so a channel agreed with one node carries the next
 * request to the other (channels are stored, not only held by the node that made them). Every
 * request of both nodes is answered without a 500, both extend the one audit chain at once (their
 * group-committed batches interleave under the database lock), each record names its node, and
 * `kms audit verify` finds the chain intact with both nodes' records.
 *
 * Both backends through test/support/nodes.ts (PostgreSQL: a fresh schema, skipped without a
 * server except under CI=true).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { KmsClient, type FetchLike } from '@openkms/client';
import { runKms, serve, type Served } from '../support/cli.js';
import { onEachBackend, type Backend } from '../support/nodes.js';

const AUTHORITY = 'kms.nodes.example';
const TEST = { timeout: 120_000 };

interface AuditLine {
  seq: number;
  node: string | null;
  principal: string | null;
  method: string | null;
  uri: string | null;
  status: number;
}

const AUDIT_SQL = 'SELECT seq, node, principal, method, uri, status FROM audit ORDER BY seq';

function sharedDatabase(backend: Backend): void {
  describe(`two kms serve processes on one ${backend.name} database`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'kms-nodes-'));
    const config = join(dir, 'kms.json');
    after(() => rmSync(dir, { recursive: true, force: true }));

    test('requests alternate between the nodes: a channel of one serves on the other, no 500, one audit chain naming both', TEST, async () => {
      const { dbArgs } = backend;
      const auditLines = async () => (await backend.sql<Record<string, unknown>>(dir, AUDIT_SQL)).map((r) => ({ ...r, seq: Number(r.seq), status: Number(r.status) }) as AuditLine);
      const init = runKms(['init', '--dir', dir, '--authority', AUTHORITY, '--domain', 'nodes.example']);
      assert.equal(init.code, 0, init.stderr);
      // One after the other: the first creates the database's first CMK, the second finds it.
      const nodes: Served[] = [];
      const clients: KmsClient[] = [];
      try {
        nodes.push(await serve(['--config', config, '--port', '0', ...dbArgs]));
        nodes.push(await serve(['--config', config, '--port', '0', ...dbArgs]));

        // The load balancer: each HTTP request goes to the next node in turn.
        let turn = 0;
        const served = [0, 0];
        const statuses: number[] = [];
        const balanced: FetchLike = async (input, init) => {
          const i = turn++ % nodes.length;
          served[i]! += 1;
          const res = await fetch(input.replace(nodes[0]!.url, nodes[i]!.url), init);
          statuses.push(res.status);
          return res;
        };
        const token = (user: string) => {
          const r = runKms(['token', '--config', config, '--user', user]);
          assert.equal(r.code, 0, r.stderr);
          return r.stdout.trim();
        };
        const client = (user: string) => {
          const c = new KmsClient({
            url: nodes[0]!.url,
            authority: AUTHORITY,
            token: token(user),
            trustAnchors: [readFileSync(join(dir, 'ca.pem'), 'utf8')],
            fetch: balanced,
            debounceMs: 0,
          });
          clients.push(c);
          return c;
        };

        // One user, one request at a time: every request lands on the other node than the one before.
        const alice = client('alice@nodes.example');
        const keys = await alice.createKeys(2);
        const { resource } = await alice.createResource({ authIds: ['bob@nodes.example'], keyUris: keys.map((k) => k.uri) });
        const bob = client('bob@nodes.example');
        for (const key of keys) assert.equal((await bob.retrieveKey(key.uri)).jwk.k, key.jwk.k);
        assert.deepEqual((await bob.retrieveResourceKeys(resource.uri)).map((k) => k.uri).sort(), keys.map((k) => k.uri).sort());

        // Several users at once: both nodes append to the chain concurrently.
        const users = Array.from({ length: 6 }, (_, i) => client(`user${i}@nodes.example`));
        await Promise.all(
          users.map(async (u, i) => {
            for (let round = 0; round < 4; round++) {
              const [k] = await u.createKeys(1);
              const { resource: r } = await u.createResource({ authIds: [`user${(i + 1) % users.length}@nodes.example`], keyUris: [k!.uri] });
              assert.equal((await users[(i + 1) % users.length]!.retrieveKey(k!.uri)).resourceUri, r.uri);
            }
          }),
        );

        assert.ok(served[0]! > 10 && served[1]! > 10, `both nodes served: ${served.join(', ')}`);
        assert.deepEqual([...new Set(statuses)], [200], 'every HTTP request answered 200');

        await Promise.all(clients.map((c) => c.close()));
        clients.length = 0;
        const codes = await Promise.all(nodes.splice(0).map((n) => n.stop()));
        assert.deepEqual(codes, [0, 0]);

        const lines = await auditLines();
        assert.deepEqual(lines.map((l) => l.seq), lines.map((_, i) => i + 1), 'one chain, no gap');
        assert.deepEqual(lines.filter((l) => l.status >= 500), [], 'no request of either node failed');
        const byNode = new Map<string, number>();
        for (const l of lines) byNode.set(l.node!, (byNode.get(l.node!) ?? 0) + 1);
        assert.equal(byNode.size, 2, `two nodes wrote the chain: ${[...byNode.keys()].join(', ')}`);
        // Alice agreed one channel, with one node, and the other node answered her next request on it.
        const ofAlice = lines.filter((l) => l.principal === 'alice@nodes.example');
        const handshakes = ofAlice.filter((l) => l.method === 'create' && /\/ecdhe$/.test(l.uri ?? ''));
        assert.equal(handshakes.length, 1, JSON.stringify(ofAlice));
        const next = ofAlice[ofAlice.indexOf(handshakes[0]!) + 1]!;
        assert.notEqual(next.node, handshakes[0]!.node, `the request after the handshake went to the other node: ${JSON.stringify(ofAlice)}`);
        assert.ok(next.status >= 200 && next.status < 300, JSON.stringify(next));

        const verify = runKms(['audit', 'verify', '--config', config, ...dbArgs]);
        assert.equal(verify.code, 0, verify.stderr);
        assert.match(verify.stdout, new RegExp(`^audit log intact: ${lines.length} records\n`));
        for (const [node, n] of byNode) assert.ok(verify.stdout.includes(`  ${n} by node ${node}\n`), verify.stdout);
      } finally {
        await Promise.all(clients.map((c) => c.close().catch(() => {})));
        await Promise.all(nodes.map((n) => n.stop()));
      }
    });
  });
}

await onEachBackend('two kms serve processes on one database', sharedDatabase);
