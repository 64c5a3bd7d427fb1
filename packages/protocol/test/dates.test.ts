import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatDate, parseDate } from '../src/dates.js';

test('formatDate writes what toISOString writes: every edge, and random instants of every year range', () => {
  const iso = (ms: number): string => {
    try {
      return new Date(ms).toISOString();
    } catch (err) {
      return `throws ${(err as Error).name}`;
    }
  };
  const mine = (ms: number): string => {
    try {
      return formatDate(ms);
    } catch (err) {
      return `throws ${(err as Error).name}`;
    }
  };
  const edges = [
    0, 1, 999, 1000, 59_999, 60_000, 3_599_999, 86_399_999, 86_400_000,
    Date.UTC(2000, 1, 28), Date.UTC(2000, 1, 29), Date.UTC(2000, 2, 1) - 1, Date.UTC(1900 + 200, 1, 28, 23, 59, 59, 999),
    Date.UTC(2100, 1, 28), Date.UTC(2100, 2, 1), Date.UTC(2024, 11, 31, 23, 59, 59, 999), Date.UTC(2026, 10, 28, 21, 5, 3, 123),
    253_402_300_799_999, 253_402_300_800_000, -1, -86_400_000, 1.5, -0.5, 8.64e15, 8.64e15 + 1, NaN, Infinity,
  ];
  for (const ms of edges) assert.equal(mine(ms), iso(ms), String(ms));
  for (let i = 0; i < 200_000; i++) {
    const ms = Math.floor(Math.random() * (i % 2 ? 253_402_300_800_000 : 4_102_444_800_000)); // to 9999, and to 2100
    assert.equal(formatDate(ms), iso(ms), String(ms));
  }
  assert.equal(parseDate(formatDate(1_764_363_903_123)), 1_764_363_903_123);
});
