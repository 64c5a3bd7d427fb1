/** Time-ordered ids (src/ids.ts): RFC 9562 version 7 UUIDs, sorting as their instants do. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { timeOrderedIds } from '../src/ids.js';

const V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test('version 7, variant 10, the instant in the first 48 bits, the rest distinct', () => {
  const now = Date.UTC(2026, 11, 4, 12, 0, 0, 123);
  const ids = timeOrderedIds(1000, now);
  assert.equal(ids.length, 1000);
  for (const id of ids) {
    assert.match(id, V7);
    assert.equal(parseInt(id.replace(/-/g, '').slice(0, 12), 16), now);
  }
  assert.equal(new Set(ids).size, 1000);
  assert.equal(new Set(ids.map((id) => id.slice(14))).size, 1000, 'the random part differs, not only the order');
});

test('ids of later instants sort after, as strings (the order of SQLite and of COLLATE "C")', () => {
  const earlier = timeOrderedIds(50, 1_000_000_000_000);
  const later = timeOrderedIds(50, 1_000_000_000_001);
  assert.ok(earlier.every((a) => later.every((b) => a < b)));
  assert.equal(timeOrderedIds(0).length, 0);
});

test('an instant that is not epoch milliseconds is refused', () => {
  for (const bad of [-1, 1.5, 2 ** 48, Number.NaN]) assert.throws(() => timeOrderedIds(1, bad), RangeError);
});
