/**
 * The Store contract: every backend runs this same suite. It pins the atomic behaviours callers
 * rely on — one winner among concurrent binds, all-or-nothing resource creation, idempotent
 * authorizations, one active CMK per scope, the audit append order, the sweeper.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { AuthorizationRow, KeyRow, ResourceRow, Store } from '../../src/store/store.js';

export function storeContract(name: string, open: () => Promise<Store>): void {
  describe(`Store contract: ${name}`, () => {
    let store: Store;
    const cmkId = randomUUID();
    const now = 1_800_000_000_000;

    before(async () => {
      store = await open();
      await store.insertCmk({ id: cmkId, state: 'active', assignedOrgId: null, createdAt: now, sealed: new Uint8Array([1, 2, 3]) });
    });
    after(() => store.close());

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
      assert.equal(await store.bindKey({ ...bind(k.id), resourceId: r.id }), 'bound');
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

    test('audit rows append in order and refuse a second row with the same seq', async () => {
      const head = await store.auditHead();
      const seq = (head?.seq ?? 0) + 1;
      const row = { seq, time: now, principal: 'alice@a.example', clientId: 'c', method: 'update', uri: '/ping', status: 200, peer: null, requestId: 'r', prevHash: head?.hash ?? '0', hash: 'h1' };
      await store.appendAudit([row, { ...row, seq: seq + 1, prevHash: 'h1', hash: 'h2' }]);
      assert.deepEqual(await store.auditHead(), { seq: seq + 1, hash: 'h2' });
      assert.equal((await store.readAudit(seq - 1, 10)).length, 2);
      await assert.rejects(store.appendAudit([{ ...row, seq: seq + 1, hash: 'fork' }]));
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
