/**
 * A common message captured on the untrusted transport and sent again (docs/decisions.md, "A
 * replayed request is answered once"), on SQLite and PostgreSQL: Alice authorizes Bob, removes him,
 * and an attacker re-sends the raw HTTP body of the authorization, within the retry window and
 * after it (the KMS's clock is moved, nobody sleeps). Bob is never authorized again: the copy
 * within the window gets the first answer, the one after it a 400 naming requestId, and the
 * operation never runs a second time. A read replayed is answered again (it changes nothing).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { KmsClient, KmsError, type FetchLike } from '@openkms/client';
import { joseCodec, peekHeader } from '@openkms/protocol';
import { manualClock, postgresProblem, startDevKms, TEST_POSTGRES_URL, type DevKms } from '@openkms/server/testing';
import { RETRY_WINDOW_MS } from '../packages/server/dist/src/core/retries.js';

const problem = await postgresProblem(TEST_POSTGRES_URL);
const schema = `kms_replay_${randomBytes(6).toString('hex')}`;
const backends: { name: string; db?: string; skip?: string }[] = [
  { name: 'SQLite' },
  problem === undefined
    ? { name: 'PostgreSQL', db: `${TEST_POSTGRES_URL}${TEST_POSTGRES_URL.includes('?') ? '&' : '?'}schema=${schema}` }
    : { name: 'PostgreSQL', skip: `skipped: ${problem}` },
];
if (problem !== undefined && process.env.CI === 'true') test('replays on PostgreSQL', () => assert.fail(`${problem} (required under CI=true)`));

after(async () => {
  if (problem !== undefined) return;
  const client = new pg.Client({ connectionString: TEST_POSTGRES_URL });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await client.end();
});

for (const backend of backends) {
  describe(`a replayed common message (${backend.name})`, { skip: backend.skip }, () => {
    const clock = manualClock();
    let kms: DevKms;
    /** Every POST body the SDK sent: what an attacker on the transport sees. */
    const wire: string[] = [];
    const capturing: FetchLike = async (input, init) => {
      if (init.method === 'POST' && init.body !== undefined) wire.push(init.body);
      const res = await fetch(input, init as RequestInit);
      const text = await res.text();
      return { status: res.status, json: async () => JSON.parse(text) as unknown, text: async () => text };
    };
    let alice: KmsClient;
    let bob: KmsClient;

    /** A message under a channel key, read with the KMS's copy of that key (which the attacker has not). */
    const openOnChannel = async (compact: string): Promise<Record<string, unknown>> => {
      const kid = String(peekHeader(compact)?.kid);
      const channel = await kms.kms.channels.get(kid.split('/').pop()!);
      assert.ok(channel, `${kid} is a live channel`);
      return JSON.parse(new TextDecoder().decode((await joseCodec.decryptChannel(compact, channel.key.reveal())).plaintext)) as Record<string, unknown>;
    };
    const onlyMessage = (body: string) => (JSON.parse(body) as { kmsMessages: string[] }).kmsMessages[0]!;
    /** The attacker: the captured body sent again as it is. */
    const replay = async (body: string): Promise<Record<string, unknown>> => {
      const res = await fetch(`${kms.url}/kms/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      assert.equal(res.status, 200);
      return openOnChannel(onlyMessage(await res.text()));
    };
    /** What the SDK sends during `work`: one POST (the channel exists already). */
    const sentBy = async (work: () => Promise<unknown>): Promise<string> => {
      const from = wire.length;
      await work();
      assert.equal(wire.length - from, 1, 'one request on the wire');
      return wire[from]!;
    };
    const bobReads = (uri: string) => bob.retrieveResource(uri).then(() => true, (err: unknown) => (err instanceof KmsError && err.status === 403 ? false : Promise.reject(err)));

    before(async () => {
      kms = await startDevKms({ now: clock.now, db: backend.db });
      alice = new KmsClient({ url: kms.url, token: () => kms.token('alice@a.example', { ttlSeconds: 7200 }), trustAnchors: kms.trustAnchors, fetch: capturing, now: clock.now });
      bob = new KmsClient({ url: kms.url, token: () => kms.token('bob@a.example', { ttlSeconds: 7200 }), trustAnchors: kms.trustAnchors, now: clock.now });
    });
    after(async () => {
      await alice.close();
      await bob.close();
      await kms.close();
    });

    test('a captured authorization replayed after its removal never authorizes again: the first answer within the retry window, a 400 after it', async () => {
      const { resource } = await alice.createResource();
      let first: unknown;
      const granted = await sentBy(async () => (first = await alice.authorize(resource.uri, ['bob@a.example'])));
      assert.equal(await bobReads(resource.uri), true);
      await alice.deauthorize(resource.uri, 'bob@a.example');
      assert.equal(await bobReads(resource.uri), false);

      clock.advance(RETRY_WINDOW_MS - 60_000);
      const within = await replay(granted);
      assert.equal(within.status, 201);
      assert.deepEqual(within.authorizations, first, 'the first answer, not a new authorization');
      assert.equal(await bobReads(resource.uri), false, 'Bob stays removed');

      clock.advance(60_000);
      const later = await replay(granted);
      assert.equal(later.status, 400);
      assert.match(String(later.reason), /^invalid field requestId: already answered on this channel/);
      assert.equal(later.requestId, (await openOnChannel(onlyMessage(granted))).requestId, 'the refusal names the request it refuses');
      assert.equal(await bobReads(resource.uri), false);

      // Swept: the answer is destroyed, the request still remembered while the channel lives.
      await kms.kms.sweep();
      assert.equal((await replay(granted)).status, 400);
      assert.equal(await bobReads(resource.uri), false);
      assert.deepEqual((await alice.listAuthorizations(resource.uri)).map((a) => a.authId), ['alice@a.example']);
    });

    test('a replayed create keys makes no second key set; a replayed read is answered again', async () => {
      const made = await sentBy(() => alice.createKeys(2));
      clock.advance(RETRY_WINDOW_MS);
      const answer = await replay(made);
      assert.equal(answer.status, 400);
      assert.match(String(answer.reason), /requestId/);
      assert.equal(answer.keys, undefined, 'no key material in the refusal');
      const { resource } = await alice.createResource();
      const read = await sentBy(() => alice.retrieveResource(resource.uri));
      clock.advance(RETRY_WINDOW_MS);
      assert.equal((await replay(read)).status, 200, 'a read changes nothing: answered to the channel again');
    });
  });
}
