/**
 * The push outbox (federation/push.ts): a change is queued in A's database before A answers, and
 * A, leading its database's background work, delivers it with the retry schedule. Here B is
 * unreachable (NOWHERE): the row stays while the attempts are made (each counted in the row and
 * audited), and after the last one A logs that it gave up and drops the row.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { startDevKms } from '@openkms/server/testing';
import { PUSH_RETRY_DELAYS_MS } from '../../packages/server/dist/src/limits.js';
import { A_AUTH, audit, B_AUTH, caPem, closeClients, INVALIDATIONS_AT_B, NOWHERE, peerEntry, userOn, waitFor } from '../support/federation.js';

after(closeClients);

function outbox(dbPath: string): { resource_ids: string; user_ids: string; attempts: number; targets: string | null }[] {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT resource_ids, user_ids, attempts, targets FROM push_outbox').all() as { resource_ids: string; user_ids: string; attempts: number; targets: string | null }[];
  } finally {
    db.close();
  }
}

test('a change is in the outbox when answered; an unreachable peer gets every attempt of the schedule, then the row is dropped', { timeout: 60_000 }, async () => {
  const A = await startDevKms({ authority: A_AUTH, domains: ['a.example'], logLevel: 'info', config: { peers: [peerEntry(B_AUTH, 'b.example', NOWHERE, await caPem(B_AUTH, 'b.example'))] } });
  try {
    const alice = userOn(A, 'alice@a.example', A.trustAnchors[0]!);
    const [key] = await alice.createKeys(1);
    const { resource } = await alice.createResource({ keyUris: [key!.uri] });
    const id = resource.uri.split('/').pop()!;
    await alice.authorize(resource.uri, ['bob@b.example']);
    // Answered: the row is there (its first attempt fails, so it stays for the retries).
    const [row] = outbox(A.dbPath);
    assert.ok(row, 'the change was queued before the answer');
    assert.deepEqual(JSON.parse(row.resource_ids), [id]);
    assert.deepEqual(JSON.parse(row.user_ids), ['bob@b.example']);
    assert.ok(!JSON.stringify(row).includes(key!.jwk.k), 'no key material in the outbox');

    const attempts = PUSH_RETRY_DELAYS_MS.length + 1;
    const pushes = () => audit(A.dbPath).filter((r) => r.uri === INVALIDATIONS_AT_B && r.method === 'update');
    await waitFor(() => pushes().length >= 2, 'a retry', 10_000);
    // The last attempt is seconds away (the schedule's last delay): the row is still there.
    const kept = outbox(A.dbPath);
    assert.equal(kept.length, 1);
    assert.ok(kept[0]!.attempts >= 1, 'attempts are counted in the row');
    assert.deepEqual(Object.keys(JSON.parse(kept[0]!.targets!)), [B_AUTH], 'what is left to push is kept');
    await waitFor(() => outbox(A.dbPath).length === 0, 'the row to be given up', 20_000);
    assert.equal(pushes().length, attempts, `one audited attempt per step of the schedule (${PUSH_RETRY_DELAYS_MS.join(', ')} ms)`);
    assert.ok(pushes().every((r) => r.status >= 500));
    assert.ok(A.logs.some((l) => l.includes('gave up pushing invalidations')), 'the drop is logged');
  } finally {
    await closeClients();
    await A.close();
  }
});
