/**
 * The invalidation inbox (src/federation/inbox.ts): which of a peer's URIs count, and that a fetch
 * overtaken by an invalidation cannot store its answer, also when the invalidation reached another
 * node on the same database. Real SQLite stores on one file, one per node (the PostgreSQL side of
 * the same decisions is in the Store contract).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Invalidations } from '../../src/federation/inbox.js';
import { COPY_INVALIDATED, type CopyRow } from '../../src/model.js';
import { SqliteStore } from '../../src/store/sqlite.js';

const PEER = 'kms.a.example';
const file = join(mkdtempSync(join(tmpdir(), 'kms-inbox-')), 'kms.db');
const cmkId = randomUUID();
let node1: SqliteStore;
let node2: SqliteStore;

before(async () => {
  node1 = new SqliteStore(file);
  node2 = new SqliteStore(file);
  await node1.insertCmk({ id: cmkId, state: 'active', assignedOrgId: null, createdAt: 1, sealed: new Uint8Array([1]) });
});
after(async () => {
  await node1.close();
  await node2.close();
});

const kro = (authority = PEER) => `kms://${authority}/resources/${randomUUID()}`;
const copy = (resourceUri: string): CopyRow => ({ resourceUri, authority: PEER, fetchedAt: 1000, cmkId, sealed: new Uint8Array([7]) });

/** Stores a fetched copy of `uri` as copies.ts does: with the mark its fetch began at. */
const store = (box: Invalidations, via: SqliteStore, uri: string, during?: () => Promise<unknown>) =>
  box.during(async (startedAt) => {
    await during?.();
    return via.putCopy(copy(uri), [], startedAt);
  });

describe('which URIs count', () => {
  test("only the sender's own absolute KRO URIs are invalidated", async () => {
    const box = new Invalidations(node1);
    const own = [kro(), kro()];
    const others = [
      `/resources/${randomUUID()}`, // relative: would mean this KMS's own
      kro('kms.c.example'), // another peer's: a peer cannot drop another peer's copies
      kro('kms.b.example'),
      `kms://${PEER}/keys/${randomUUID()}`,
      `kms://${PEER}/resources/not-a-uuid`,
      `kms://${PEER}/resources/${randomUUID()}/keys`,
      `kms://${PEER}/resources/${randomUUID()}?authId=x`,
    ];
    for (const uri of [...own, ...others]) assert.equal(await node1.putCopy({ ...copy(uri), authority: PEER }, [], 0), 'stored');
    assert.equal(await box.invalidated(PEER, [others[0]!, own[0]!, ...others.slice(1), own[1]!]), 2);
    for (const uri of own) assert.equal((await node1.getCopy(uri))!.fetchedAt, COPY_INVALIDATED, uri);
    for (const uri of others) assert.equal((await node1.getCopy(uri))!.fetchedAt, 1000, uri);
    // Only what counted holds against fetches under way.
    for (const uri of others) assert.equal(await node1.putCopy(copy(uri), [], 0), 'stored', uri);
    for (const uri of own) assert.equal(await node1.putCopy(copy(uri), [], 0), 'invalidated', uri);
  });

  test('nothing that counts: 0, and the mark does not move', async () => {
    const box = new Invalidations(node1);
    const mark = await node1.invalidationMark();
    assert.equal(await box.invalidated(PEER, [kro('kms.c.example'), `/resources/${randomUUID()}`]), 0);
    assert.equal(await node1.invalidationMark(), mark);
  });
});

describe('a fetch overtaken by an invalidation', () => {
  test('an invalidation during a fetch refuses its copy; one from before does not', async () => {
    const box = new Invalidations(node1);
    const before = kro();
    const during = kro();
    await box.invalidated(PEER, [before]);
    assert.equal(await store(box, node1, before), 'stored');
    assert.equal(await store(box, node1, during, () => box.invalidated(PEER, [during])), 'invalidated');
    assert.equal(await node1.getCopy(during), undefined, 'nothing was written');
    assert.equal(await store(box, node1, during), 'stored', 'a fetch begun after it');
  });

  test('received by node 1, in force on node 2 at once', async () => {
    const onNode1 = new Invalidations(node1);
    const onNode2 = new Invalidations(node2);
    const uri = kro();
    assert.equal(await store(onNode2, node2, uri, () => onNode1.invalidated(PEER, [uri])), 'invalidated');
    // And the other way round, for a copy already stored by node 2: node 1's invalidation marks it stale.
    assert.equal(await store(onNode2, node2, uri), 'stored');
    await onNode1.invalidated(PEER, [uri]);
    assert.equal((await node2.getCopy(uri))!.fetchedAt, COPY_INVALIDATED);
  });

  test('a slow fetch is judged from its own start, a later one from its own', async () => {
    const box = new Invalidations(node1);
    const uri = kro();
    let release!: () => void;
    const slow = store(box, node1, uri, () => new Promise<void>((r) => (release = r)));
    await new Promise((r) => setImmediate(r));
    await box.invalidated(PEER, [uri]);
    assert.equal(await store(box, node2 as SqliteStore, uri), 'stored', 'the later fetch');
    release();
    assert.equal(await slow, 'invalidated', 'the fetch that was under way');
  });

  test('a fetch that throws rejects with its own error', async () => {
    const box = new Invalidations(node1);
    const err = new Error('peer failed');
    await assert.rejects(
      box.during(async () => {
        throw err;
      }),
      (e) => e === err,
    );
  });
});
