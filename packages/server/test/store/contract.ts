/**
 * The Store contract: every backend runs this same suite. It pins the atomic behaviours callers
 * rely on — one winner among concurrent binds, all-or-nothing resource creation, idempotent
 * authorizations, one active CMK per scope, the audit chain, the peers' replay window, the sweeper,
 * federated copies — and that both backends refuse the same malformed inputs. What several KMS
 * processes share through one database (the audit chain, the replay window) is checked with two
 * instances of the store on the same database. The decisions themselves are unit-tested in
 * rules.test.ts; here they are checked as each backend applies them.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { AuditLog, auditHash, verifyAudit, type AuditEntry } from '../../src/audit/audit.js';
import type { ChangeListener } from '../../src/store/change-signal.js';
import { type AnswerClaim, type AuditHead, type AuditRow, type AuthorizationRow, type ChannelRow, COPY_INVALIDATED, type KeyRow, type RememberedAnswer, type ResourceRow } from '../../src/model.js';
import type { Store } from '../../src/store/store.js';

/** `open`: a new instance of the store on the suite's one database, at every call. */
export function storeContract(name: string, open: () => Promise<Store>): void {
  describe(`Store contract: ${name}`, () => {
    let store: Store;
    /** A second instance on the same database: another KMS process. */
    let other: Store;
    const cmkId = randomUUID();
    const now = 1_800_000_000_000;
    /** Every audit record of the suite is hashed with it, so the shared chain verifies at any time. */
    const auditKey = randomBytes(32);

    before(async () => {
      store = await open();
      other = await open();
      await store.insertCmk({ id: cmkId, state: 'active', assignedOrgId: null, createdAt: now, sealed: new Uint8Array([1, 2, 3]) });
    });
    after(async () => {
      await other.close();
      await store.close();
    });

    const key = (over: Partial<KeyRow> = {}): KeyRow => ({
      id: randomUUID(),
      userId: 'alice@a.example',
      clientId: 'c1',
      createdAt: now,
      expiresAt: now + 3600_000,
      resourceId: null,
      bindDate: null,
      bindSeq: null,
      cmkId,
      sealed: new Uint8Array([9, 9, 9]),
      ...over,
    });
    const resource = (over: Partial<ResourceRow> = {}): ResourceRow => ({ id: randomUUID(), creator: 'alice@a.example', createdAt: now, expiresAt: null, ...over });
    const auth = (resourceId: string, authId: string | null): AuthorizationRow => ({ id: randomUUID(), resourceId, authId, roleUri: null, createdAt: now });
    const bind = (id: string, at = now) => ({ id, userId: 'alice@a.example', clientId: 'c1', bindDate: at, expiresAt: at + 1000, now: at });

    test('keys round-trip with their sealed bytes', async () => {
      const k = key();
      await store.insertKeys([k]);
      const got = await store.getKey(k.id);
      assert.deepEqual({ ...got, sealed: Buffer.from(got!.sealed) }, { ...k, sealed: Buffer.from(k.sealed) });
      assert.equal(await store.getKey(randomUUID()), undefined);
    });

    test('exactly one of concurrent binds wins', async () => {
      const k = key();
      await store.insertKeys([k]);
      const resources = Array.from({ length: 20 }, () => resource());
      for (const r of resources) await store.createResource(r, [auth(r.id, 'alice@a.example')], []);
      const outcomes = await Promise.all(resources.map((r) => store.bindKey({ ...bind(k.id), resourceId: r.id })));
      assert.equal(outcomes.filter((o) => o === 'bound').length, 1);
      assert.equal(outcomes.filter((o) => o === 'already-bound').length, 19);
    });

    test('bind checks owner, client, expiry', async () => {
      const r = resource();
      await store.createResource(r, [], []);
      const k = key();
      await store.insertKeys([k]);
      assert.equal(await store.bindKey({ ...bind(k.id), userId: 'bob@a.example', resourceId: r.id }), 'not-owner');
      assert.equal(await store.bindKey({ ...bind(k.id), clientId: 'c2', resourceId: r.id }), 'not-owner');
      assert.equal(await store.bindKey({ ...bind(k.id, now + 3600_000), resourceId: r.id }), 'expired');
      assert.equal(await store.bindKey({ ...bind(randomUUID()), resourceId: r.id }), 'missing');
      assert.equal((await store.getKey(k.id))!.resourceId, null, 'no refusal bound it');
      assert.equal(await store.bindKey({ ...bind(k.id), resourceId: r.id }), 'bound');
      assert.equal(await store.bindKey({ ...bind(k.id), userId: 'bob@a.example', resourceId: r.id }), 'not-owner', 'bound or not is the creator\'s to learn');
      assert.equal(await store.bindKey({ ...bind(k.id), resourceId: r.id }), 'already-bound', 'even to the same resource');
    });

    test('a bind into a resource that does not exist (swept since the caller looked) is missing', async () => {
      const k = key();
      await store.insertKeys([k]);
      assert.equal(await store.bindKey({ ...bind(k.id), resourceId: randomUUID() }), 'missing');
      assert.equal((await store.getKey(k.id))!.resourceId, null);
    });

    test('a bind writes bindDate, the new expiry and the bind order; one create binds in the order given', async () => {
      const r = resource();
      const [a, b, c] = [key(), key(), key()];
      await store.insertKeys([a, b, c]);
      assert.equal(await store.createResource(r, [], [bind(b.id, now + 5), bind(a.id, now + 5)]), 'bound');
      assert.equal(await store.bindKey({ ...bind(c.id, now + 5), resourceId: r.id }), 'bound');
      const [ga, gb, gc] = await Promise.all([a, b, c].map((k) => store.getKey(k.id)));
      assert.deepEqual([gb, ga, gc].map((k) => [k!.resourceId, k!.bindDate, k!.expiresAt]), Array(3).fill([r.id, now + 5, now + 1005]));
      assert.ok(gb!.bindSeq! < ga!.bindSeq! && ga!.bindSeq! < gc!.bindSeq!, 'b, then a, then c');
      assert.deepEqual((await store.listResourceKeys(r.id)).map((k) => k.id), [c.id, a.id, b.id]);
    });

    test('createResource refuses a key named twice, and writes nothing', async () => {
      const k = key();
      await store.insertKeys([k]);
      const r = resource();
      assert.equal(await store.createResource(r, [], [bind(k.id), bind(k.id)]), 'already-bound');
      assert.equal(await store.getResource(r.id), undefined);
      assert.equal((await store.getKey(k.id))!.resourceId, null);
      const other = resource();
      assert.equal(await store.createResource(other, [], [bind(k.id), { ...bind(k.id), clientId: 'c2' }]), 'not-owner', 'ownership before the bound state');
    });

    test('createResource is all or nothing', async () => {
      const free = key();
      const taken = key();
      await store.insertKeys([free, taken]);
      const first = resource();
      assert.equal(await store.createResource(first, [], [bind(taken.id)]), 'bound');
      const second = resource();
      assert.equal(await store.createResource(second, [auth(second.id, 'bob@a.example')], [bind(free.id), bind(taken.id)]), 'already-bound');
      assert.equal(await store.getResource(second.id), undefined);
      assert.deepEqual(await store.listAuthorizations(second.id), []);
      assert.equal((await store.getKey(free.id))!.resourceId, null, 'the free key stayed unbound');
    });

    test('resource keys come newest first, ties by bind order, with filters', async () => {
      const r = resource();
      await store.createResource(r, [], []);
      const ks = Array.from({ length: 5 }, () => key());
      await store.insertKeys(ks);
      const times = [now + 10, now + 20, now + 20, now + 30, now + 40];
      for (let i = 0; i < ks.length; i++) assert.equal(await store.bindKey({ ...bind(ks[i]!.id, times[i]), now, resourceId: r.id }), 'bound');
      const ids = (rows: KeyRow[]) => rows.map((k) => ks.findIndex((x) => x.id === k.id));
      assert.deepEqual(ids(await store.listResourceKeys(r.id)), [4, 3, 2, 1, 0]);
      assert.deepEqual(ids(await store.listResourceKeys(r.id, { limit: 2 })), [4, 3]);
      assert.deepEqual(ids(await store.listResourceKeys(r.id, { boundAfter: now + 20 })), [4, 3, 2, 1]);
      assert.deepEqual(ids(await store.listResourceKeys(r.id, { boundBefore: now + 30 })), [2, 1, 0]);
      assert.deepEqual(ids(await store.listResourceKeys(r.id, { boundAfter: now + 20, boundBefore: now + 40, limit: 2 })), [3, 2]);
    });

    test('authorizations: idempotent per authId, anonymous ones never merged, delete scoped to the resource', async () => {
      const r = resource();
      const other = resource();
      await store.createResource(r, [auth(r.id, 'alice@a.example')], []);
      await store.createResource(other, [], []);
      const added = await store.addAuthorizations(r.id, [auth(r.id, 'alice@a.example'), auth(r.id, 'bob@a.example'), auth(r.id, null), auth(r.id, null)], 4);
      assert.notEqual(added, 'over-limit', 'alice is already there: only three rows are added');
      const list = await store.listAuthorizations(r.id);
      assert.equal(list.length, 4, 'alice once, bob, two anonymous');
      assert.equal((added as AuthorizationRow[])[0]!.id, list.find((a) => a.authId === 'alice@a.example')!.id, 'the existing row is returned');
      assert.equal(await store.addAuthorizations(r.id, [auth(r.id, 'bob@a.example'), auth(r.id, 'carol@a.example')], 4), 'over-limit');
      assert.equal((await store.listAuthorizations(r.id)).length, 4, 'nothing written over the limit');
      const bob = list.find((a) => a.authId === 'bob@a.example')!;
      assert.deepEqual(await store.deleteAuthorizations(other.id, [bob.id]), [], 'not through another resource');
      assert.equal((await store.deleteAuthorizations(r.id, [bob.id, randomUUID()])).length, 1);
      assert.equal(await store.getAuthorization(bob.id), undefined);
    });

    test('authorizations: an authId twice in one add is one row; the limit counts what is written', async () => {
      const r = resource();
      await store.createResource(r, [auth(r.id, 'alice@a.example')], []);
      const added = await store.addAuthorizations(r.id, [auth(r.id, 'bob@a.example'), auth(r.id, 'bob@a.example'), auth(r.id, 'alice@a.example')], 2);
      assert.notEqual(added, 'over-limit', 'one row written: two in all');
      const [bob, bobAgain, alice] = added as AuthorizationRow[];
      assert.equal(bobAgain!.id, bob!.id);
      assert.deepEqual((await store.listAuthorizations(r.id)).map((a) => a.id).sort(), [alice!.id, bob!.id].sort());
      assert.equal(await store.addAuthorizations(r.id, [auth(r.id, null)], 2), 'over-limit');
      assert.deepEqual(await store.addAuthorizations(r.id, [auth(r.id, 'bob@a.example')], 2), [bob], 'nothing new: within the limit');
    });

    test('resourcesWithAuthId: the resources naming exactly that authId, in id order', async () => {
      const kro = `kms://a.example/resources/${randomUUID()}`;
      const ids = Array.from({ length: 4 }, () => randomUUID());
      for (const id of ids) await store.createResource(resource({ id }), [auth(id, kro)], []);
      const unrelated = resource();
      await store.createResource(unrelated, [auth(unrelated.id, `${kro}x`)], []);
      assert.deepEqual(await store.resourcesWithAuthId(kro), [...ids].sort());
      assert.deepEqual(await store.resourcesWithAuthId(randomUUID()), []);
    });

    test('the authorization limit holds under concurrent adds', async () => {
      const r = resource();
      await store.createResource(r, [auth(r.id, 'alice@a.example')], []);
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => store.addAuthorizations(r.id, [auth(r.id, `u${i}@a.example`)], 5)));
      assert.equal(results.filter((x) => x !== 'over-limit').length, 4);
      assert.equal((await store.listAuthorizations(r.id)).length, 5);
    });

    test('one active CMK per scope', async () => {
      const a = randomUUID();
      const b = randomUUID();
      await store.insertCmk({ id: a, state: 'active', assignedOrgId: 'org1', createdAt: now, sealed: new Uint8Array([1]) });
      await store.insertCmk({ id: b, state: 'active', assignedOrgId: 'org1', createdAt: now + 1, sealed: new Uint8Array([1]) });
      assert.equal((await store.getCmk(a))!.state, 'inactive');
      assert.equal((await store.getCmk(cmkId))!.state, 'active', 'other scopes untouched');
      await store.setCmkState(a, 'active');
      assert.equal((await store.getCmk(b))!.state, 'inactive');
      assert.deepEqual((await store.listCmks('org1')).map((c) => c.id).sort(), [a, b].sort());
    });

    test('channels', async () => {
      const id = randomUUID();
      await store.insertChannel({ id, owner: 'alice@a.example', clientId: 'c', createdAt: now, expiresAt: now + 10, cmkId, sealed: new Uint8Array([5]) });
      assert.equal((await store.getChannel(id))!.owner, 'alice@a.example');
      assert.equal(await store.deleteChannel(id), true);
      assert.equal(await store.getChannel(id), undefined);
      assert.equal(await store.deleteChannel(id), false);
    });

    const auditEntry = (i: number): AuditEntry => ({ time: now + i, principal: 'alice@a.example', clientId: 'c', method: 'update', uri: '/ping', status: 200, peer: null, requestId: `r${i}` });
    /** Builds rows after `head` as AuditLog does, naming `node`. */
    const chained = (head: AuditHead, entries: AuditEntry[], node: string | null): AuditRow[] => {
      let { seq, hash } = head;
      return entries.map((e) => {
        const prevHash = hash;
        seq += 1;
        hash = auditHash(auditKey, prevHash, seq, { ...e, node });
        return { ...e, seq, node, prevHash, hash };
      });
    };

    test('audit records keep onBehalfOf, null when there is none', async () => {
      const start = await store.auditHead();
      await store.appendAudit((head) => chained(head, [{ ...auditEntry(1), principal: 'officer@a.example', onBehalfOf: 'bob@a.example' }, auditEntry(2)], 'node-a'));
      const written = await store.readAudit(start.seq, 10);
      assert.deepEqual(written.map((r) => [r.principal, r.onBehalfOf]), [['officer@a.example', 'bob@a.example'], ['alice@a.example', null]]);
      assert.equal(written[0]!.hash, auditHash(auditKey, start.hash, start.seq + 1, written[0]!), 'read back as it was hashed');
    });

    test('the audit chain: a batch follows the head read in its transaction; one that does not is refused whole', async () => {
      const start = await store.auditHead();
      const heads: AuditHead[] = [];
      await store.appendAudit((head) => {
        heads.push(head);
        return chained(head, [auditEntry(1), auditEntry(2)], 'node-a');
      });
      assert.deepEqual(heads.at(-1), start, 'linked to the stored head');
      const written = await store.readAudit(start.seq, 10);
      assert.deepEqual(written.map((r) => [r.seq, r.node, r.requestId]), [[start.seq + 1, 'node-a', 'r1'], [start.seq + 2, 'node-a', 'r2']]);
      assert.deepEqual(await other.auditHead(), { seq: start.seq + 2, hash: written[1]!.hash }, 'the other instance sees the moved head');

      const head = await store.auditHead();
      const refused = [
        (h: AuditHead) => chained({ ...h, seq: h.seq + 1 }, [auditEntry(3)], 'node-a'), // a gap
        (h: AuditHead) => chained({ ...h, seq: h.seq - 1 }, [auditEntry(3)], 'node-a'), // a seq taken
        (h: AuditHead) => chained({ ...h, hash: start.hash }, [auditEntry(3)], 'node-a'), // a fork
        (h: AuditHead) => [...chained(h, [auditEntry(3)], 'node-a'), ...chained(h, [auditEntry(4)], 'node-a')], // a fork inside the batch
      ];
      for (const link of refused) await assert.rejects(other.appendAudit(link), /does not follow/);
      assert.deepEqual(await store.auditHead(), head, 'nothing written');
      assert.equal((await store.readAudit(head.seq, 10)).length, 0);
      await other.appendAudit(() => []);
      assert.deepEqual(await store.auditHead(), head, 'an empty batch moves nothing');
      const verified = await verifyAudit(store, auditKey);
      assert.ok(verified.ok, JSON.stringify(verified));
    });

    test('two instances on one database extend one audit chain: no fork, no lost record', async () => {
      const start = await store.auditHead();
      const logs = [new AuditLog(store, auditKey, `n1-${randomUUID()}`), new AuditLog(other, auditKey, `n2-${randomUUID()}`)];
      // Both logs batch at once, each after a head the other keeps moving.
      await Promise.all(Array.from({ length: 200 }, (_, i) => logs[i % 2]!.record(auditEntry(i))));
      await Promise.all(logs.map((l) => l.flush()));
      const result = await verifyAudit(other, auditKey);
      assert.ok(result.ok, JSON.stringify(result));
      assert.equal(result.records, start.seq + 200);
      assert.deepEqual(logs.map((l) => result.nodes[l.node]), [100, 100]);
      const rows = await store.readAudit(start.seq, 1000);
      assert.deepEqual(rows.map((r) => r.requestId).sort(), Array.from({ length: 200 }, (_, i) => `r${i}`).sort(), 'every record once');
    });

    test('audit records without a node (written before nodes were recorded) keep verifying', async () => {
      await store.appendAudit((head) => chained(head, [auditEntry(1)], null));
      const result = await verifyAudit(other, auditKey);
      assert.ok(result.ok && result.unattributed === 1, JSON.stringify(result));
      const [last] = await store.readAudit((await store.auditHead()).seq - 1, 1);
      assert.equal(last!.node, null);
    });

    test("the peers' replay window: a requestId accepted once across instances, per peer, again once its window ended", async () => {
      const window = 600_000;
      const at = (t: number, requestId = `string:${randomUUID()}`, peer = `p-${randomUUID()}.example`) => ({ peer, requestId, now: t, expiresAt: t + window });
      const first = at(now);
      assert.equal(await store.acceptPeerRequest(first, 10), 'accepted');
      assert.equal(await other.acceptPeerRequest({ ...first, now: now + 1 }, 10), 'replayed', 'by another node too');
      assert.equal(await store.acceptPeerRequest({ ...first, now: first.expiresAt - 1, expiresAt: first.expiresAt - 1 + window }, 10), 'replayed', 'to the end of its window');
      assert.equal(await other.acceptPeerRequest({ ...first, peer: `p-${randomUUID()}.example` }, 10), 'accepted', 'the same requestId from another peer');
      // The same new request to both instances at once: exactly one is accepted.
      const same = at(now);
      const outcomes = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? other : store).acceptPeerRequest(same, 100)));
      assert.deepEqual(outcomes.sort(), ['accepted', ...Array(9).fill('replayed')]);
      // After its window it is a new request (its row, not yet swept, is reused).
      const later = now + window + 60_000;
      assert.equal(await other.acceptPeerRequest({ ...first, now: later, expiresAt: later + window }, 10), 'accepted');
    });

    test("the peers' replay window is bounded per peer: refused past the limit, across instances, until the window moves on", async () => {
      const window = 600_000;
      const peer = `flood-${randomUUID()}.example`;
      const req = (requestId: string, t = now) => ({ peer, requestId, now: t, expiresAt: t + window });
      const outcomes = await Promise.all(Array.from({ length: 8 }, (_, i) => (i % 2 ? other : store).acceptPeerRequest(req(`number:${i}`), 5)));
      assert.deepEqual(outcomes.filter((o) => o === 'accepted').length, 5, outcomes.join());
      assert.deepEqual(outcomes.filter((o) => o === 'over-limit').length, 3);
      const acceptedId = `number:${outcomes.indexOf('accepted')}`;
      assert.equal(await store.acceptPeerRequest(req(acceptedId), 5), 'replayed', 'a replay is told as one, full or not');
      assert.equal(await other.acceptPeerRequest({ ...req('number:99'), peer: `calm-${randomUUID()}.example` }, 5), 'accepted', 'other peers unaffected');
      // Once the slice the five were counted in has left the window, the peer is accepted again.
      const later = now + window + 60_000;
      assert.equal(await store.acceptPeerRequest(req('number:100', later), 5), 'accepted');
      const refusedId = `number:${outcomes.indexOf('over-limit')}`;
      assert.equal(await other.acceptPeerRequest(req(refusedId, later), 5), 'accepted', 'a refused request was not remembered');
    });

    test("sweep destroys remembered peer requests whose window ended, and only those", async () => {
      const peer = `sweep-${randomUUID()}.example`;
      const t = now + 50_000_000;
      const req = (requestId: string, at: number) => ({ peer, requestId, now: at, expiresAt: at + 600_000 });
      assert.equal(await store.acceptPeerRequest(req('string:old', t - 700_000), 10), 'accepted');
      assert.equal(await store.acceptPeerRequest(req('string:live', t - 100_000), 10), 'accepted');
      const result = await other.sweep(t, 0);
      assert.ok(result.peerRequests >= 1, JSON.stringify(result));
      assert.equal(await store.acceptPeerRequest(req('string:live', t), 10), 'replayed', 'kept: its window has not ended');
      assert.equal(await store.acceptPeerRequest(req('string:old', t), 10), 'accepted');
    });

    // ---- remembered answers (core/retries.ts) ----
    const claimOf = (over: Partial<AnswerClaim> = {}): AnswerClaim => ({
      channelId: randomUUID(),
      requestId: 'string:r1',
      digest: 'a'.repeat(64),
      claimant: randomUUID(),
      now,
      leaseUntil: now + 10_000,
      answerUntil: over.expiresAt ?? now + 600_000,
      expiresAt: now + 600_000,
      ...over,
    });
    const answerOf = (): RememberedAnswer => ({ cmkId, sealed: new Uint8Array(randomBytes(48)) });
    const keyOf = (c: AnswerClaim) => ({ channelId: c.channelId, requestId: c.requestId, claimant: c.claimant });

    test('remembered answers: claimed once, answered to every copy on any instance, refused for another request', async () => {
      const first = claimOf();
      assert.deepEqual(await store.claimAnswer(first), { state: 'claimed' });
      const copy = { ...first, claimant: randomUUID() };
      assert.deepEqual(await other.claimAnswer(copy), { state: 'running' }, 'a copy under a live lease waits');
      assert.deepEqual(await other.claimAnswer({ ...copy, digest: 'b'.repeat(64) }), { state: 'mismatch' });
      assert.equal(await other.rememberAnswer(keyOf(copy), answerOf()), false, 'only the claimant remembers');
      const answer = answerOf();
      assert.equal(await store.rememberAnswer(keyOf(first), answer), true);
      assert.equal(await store.rememberAnswer(keyOf(first), answerOf()), false, 'the first answer stays');
      const got = await other.claimAnswer(copy);
      assert.equal(got.state, 'answered');
      assert.deepEqual(got.state === 'answered' && { cmkId: got.answer.cmkId, sealed: Buffer.from(got.answer.sealed) }, { cmkId, sealed: Buffer.from(answer.sealed) });
      assert.deepEqual(await other.claimAnswer({ ...copy, digest: 'b'.repeat(64) }), { state: 'mismatch' }, 'never the answer of another request');
      assert.deepEqual(await other.claimAnswer({ ...copy, now: first.leaseUntil + 1, leaseUntil: first.leaseUntil + 2 }), got, 'answered stays answered past the lease');
      // Keyed by channel and requestId: the number 1 and the string "1" are other requests.
      assert.deepEqual(await store.claimAnswer({ ...first, requestId: 'number:1', claimant: randomUUID() }), { state: 'claimed' });
      assert.deepEqual(await store.claimAnswer({ ...first, channelId: randomUUID(), claimant: randomUUID() }), { state: 'claimed' });
    });

    test('remembered answers: of concurrent copies on two instances exactly one is claimed', async () => {
      const base = claimOf();
      const outcomes = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 ? other : store).claimAnswer({ ...base, claimant: randomUUID() })));
      assert.equal(outcomes.filter((o) => o.state === 'claimed').length, 1, JSON.stringify(outcomes));
      assert.equal(outcomes.filter((o) => o.state === 'running').length, 11);
    });

    test('remembered answers: a claim whose lease ended is taken over; a released one is claimed again', async () => {
      const dead = claimOf();
      assert.deepEqual(await store.claimAnswer(dead), { state: 'claimed' });
      const after = { ...dead, claimant: randomUUID(), now: dead.leaseUntil, leaseUntil: dead.leaseUntil + 10_000 };
      assert.deepEqual(await other.claimAnswer(after), { state: 'claimed' }, 'the lease ended: the node that claimed it is gone');
      assert.equal(await store.rememberAnswer(keyOf(dead), answerOf()), false, 'the first claimant lost its claim');
      await store.releaseAnswer(keyOf(dead)); // not its claim any more: nothing happens
      assert.deepEqual(await store.claimAnswer({ ...after, claimant: randomUUID() }), { state: 'running' });
      await other.releaseAnswer(keyOf(after));
      assert.deepEqual(await store.claimAnswer({ ...after, claimant: randomUUID() }), { state: 'claimed' }, 'a failed request runs again');
      // A release never removes an answer.
      const answered = claimOf();
      await store.claimAnswer(answered);
      await store.rememberAnswer(keyOf(answered), answerOf());
      await store.releaseAnswer(keyOf(answered));
      assert.equal((await other.claimAnswer({ ...answered, claimant: randomUUID() })).state, 'answered');
    });

    test('remembered answers: forgotten after their window, and swept', async () => {
      const t = now + 60_000_000;
      const old = claimOf({ now: t - 700_000, leaseUntil: t - 690_000, expiresAt: t - 100_000 });
      const live = claimOf({ now: t - 10_000, leaseUntil: t - 5_000, expiresAt: t + 590_000 });
      for (const c of [old, live]) {
        await store.claimAnswer(c);
        await store.rememberAnswer(keyOf(c), answerOf());
      }
      const result = await other.sweep(t, 0);
      assert.ok(result.answers >= 1, JSON.stringify(result));
      const again = (c: AnswerClaim) => ({ ...c, claimant: randomUUID(), now: t, leaseUntil: t + 10_000, answerUntil: t + 600_000, expiresAt: t + 600_000 });
      assert.equal((await store.claimAnswer(again(live))).state, 'answered', 'within its window: kept');
      assert.deepEqual(await store.claimAnswer(again(old)), { state: 'claimed' }, 'past its window: a new request');
      // Expired but not yet swept: treated as gone.
      const stale = claimOf({ now: t - 20_000, leaseUntil: t - 15_000, expiresAt: t - 1 });
      await store.claimAnswer(stale);
      await store.rememberAnswer(keyOf(stale), answerOf());
      assert.deepEqual(await other.claimAnswer(again(stale)), { state: 'claimed' });
    });

    test('remembered answers: past the answer\'s window a copy is spent, until the request is forgotten; swept answers are destroyed', async () => {
      const t = now + 70_000_000;
      // Claimed at t - 700 s: the answer was kept for 600 s, the request until its channel ends at t + 3000 s.
      const c = claimOf({ now: t - 700_000, leaseUntil: t - 690_000, answerUntil: t - 100_000, expiresAt: t + 3_000_000 });
      await store.claimAnswer(c);
      assert.equal(await store.rememberAnswer(keyOf(c), answerOf()), true);
      const at = (when: number) => ({ ...c, claimant: randomUUID(), now: when, leaseUntil: when + 10_000, answerUntil: when + 600_000, expiresAt: when + 3_600_000 });
      assert.equal((await other.claimAnswer(at(t - 200_000))).state, 'answered', 'within the window: the first answer');
      assert.deepEqual(await other.claimAnswer(at(t)), { state: 'spent' }, 'past it: refused, not run again');
      assert.deepEqual(await other.claimAnswer({ ...at(t), digest: 'b'.repeat(64) }), { state: 'mismatch' });
      const result = await other.sweep(t, 0);
      assert.ok(result.answers >= 1, JSON.stringify(result));
      assert.deepEqual(await store.claimAnswer(at(t + 1)), { state: 'spent' }, 'the sweep destroyed the answer, not the memory of the request');
      assert.equal(await store.rememberAnswer(keyOf(c), answerOf()), false, 'nothing answers it again');
      await store.releaseAnswer(keyOf(c)); // an answered request is never given up
      assert.deepEqual(await store.claimAnswer(at(t + 2)), { state: 'spent' });
      await other.sweep(t + 3_000_000, 0);
      assert.deepEqual(await store.claimAnswer(at(t + 3_000_000)), { state: 'claimed' }, 'forgotten once its channel ended');
    });

    test('remembered answers: both backends refuse the same malformed claims, writing nothing', async () => {
      const bad: Partial<AnswerClaim>[] = [{ now: 1.5 }, { leaseUntil: now }, { expiresAt: now + 1 }, { digest: 'xyz' }, { digest: 'A'.repeat(64) }, { leaseUntil: Number.NaN }];
      for (const over of bad) {
        const c = claimOf(over);
        await assert.rejects(store.claimAnswer(c), RangeError, JSON.stringify(over));
        assert.deepEqual(await other.claimAnswer(claimOf({ channelId: c.channelId })), { state: 'claimed' }, 'nothing was written');
      }
    });

    test('peer fetches: one row per resource and peer, the latest time kept; peers listed in order', async () => {
      const r = randomUUID();
      await store.recordPeerFetch(r, 'kms://c.example', now);
      await store.recordPeerFetch(r, 'kms://b.example', now);
      await store.recordPeerFetch(r, 'kms://c.example', now + 1);
      assert.deepEqual(await store.peersThatFetched(r), ['kms://b.example', 'kms://c.example']);
      assert.deepEqual(await store.peersThatFetched(randomUUID()), []);
    });

    test('copies: replaced whole with their key URIs; invalidated only by their authority, each counted once', async () => {
      const uri = `kms://b.example/resources/${randomUUID()}`;
      const copy = { resourceUri: uri, authority: 'b.example', fetchedAt: now, cmkId, sealed: new Uint8Array([4, 2]) };
      assert.equal(await store.putCopy(copy, [`${uri}/k1`, `${uri}/k2`], await store.invalidationMark()), 'stored');
      const got = await store.getCopy(uri);
      assert.deepEqual({ ...got, sealed: Buffer.from(got!.sealed) }, { ...copy, sealed: Buffer.from(copy.sealed) });
      assert.equal(await store.copyOfKey(`${uri}/k1`), uri);
      await store.putCopy({ ...copy, fetchedAt: now + 1 }, [`${uri}/k2`, `${uri}/k3`, `${uri}/k3`], await store.invalidationMark());
      assert.equal(await store.copyOfKey(`${uri}/k1`), undefined, 'a key the new copy does not hold');
      assert.equal(await store.copyOfKey(`${uri}/k3`), uri);
      assert.equal((await store.getCopy(uri))!.fetchedAt, now + 1);
      assert.equal(await store.invalidateCopies('c.example', [uri]), 0, 'not by another authority');
      assert.equal((await store.getCopy(uri))!.fetchedAt, now + 1);
      assert.equal(await store.invalidateCopies('b.example', [uri, uri, `kms://b.example/resources/${randomUUID()}`]), 1);
      assert.equal((await store.getCopy(uri))!.fetchedAt, COPY_INVALIDATED, 'kept, marked stale');
      assert.equal(await store.invalidateCopies('b.example', []), 0);
      assert.equal(await store.getCopy(`kms://b.example/resources/${randomUUID()}`), undefined);
    });

    test('the archive: copies stored with `archive` are numbered versions, kept when the copy is replaced, read newest first and in pages', async () => {
      const uris = [randomUUID(), randomUUID()].sort().map((id) => `kms://b.example/resources/${id}`);
      const [u1, u2] = uris as [string, string];
      const copy = (resourceUri: string, sealed: number[], fetchedAt = now) => ({ resourceUri, authority: 'b.example', fetchedAt, cmkId, sealed: new Uint8Array(sealed) });
      const mark = await store.invalidationMark();
      await store.putCopy(copy(u1, [1]), [], mark, true);
      await store.putCopy(copy(u1, [2]), [], mark, false); // the same version again: not archived
      // Same millisecond, from two processes: two versions all the same.
      await Promise.all([store.putCopy(copy(u1, [3]), [], mark, true), other.putCopy(copy(u1, [4]), [], mark, true)]);
      await store.putCopy(copy(u2, [5], now + 7), [], mark, true);
      const versions = await other.archivedCopies(u1, 10);
      assert.deepEqual(versions.map((v) => v.version), [3, 2, 1]);
      assert.deepEqual(Buffer.from(versions.at(-1)!.sealed), Buffer.from([1]));
      assert.deepEqual(new Set(versions.slice(0, 2).map((v) => Buffer.from(v.sealed)[0])), new Set([3, 4]));
      assert.equal(versions[0]!.fetchedAt, now);
      assert.equal((await store.archivedCopies(u1, 1)).length, 1, 'at most limit');
      await store.invalidateCopies('b.example', [u1]);
      assert.equal((await store.archivedCopies(u1, 10)).length, 3, 'an invalidation leaves the archive alone');
      // Pages: every version once, in (resourceUri, version) order, whatever else the archive holds.
      const seen: string[] = [];
      let after: { resourceUri: string; version: number } | undefined;
      for (;;) {
        const page = await store.archivePage(after, 2);
        if (page.length === 0) break;
        for (const v of page) if (uris.includes(v.resourceUri)) seen.push(`${v.resourceUri === u1 ? 'u1' : 'u2'}/${v.version}`);
        after = page.at(-1)!;
      }
      assert.deepEqual(seen, ['u1/1', 'u1/2', 'u1/3', 'u2/1']);
      await assert.rejects(store.archivedCopies('bad\u0000uri', 1), RangeError);
      await assert.rejects(store.archivePage({ resourceUri: u1, version: 1.5 }, 1), RangeError);
    });

    test('keysCreatedBy: a user’s keys, bound or not, in id order, in pages', async () => {
      const creator = `creator-${randomUUID()}@a.example`;
      const mine = [key({ userId: creator }), key({ userId: creator }), key({ userId: creator })];
      await store.insertKeys([...mine, key()]);
      const r = resource();
      await store.createResource(r, [auth(r.id, creator)], [{ ...bind(mine[0]!.id), userId: creator }]);
      const ids = mine.map((k) => k.id).sort();
      const first = await store.keysCreatedBy(creator, '', 2);
      assert.deepEqual(first.map((k) => k.id), ids.slice(0, 2));
      assert.deepEqual((await store.keysCreatedBy(creator, first[1]!.id, 2)).map((k) => k.id), ids.slice(2));
      assert.ok((await store.keysCreatedBy(creator, '', 10)).some((k) => k.resourceId === r.id), 'bound keys too');
      await assert.rejects(store.keysCreatedBy('bad\ud800', '', 1), RangeError);
    });

    test('an invalidation received by another process after a fetch began refuses its copy; one before does not', async () => {
      const uri = `kms://b.example/resources/${randomUUID()}`;
      const copy = { resourceUri: uri, authority: 'b.example', fetchedAt: now, cmkId, sealed: new Uint8Array([4, 2]) };
      const before = await store.invalidationMark();
      assert.equal(await other.invalidateCopies('b.example', [uri]), 0, 'no copy yet, but remembered');
      const after = await store.invalidationMark();
      assert.equal(after, before + 1, 'the mark moved, seen by the other process');
      assert.equal(await store.putCopy(copy, [`${uri}/k1`], before), 'invalidated');
      assert.equal(await store.getCopy(uri), undefined, 'nothing written');
      assert.equal(await store.copyOfKey(`${uri}/k1`), undefined);
      assert.equal(await store.putCopy(copy, [`${uri}/k1`], after), 'stored', 'a fetch begun after the invalidation');
      // Racing: every pair of (invalidation, copy from the earlier mark) ends with no fresh copy.
      const racing = Array.from({ length: 10 }, () => `kms://b.example/resources/${randomUUID()}`);
      const mark = await store.invalidationMark();
      await Promise.all(racing.flatMap((u) => [other.invalidateCopies('b.example', [u]), store.putCopy({ ...copy, resourceUri: u }, [], mark)]));
      for (const u of racing) assert.ok([undefined, COPY_INVALIDATED].includes((await store.getCopy(u))?.fetchedAt), u);
    });

    const channelRow = (): ChannelRow => ({ id: randomUUID(), owner: 'alice@a.example', clientId: 'c1', createdAt: now, expiresAt: now + 60_000, cmkId, sealed: new Uint8Array([5]) });

    test('the change feed: deleted channels and CMK changes, gapless, in order, seen by the other process', async () => {
      const from = await other.lastChange();
      const c = channelRow();
      await store.insertChannel(c);
      assert.equal(await store.deleteChannel(c.id), true);
      assert.equal(await store.deleteChannel(c.id), false, 'nothing deleted: no change');
      const cmk = { id: randomUUID(), state: 'inactive' as const, assignedOrgId: 'org-feed', createdAt: now, sealed: new Uint8Array([1]) };
      await store.insertCmk(cmk);
      await store.setCmkState(cmk.id, 'active');
      await store.setCmkState(randomUUID(), 'active');
      const changes = await other.changesAfter(from, 100);
      assert.deepEqual(
        changes.map((x) => [x.seq, x.kind, x.subject]),
        [
          [from + 1, 'channel', c.id],
          [from + 2, 'cmk', cmk.id],
          [from + 3, 'cmk', cmk.id],
        ],
      );
      assert.ok(changes.every((x) => Number.isSafeInteger(x.at) && x.at > 0));
      assert.equal(await other.lastChange(), from + 3);
      assert.deepEqual(await other.changesAfter(from + 3, 100), []);
      assert.deepEqual((await other.changesAfter(from, 2)).map((x) => x.seq), [from + 1, from + 2], 'limit');
      await assert.rejects(other.changesAfter(-1, 10), RangeError);
      await assert.rejects(other.changesAfter(0, 0), RangeError);
      await assert.rejects(other.changesAfter(0.5, 10), RangeError);
      await assert.rejects(store.putCopy({ resourceUri: 'kms://b.example/resources/x', authority: 'b.example', fetchedAt: now, cmkId, sealed: new Uint8Array([1]) }, [], -1), RangeError);
    });

    test('the change feed: keys bound, resources created, authorizations added and deleted — and nothing for what changed nothing', async () => {
      const [k1, k2, k3] = [key(), key(), key()];
      await store.insertKeys([k1, k2, k3]);
      const r = resource();
      const alice = auth(r.id, 'alice@a.example');
      const from = await other.lastChange();
      assert.equal(await store.createResource(r, [alice], [bind(k1.id), bind(k2.id)]), 'bound');
      assert.equal(await store.bindKey({ ...bind(k3.id), resourceId: r.id }), 'bound');
      assert.equal(await store.bindKey({ ...bind(k3.id), resourceId: r.id }), 'already-bound', 'refused: no change');
      assert.equal(await store.createResource(resource(), [], [bind(k1.id)]), 'already-bound', 'rolled back: no change');
      const bob = auth(r.id, 'bob@a.example');
      await store.addAuthorizations(r.id, [bob], 10);
      await store.addAuthorizations(r.id, [auth(r.id, 'bob@a.example')], 10);
      await store.deleteAuthorizations(r.id, [bob.id]);
      await store.deleteAuthorizations(r.id, [bob.id, randomUUID()]);
      assert.deepEqual(
        (await other.changesAfter(from, 100)).map((x) => [x.seq - from, x.kind, x.subject]),
        [
          [1, 'resource', r.id],
          [2, 'key', k1.id],
          [3, 'key', k2.id],
          [4, 'key', k3.id],
          [5, 'resource', r.id],
          [6, 'resource', r.id],
        ],
      );
    });

    test("the change signal wakes the other process after a write (NOTIFY, or SQLite's polling)", async () => {
      let listening!: () => void;
      const up = new Promise<void>((r) => (listening = r));
      let wake = () => {};
      const listener: ChangeListener = { listening: () => listening(), changed: () => wake(), lost: () => {} };
      other.changeSignal.start(listener);
      await up;
      const c = channelRow();
      await store.insertChannel(c);
      const from = await other.lastChange();
      const woken = new Promise<string>((r) => (wake = () => r('woken')));
      await store.deleteChannel(c.id);
      assert.equal(await Promise.race([woken, new Promise((r) => setTimeout(r, 5000, 'not within 5 s'))]), 'woken');
      assert.deepEqual((await other.changesAfter(from, 10)).map((x) => x.subject), [c.id]);
    });

    test('both backends refuse the same malformed inputs, before writing anything', async () => {
      const r = resource();
      await store.createResource(r, [], []);
      await assert.rejects(store.listResourceKeys(r.id, { limit: -1 }), RangeError, 'SQLite would read LIMIT -1 as no limit');
      await assert.rejects(store.listResourceKeys(r.id, { limit: 1.5 }), RangeError);
      await assert.rejects(store.listResourceKeys(r.id, { boundBefore: Number.NaN }), RangeError);
      await assert.rejects(store.readAudit(0, -1), RangeError);
      await assert.rejects(store.sweep(now, -1), RangeError);
      const k = key({ createdAt: now + 0.5 });
      await assert.rejects(store.insertKeys([key(), k]), RangeError);
      assert.equal(await store.getKey(k.id), undefined);
      const fresh = key();
      await store.insertKeys([fresh]);
      await assert.rejects(store.bindKey({ ...bind(fresh.id), bindDate: now + 0.5, resourceId: r.id }), RangeError);
      assert.equal((await store.getKey(fresh.id))!.resourceId, null);
      const half = resource({ expiresAt: now + 0.5 });
      await assert.rejects(store.createResource(half, [], []), RangeError);
      assert.equal(await store.getResource(half.id), undefined);
      await assert.rejects(store.addAuthorizations(r.id, [{ ...auth(r.id, 'bob@a.example'), createdAt: Number.NaN }], 10), RangeError);
      await assert.rejects(store.addAuthorizations(r.id, [auth(r.id, 'bob@a.example')], -1), RangeError);
      assert.deepEqual(await store.listAuthorizations(r.id), []);
      const channel = randomUUID();
      const endless = { id: channel, owner: 'alice@a.example', clientId: 'c', createdAt: now, expiresAt: Infinity, cmkId, sealed: new Uint8Array([5]) };
      await assert.rejects(store.insertChannel(endless), RangeError);
      assert.equal(await store.getChannel(channel), undefined);
      await assert.rejects(store.recordPeerFetch(r.id, 'kms://b.example', now + 0.5), RangeError);
      assert.deepEqual(await store.peersThatFetched(r.id), []);
      const peer = `bad-${randomUUID()}.example`;
      const request = { peer, requestId: 'string:x', now, expiresAt: now + 600_000 };
      await assert.rejects(store.acceptPeerRequest({ ...request, now: now + 0.5 }, 10), RangeError);
      await assert.rejects(store.acceptPeerRequest({ ...request, expiresAt: now }, 10), RangeError);
      await assert.rejects(store.acceptPeerRequest(request, -1), RangeError);
      assert.equal(await store.acceptPeerRequest(request, 10), 'accepted', 'none of the refused was remembered');
    });

    test('both backends refuse a lone surrogate or U+0000 in any text column, writing nothing', async () => {
      for (const junk of ['\ud800', '\udfff', '\u0000']) {
        const k = key({ clientId: `c${junk}` });
        await assert.rejects(store.insertKeys([key(), k]), /key\.clientId contains/);
        assert.equal(await store.getKey(k.id), undefined);
        const r = resource();
        await assert.rejects(store.createResource(r, [auth(r.id, `bob${junk}@a.example`)], []), /authorization\.authId contains/);
        assert.equal(await store.getResource(r.id), undefined);
        const channel = { id: randomUUID(), owner: `alice${junk}@a.example`, clientId: 'c', createdAt: now, expiresAt: now + 60_000, cmkId, sealed: new Uint8Array([5]) };
        await assert.rejects(store.insertChannel(channel), /channel\.owner contains/);
        assert.equal(await store.getChannel(channel.id), undefined);
        const head = await store.auditHead();
        await assert.rejects(store.appendAudit((h) => chained(h, [auditEntry(1), { ...auditEntry(2), uri: `/keys${junk}` }], 'node-a')), /audit\.uri contains/);
        assert.deepEqual(await store.auditHead(), head, 'no record of the batch written');
      }
    });

    test('sweep destroys expired resources with their keys, old unbound keys, dead channels', async () => {
      const t = now + 10_000_000;
      const dying = resource({ expiresAt: t - 1 });
      const living = resource({ expiresAt: t + 1000 });
      const k1 = key();
      const k2 = key();
      const old = key({ expiresAt: t - 5000 });
      const recent = key({ expiresAt: t - 10 });
      await store.insertKeys([k1, k2, old, recent]);
      await store.createResource(dying, [auth(dying.id, 'x@a.example')], [bind(k1.id)]);
      await store.createResource(living, [], [bind(k2.id)]);
      const result = await store.sweep(t, 1000);
      assert.ok(result.resources >= 1);
      assert.equal(await store.getResource(dying.id), undefined);
      assert.equal(await store.getKey(k1.id), undefined);
      assert.deepEqual(await store.listAuthorizations(dying.id), []);
      assert.ok(await store.getResource(living.id));
      assert.ok(await store.getKey(k2.id));
      assert.equal(await store.getKey(old.id), undefined, 'unbound key past the grace');
      assert.ok(await store.getKey(recent.id), 'unbound key within the grace');
    });
  });
}
