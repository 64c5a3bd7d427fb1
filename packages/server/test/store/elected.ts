/**
 * The Store contract for what several processes on one database share to act as one KMS: the
 * election of the node that does the background work, the push outbox it delivers, the nodes
 * table. Every backend runs it (sqlite.test.ts, postgres.test.ts) with two instances on one
 * database, as two processes would be.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { NodeRow, PushRow } from '../../src/model.js';
import type { Store } from '../../src/store/store.js';

export function electedContract(name: string, open: () => Promise<Store>): void {
  describe(`Store contract, elected work: ${name}`, () => {
    let store: Store;
    let other: Store;
    const now = 1_900_000_000_000;
    before(async () => {
      store = await open();
      other = await open();
    });
    after(async () => {
      await other.close();
      await store.close();
    });

    const push = (over: Partial<PushRow> = {}): PushRow => ({
      id: randomUUID(),
      createdAt: now,
      resourceIds: [randomUUID()],
      userIds: ['bob@b.example'],
      targets: null,
      attempts: 0,
      nextAttemptAt: now,
      ...over,
    });

    test('of two instances claiming leadership exactly one leads; it renews; once released the other takes over', async () => {
      const a = await store.leadership(`a-${randomUUID()}`);
      const b = await other.leadership(`b-${randomUUID()}`);
      try {
        const [wonA, wonB] = await Promise.all([a.claim(now), b.claim(now)]);
        assert.equal(Number(wonA) + Number(wonB), 1, `exactly one leads: ${wonA}, ${wonB}`);
        const [leader, follower] = wonA ? [a, b] : [b, a];
        assert.equal(await leader.claim(now + 1000), true, 'the leader renews');
        assert.equal(await follower.claim(now + 1000), false, 'the other still does not lead');
        await leader.release();
        assert.equal(await follower.claim(now + 2000), true, 'released: the other takes over at once');
        assert.equal(await leader.claim(now + 2000), false, 'and the former leader does not lead');
      } finally {
        await a.release();
        await b.release();
      }
    });

    test('the outbox gives due pushes, earliest first, to any instance; reschedule and delete', async () => {
      const later = push({ nextAttemptAt: now + 50 });
      const first = push({ nextAttemptAt: now + 10, resourceIds: ['r1', 'r2'], userIds: [] });
      const notYet = push({ nextAttemptAt: now + 10_000 });
      for (const p of [later, first, notYet]) assert.equal(await store.enqueuePush(p, 1000), true);
      const due = (await other.duePushes(now + 100, 1000)).filter((p) => [later.id, first.id, notYet.id].includes(p.id));
      assert.deepEqual(due, [first, later], 'due rows, earliest first, read back whole by the other instance');
      assert.deepEqual((await other.duePushes(now + 100, 1)).length, 1, 'limit');

      await other.reschedulePush(first.id, { 'kms.b.example': ['kms://kms.a.example/resources/r1'] }, 1, now + 5000);
      const [moved] = (await store.duePushes(now + 5000, 1000)).filter((p) => p.id === first.id);
      assert.deepEqual(moved, { ...first, targets: { 'kms.b.example': ['kms://kms.a.example/resources/r1'] }, attempts: 1, nextAttemptAt: now + 5000 });
      assert.ok(!(await store.duePushes(now + 4999, 1000)).some((p) => p.id === first.id), 'not due before its next attempt');

      const count = await store.countPushes();
      for (const p of [later, first, notYet]) await other.deletePush(p.id);
      assert.equal(await store.countPushes(), count - 3);
    });

    test('a full outbox refuses a new push and writes nothing', async () => {
      const count = await store.countPushes();
      const refused = push();
      assert.equal(await store.enqueuePush(refused, count), false);
      assert.equal(await other.countPushes(), count);
      assert.ok(!(await store.duePushes(now, 100_000)).some((p) => p.id === refused.id));
      const taken = push();
      assert.equal(await store.enqueuePush(taken, count + 1), true);
      await store.deletePush(taken.id);
    });

    test('both backends refuse the same malformed pushes, before writing', async () => {
      const count = await store.countPushes();
      await assert.rejects(store.enqueuePush(push({ resourceIds: [] }), 1000), RangeError);
      await assert.rejects(store.enqueuePush(push({ resourceIds: Array.from({ length: 1001 }, (_, i) => `r${i}`) }), 1000), RangeError);
      await assert.rejects(store.enqueuePush(push({ attempts: 0.5 }), 1000), RangeError);
      await assert.rejects(store.enqueuePush(push({ nextAttemptAt: Number.NaN }), 1000), RangeError);
      await assert.rejects(store.enqueuePush(push(), -1), RangeError);
      await assert.rejects(store.duePushes(now, -1), RangeError);
      await assert.rejects(store.reschedulePush(randomUUID(), {}, -1, now), RangeError);
      assert.equal(await store.countPushes(), count);
    });

    test('nodes: a heartbeat inserts or replaces the row, forgets the long unseen, and a stopping node removes its own', async () => {
      const node = (over: Partial<NodeRow> = {}): NodeRow => ({ id: `host/1/${randomUUID()}`, host: 'host', pid: 1, version: '1.0.0', startedAt: now, seenAt: now, leading: false, ...over });
      const old = node({ seenAt: now - 100_000 });
      const a = node();
      await store.heartbeat(old, now - 200_000);
      await store.heartbeat(a, now - 200_000);
      await other.heartbeat({ ...a, seenAt: now + 3000, leading: true }, now - 50_000);
      const seen = (await store.listNodes()).filter((n) => [old.id, a.id].includes(n.id));
      assert.deepEqual(seen, [{ ...a, seenAt: now + 3000, leading: true }], 'replaced, and the long unseen forgotten');
      await other.removeNode(a.id);
      assert.ok(!(await store.listNodes()).some((n) => n.id === a.id));
      await assert.rejects(store.heartbeat(node({ pid: 1.5 }), now), RangeError);
      await assert.rejects(store.heartbeat(node({ host: '' }), now), RangeError);
    });
  });
}
