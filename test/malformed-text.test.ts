/**
 * Strings no member may hold (PROTOCOL.md §4 "Strings"), against `kms serve` on SQLite and on
 * PostgreSQL: a lone UTF-16 surrogate or U+0000 in requestId, client.clientId or uri, of a common
 * message or of a handshake, and a user's message marked `cty`. Each defect's message once stored a
 * string other than the one it hashed (`kms audit verify` then stopped at it, hiding any later
 * edit), failed PostgreSQL's group-committed audit insert (a 500 for every request of the group,
 * other users' binds included), or made keys their creator could never read. Sent in one HTTP batch
 * with other users' binds and a good handshake: each is answered 400 naming the field (with its
 * requestId unless that is the malformed member), nothing of it is stored, the others succeed, and
 * the audit chain verifies — and still finds a real edit made after them.
 *
 * PostgreSQL: 127.0.0.1:5432, database `test` (KMS_TEST_POSTGRES_URL overrides it), a fresh schema
 * per run; skipped without a server, except under CI=true.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { generateEphemeralKeyPair, joseCodec, type KmsResponse } from '@openkms/protocol';
import { postBatch, TestClient } from '../packages/server/dist/test/support/client.js';
import { onEachBackend, startNodes, type Nodes } from './support/nodes.js';

const TEST = { timeout: 120_000 };
const enc = new TextEncoder();

await onEachBackend('strings no member may hold', (backend) => {
  describe(`strings no member may hold (${backend.name})`, () => {
    let cluster: Nodes;
    let url: string;
    let alice: TestClient;
    let bob: TestClient;

    before(async () => {
      cluster = await startNodes(backend, 1);
      url = cluster.nodes[0]!.url;
      alice = await TestClient.connect(url, cluster.token('alice@nodes.example'));
      bob = await TestClient.connect(url, cluster.token('bob@nodes.example'));
    });
    after(() => cluster?.stop());

    const ok = async (client: TestClient, body: Record<string, unknown>, status: number): Promise<KmsResponse> => {
      const answer = await client.request(body);
      assert.equal(answer.status, status, `${JSON.stringify(body)}: ${answer.reason}`);
      return answer;
    };
    const count = async (table: string): Promise<number> => Number((await backend.sql<{ n: number | string }>(cluster.dir, `SELECT COUNT(*) AS n FROM ${table}`))[0]!.n);

    test('each is a 400 naming the field, nothing of it stored, its batch unaffected, the audit chain intact', TEST, async () => {
      const keyUris = ((await ok(bob, { method: 'create', uri: '/keys', count: 2 }, 201)).keys as { uri: string }[]).map((k) => k.uri);
      const resourceUri = ((await ok(bob, { method: 'create', uri: '/resources' }, 201)).resource as { uri: string }).uri;
      const [keysBefore, channelsBefore] = [await count('keys'), await count('channels')];
      const pair = await generateEphemeralKeyPair();
      const handshake = (requestId: string, clientId: string) => ({ requestId, client: { ...alice.client(), clientId }, method: 'create', uri: '/ecdhe', jwk: pair.publicJwk });

      // [message, who decodes its answer, status, requestId echoed, reason]
      const cases: [Promise<string>, TestClient, number, string | undefined, RegExp | undefined][] = [
        [bob.seal({ requestId: 'bind-1', client: bob.client(), method: 'update', uri: keyUris[0], resourceUri }), bob, 200, 'bind-1', undefined],
        [alice.seal({ requestId: 'nul-uri', client: alice.client(), method: 'create', uri: '/keys\u0000', count: 1 }), alice, 400, 'nul-uri', /invalid field uri: contains U\+0000/],
        [alice.seal({ requestId: 'lone-uri', client: alice.client(), method: 'create', uri: '/keys\ud800', count: 1 }), alice, 400, 'lone-uri', /invalid field uri: contains a lone UTF-16 surrogate/],
        [alice.seal({ requestId: 'lone-client', client: { ...alice.client(), clientId: 'c\ud800' }, method: 'create', uri: '/keys', count: 1 }), alice, 400, 'lone-client', /invalid field client\.clientId: contains a lone/],
        [alice.seal({ requestId: 'nul-client', client: { ...alice.client(), clientId: 'c\u0000' }, method: 'create', uri: '/keys', count: 1 }), alice, 400, 'nul-client', /invalid field client\.clientId: contains U\+0000/],
        // A requestId that is itself malformed cannot be echoed: the answer carries none.
        [alice.seal({ requestId: 'r\ud800', client: alice.client(), method: 'create', uri: '/keys', count: 1 }), alice, 400, undefined, /invalid field requestId: contains a lone/],
        [joseCodec.encryptChannel(enc.encode(JSON.stringify({ requestId: 'cty', client: alice.client(), method: 'update', uri: '/ping' })), alice.channelKey, alice.channelUri, 'JOSE'), alice, 400, 'cty', /nested messages/],
        [alice.sealStatic(handshake('hs-nul', 'c\u0000')), alice, 400, 'hs-nul', /invalid field client\.clientId: contains U\+0000/],
        [alice.sealStatic(handshake('hs-lone', '\udfff')), alice, 400, 'hs-lone', /invalid field client\.clientId: contains a lone/],
        [alice.sealStatic(handshake('hs-ok', alice.clientId)), alice, 201, 'hs-ok', undefined],
        [bob.seal({ requestId: 'bind-2', client: bob.client(), method: 'update', uri: keyUris[1], resourceUri }), bob, 200, 'bind-2', undefined],
      ];
      const answers = await postBatch(url, await Promise.all(cases.map((c) => c[0])));
      for (const [i, [, client, status, requestId, reason]] of cases.entries()) {
        const answer = await client.decode(answers[i]!);
        assert.equal(answer.status, status, `case ${i}: ${answer.reason}`);
        assert.equal(answer.requestId, requestId, `case ${i}: requestId`);
        if (reason) assert.match(answer.reason!, reason, `case ${i}`);
      }

      assert.equal(await count('keys'), keysBefore, 'no key created by a refused request');
      assert.equal(await count('channels'), channelsBefore + 1, 'only the good handshake made a channel');
      const bound = await backend.sql<{ resource_id: string | null }>(cluster.dir, 'SELECT resource_id FROM keys WHERE resource_id IS NOT NULL');
      assert.equal(bound.length, 2, "bob's binds in the same batch were made");
      assert.deepEqual(await backend.sql(cluster.dir, 'SELECT seq FROM audit WHERE status = 500'), [], 'no 500');
      // The messages of one batch run concurrently: their records are in any order.
      const refused = await backend.sql<{ request_id: string | null }>(cluster.dir, 'SELECT request_id FROM audit WHERE status = 400');
      assert.deepEqual(refused.map((r) => String(r.request_id)).sort(), ['cty', 'hs-lone', 'hs-nul', 'lone-client', 'lone-uri', 'nul-client', 'nul-uri', 'null'], 'each refusal audited, as answered');

      const verify = cluster.verifyAudit();
      assert.equal(verify.code, 0, verify.stderr);
      assert.match(verify.stdout, /^audit log intact: \d+ records\n/);

      // A real edit after the refused requests is found, at its own record.
      const [edited] = await backend.sql<{ seq: number | string }>(cluster.dir, "SELECT seq FROM audit WHERE request_id = 'bind-2'");
      await backend.sql(cluster.dir, 'UPDATE audit SET status = 403 WHERE seq = $1', [Number(edited!.seq)]);
      const broken = cluster.verifyAudit();
      assert.equal(broken.code, 1);
      assert.match(broken.stderr, new RegExp(`^kms: audit log broken at record ${Number(edited!.seq)}: record ${Number(edited!.seq)} was altered`));
    });
  });
});
