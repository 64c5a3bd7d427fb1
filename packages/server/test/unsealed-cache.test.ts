/**
 * keyring/unsealed-cache.ts: a value is served only while its row holds the very sealed bytes it
 * was unsealed from, and the cache stays within its entry and byte bounds.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { UnsealedCache } from '../src/keyring/unsealed-cache.js';
import { seal } from '../src/keyring/sealing.js';

const key = randomBytes(32);
const sealedOf = (text: string) => seal(key, new TextEncoder().encode(text), 'aad');

test('a row sealed again (same plaintext, new IV) misses; the same sealed bytes hit', () => {
  const cache = new UnsealedCache<string>(10, 1 << 20);
  const first = sealedOf('copy v1');
  cache.set('r', first, 'v1');
  assert.equal(cache.get('r', first), 'v1');
  assert.equal(cache.get('r', new Uint8Array(first)), 'v1', 'a copy of the same bytes (as read again from storage)');
  const resealed = sealedOf('copy v1');
  assert.equal(cache.get('r', resealed), undefined, 'rewritten anywhere: another stamp');
  assert.equal(cache.size, 0, 'the stale entry is dropped');
  assert.equal(cache.get('other', first), undefined, 'keyed by row id too');
});

test('a changed tag alone misses (the stamp covers version, IV and tag)', () => {
  const cache = new UnsealedCache<string>(10, 1 << 20);
  const sealed = sealedOf('x');
  cache.set('r', sealed, 'x');
  const tampered = new Uint8Array(sealed);
  tampered[1 + 12 + 15]! ^= 1;
  assert.equal(cache.get('r', tampered), undefined);
});

test('bounded in entries and bytes, least recently used out; an oversized value is not kept', () => {
  const cache = new UnsealedCache<number>(3, 1 << 20);
  const rows = [0, 1, 2, 3].map((i) => sealedOf(`row ${i}`));
  cache.set('a', rows[0]!, 0);
  cache.set('b', rows[1]!, 1);
  cache.set('c', rows[2]!, 2);
  assert.equal(cache.get('a', rows[0]!), 0, 'a is now the most recently used');
  cache.set('d', rows[3]!, 3);
  assert.equal(cache.size, 3);
  assert.equal(cache.get('b', rows[1]!), undefined, 'b was the least recently used');
  assert.equal(cache.get('a', rows[0]!), 0);

  const small = new UnsealedCache<number>(100, 200);
  const big = seal(key, randomBytes(150), 'aad');
  small.set('big', big, 1);
  assert.equal(small.get('big', big), 1);
  small.set('big2', seal(key, randomBytes(150), 'aad'), 2);
  assert.equal(small.size, 1, 'the byte bound evicts the older entry');
  small.set('huge', seal(key, randomBytes(300), 'aad'), 3);
  assert.equal(small.get('huge', seal(key, randomBytes(300), 'aad')), undefined);
  assert.equal(small.size, 1, 'a value over the byte bound is not cached and evicts nothing');
});
