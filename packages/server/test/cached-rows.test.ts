/**
 * The cached rows' own rules (src/cached-rows.ts), over an in-memory row source that counts its
 * reads: what is cached and when it is read again, the bounds, a read that races an eviction, and
 * nothing cached or trusted while not following the feed. How the caches follow other nodes'
 * writes is in coherence.test.ts (two stores on one database); how a KMS decides on them, in
 * operations/keys.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CachedRows, type RowSource } from '../src/cached-rows.js';
import { MAX_CACHED_AUTHORIZATIONS, MAX_CACHED_KEYS, ROW_CACHE_MS } from '../src/limits.js';
import type { AuthorizationRow, KeyRow, ResourceRow } from '../src/model.js';

const key = (id: string): KeyRow => ({ id, userId: 'alice@a.example', clientId: 'c1', createdAt: 1, expiresAt: 2, resourceId: null, bindDate: null, bindSeq: null, cmkId: 'cmk', sealed: new Uint8Array([1]) });
const auth = (resourceId: string, i: number): AuthorizationRow => ({ id: `${resourceId}-${i}`, resourceId, authId: `u${i}@a.example`, roleUri: null, createdAt: 1 });

/** Rows as storage would give them, each read counted; `gate` holds reads back until released. */
function source() {
  const reads: string[] = [];
  const sets = new Map<string, number>();
  let gate: Promise<void> | undefined;
  const src: RowSource = {
    async getKey(id) {
      reads.push(`key ${id}`);
      await gate;
      return id.startsWith('missing') ? undefined : key(id);
    },
    async getResource(id): Promise<ResourceRow> {
      reads.push(`resource ${id}`);
      return { id, creator: 'alice@a.example', createdAt: 1, expiresAt: null };
    },
    async listAuthorizations(id) {
      reads.push(`authorizations ${id}`);
      return Array.from({ length: sets.get(id) ?? 1 }, (_, i) => auth(id, i));
    },
  };
  return { src, reads, sets, hold: () => { let release!: () => void; gate = new Promise((r) => (release = r)); return () => { gate = undefined; release(); }; } };
}

function following(src: RowSource, clock = { t: 1_000_000 }) {
  const rows = new CachedRows(src, () => clock.t);
  rows.setFollowing(true);
  return { rows, clock };
}

describe('cached rows', () => {
  test('a row is read once, then served from memory until ROW_CACHE_MS; an absent one is never cached', async () => {
    const s = source();
    const { rows, clock } = following(s.src);
    assert.equal((await rows.getKey('k1'))!.id, 'k1');
    assert.equal((await rows.getKey('k1'))!.id, 'k1');
    assert.equal(await rows.getKey('missing-1'), undefined);
    assert.equal(await rows.getKey('missing-1'), undefined);
    assert.deepEqual(s.reads, ['key k1', 'key missing-1', 'key missing-1']);
    assert.ok(Object.isFrozen(await rows.getKey('k1')), 'shared by every reader: frozen');
    clock.t += ROW_CACHE_MS - 1;
    await rows.getKey('k1');
    assert.equal(s.reads.length, 3);
    clock.t += 1;
    await rows.getKey('k1');
    assert.equal(s.reads.length, 4, 're-read at ROW_CACHE_MS');
    clock.t -= 60_000;
    await rows.getKey('k1');
    assert.equal(s.reads.length, 5, 'a clock set back is not trusted either');
  });

  test('fresh reads go to storage and replace what is cached; evictions drop a key, a resource with its authorizations', async () => {
    const s = source();
    const { rows } = following(s.src);
    await rows.getKey('k1');
    await rows.fresh.getKey('k1');
    await rows.getKey('k1');
    assert.deepEqual(s.reads, ['key k1', 'key k1']);
    await rows.getResource('r1');
    await rows.listAuthorizations('r1');
    rows.evictKey('k1');
    rows.evictResource('r1');
    await rows.getKey('k1');
    await rows.getResource('r1');
    await rows.listAuthorizations('r1');
    assert.deepEqual(s.reads.slice(2), ['resource r1', 'authorizations r1', 'key k1', 'resource r1', 'authorizations r1']);
  });

  test('a decision tells whether any of its rows was served from memory', async () => {
    const s = source();
    const { rows } = following(s.src);
    const first = rows.decision();
    await first.getKey('k1');
    await first.listAuthorizations('r1');
    assert.equal(first.fromMemory, false, 'both read from storage');
    const second = rows.decision();
    await second.getResource('r1');
    assert.equal(second.fromMemory, false);
    await second.getKey('k1');
    assert.equal(second.fromMemory, true, 'k1 was cached by the first');
  });

  test('a read that began before an eviction does not cache what it read', async () => {
    const s = source();
    const { rows } = following(s.src);
    const release = s.hold();
    const reading = rows.getKey('k1');
    rows.evictKey('k1'); // e.g. the key was bound meanwhile
    release();
    await reading;
    await rows.getKey('k1');
    assert.deepEqual(s.reads, ['key k1', 'key k1'], 'read again');
  });

  test('not following the feed: nothing served from memory or cached; following again, it starts empty', async () => {
    const s = source();
    const { rows } = following(s.src);
    await rows.getKey('k1');
    rows.setFollowing(false);
    assert.equal(rows.active, false);
    await rows.getKey('k1');
    await rows.getKey('k1');
    assert.deepEqual(rows.sizes(), { keys: 0, resources: 0, authorizationSets: 0 });
    rows.setFollowing(true);
    await rows.getKey('k1');
    assert.equal(s.reads.length, 4);
  });

  test('bounded: past MAX_CACHED_KEYS the oldest key goes; authorization sets count their rows', async () => {
    const s = source();
    const { rows } = following(s.src);
    for (let i = 0; i <= MAX_CACHED_KEYS; i++) await rows.getKey(`k${i}`);
    assert.equal(rows.sizes().keys, MAX_CACHED_KEYS);
    const before = s.reads.length;
    await rows.getKey(`k${MAX_CACHED_KEYS}`);
    assert.equal(s.reads.length, before, 'the newest is held');
    await rows.getKey('k0');
    assert.equal(s.reads.length, before + 1, 'the oldest was dropped');

    const half = Math.floor(MAX_CACHED_AUTHORIZATIONS / 2);
    s.sets.set('big1', half).set('big2', half).set('big3', half).set('huge', MAX_CACHED_AUTHORIZATIONS + 1);
    for (const id of ['big1', 'big2', 'big3']) await rows.listAuthorizations(id);
    assert.equal(rows.sizes().authorizationSets, 2, 'three halves do not fit: the first went');
    assert.equal((await rows.listAuthorizations('huge')).length, MAX_CACHED_AUTHORIZATIONS + 1, 'a set over the bound is answered');
    await rows.listAuthorizations('huge');
    assert.equal(s.reads.filter((r) => r === 'authorizations huge').length, 2, 'but never cached');
    assert.equal(rows.sizes().authorizationSets, 2, 'nor evicting the others for it');
  });
});
