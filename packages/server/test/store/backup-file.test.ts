/**
 * The backup file (store/backup-file.ts): what is written reads back value for value (text,
 * integers, bytes, NULL); the file is owner-only and appears whole or not at all; and a file cut
 * short at any byte, changed in any byte, with rows miscounted, with anything after its trailer,
 * of an unknown format version or holding a value of the wrong type is refused as a whole.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { BackupFileError, BackupWriter, readBackup, type BackupEntry } from '../../src/store/backup-file.js';
import type { TableShape } from '../../src/store/snapshot.js';

const dir = mkdtempSync(join(tmpdir(), 'kms-backup-file-'));
const HEADER = { schemaVersion: 8, authority: 'kms.a.example', createdAt: '2026-01-02T03:04:05.000Z', kmsVersion: '0.1.0' };
const TABLE: TableShape = {
  name: 'things',
  columns: [
    { name: 'id', type: 'text' },
    { name: 'n', type: 'integer' },
    { name: 'sealed', type: 'bytes' },
  ],
};
const ROWS = [
  ['a', 1_800_000_000_000, new Uint8Array([0, 1, 2, 255])],
  ['b "quoted"\n', -5, new Uint8Array(0)],
  ['ü', null, null],
];

function written(name: string): string {
  const path = join(dir, name);
  const w = BackupWriter.create(path, HEADER);
  w.startTable(TABLE);
  for (const r of ROWS) w.row(r);
  w.startTable({ name: 'empty', columns: [{ name: 'x', type: 'text' }] });
  assert.deepEqual(w.finish(), { things: 3, empty: 0 });
  return path;
}

async function entries(path: string): Promise<BackupEntry[]> {
  const all: BackupEntry[] = [];
  for await (const e of readBackup(path)) all.push(e);
  return all;
}

async function refused(path: string, reason: RegExp): Promise<void> {
  await assert.rejects(entries(path), (err: Error) => {
    assert.ok(err instanceof BackupFileError, `a BackupFileError, got ${err}`);
    assert.match(err.message, reason);
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
}

/** A file of these lines after the header, with a correct trailer (the digest and the counts given or computed). */
function handMade(name: string, lines: string[], rows?: Record<string, number>): string {
  const body = [JSON.stringify({ format: 'openkms-backup', formatVersion: 1, ...HEADER }), ...lines].map((l) => `${l}\n`).join('');
  const counted = rows ?? { things: lines.filter((l) => l.startsWith('[')).length };
  const path = join(dir, name);
  writeFileSync(path, body + JSON.stringify({ end: 'openkms-backup', rows: counted, sha256: createHash('sha256').update(body).digest('hex') }) + '\n');
  return path;
}
const tableLine = JSON.stringify({ table: TABLE.name, columns: TABLE.columns });

describe('the backup file', () => {
  test('reads back what was written: header, tables, every value with its type', async () => {
    const got = await entries(written('round-trip.backup'));
    assert.deepEqual(got[0], { header: { format: 'openkms-backup', formatVersion: 1, ...HEADER } });
    assert.deepEqual(got[1], { table: TABLE });
    assert.deepEqual(
      got.slice(2, 5).map((e) => ('row' in e ? e.row.map((v) => (v instanceof Uint8Array ? [...v] : v)) : e)),
      ROWS.map((r) => r.map((v) => (v instanceof Uint8Array ? [...v] : v))),
    );
    assert.deepEqual(got[5], { table: { name: 'empty', columns: [{ name: 'x', type: 'text' }] } });
    assert.deepEqual(Object.keys(got[6]!), ['trailer']);
    assert.equal(got.length, 7);
  });

  test('owner-only (0600), renamed into place over an older file; an aborted one leaves the older file and no temporary', () => {
    const path = join(dir, 'replaced.backup');
    writeFileSync(path, 'older\n', { mode: 0o644 });
    const w = BackupWriter.create(path, HEADER);
    w.startTable(TABLE);
    assert.equal(readFileSync(path, 'utf8'), 'older\n', 'untouched until finished');
    w.abort();
    assert.equal(readFileSync(path, 'utf8'), 'older\n');
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('replaced.backup.')), [], 'no temporary left');
    written('replaced.backup');
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.match(readFileSync(path, 'utf8'), /^\{"format":"openkms-backup"/);
  });

  test('a file cut short at any byte is refused', async () => {
    const whole = readFileSync(written('whole.backup'));
    for (let n = 0; n < whole.length; n++) {
      const path = join(dir, 'cut.backup');
      writeFileSync(path, whole.subarray(0, n));
      await refused(path, n === 0 ? /empty/ : /truncated|not an openkms backup|not JSON/);
    }
  });

  test('a file changed in any byte is refused', async () => {
    const whole = readFileSync(written('flip.backup'));
    const path = join(dir, 'flipped.backup');
    for (let i = 0; i < whole.length; i++) {
      const copy = Buffer.from(whole);
      copy[i] = copy[i] === 0x0a ? 0x20 : copy[i]! ^ 0x01;
      writeFileSync(path, copy);
      await assert.rejects(entries(path), BackupFileError, `byte ${i} changed`);
    }
  });

  test('rows miscounted in the trailer, or anything after it, are refused', async () => {
    const row = JSON.stringify(['a', 1, null]);
    await refused(handMade('miscounted.backup', [tableLine, row], { things: 2 }), /altered: its rows do not match the counts/);
    await refused(handMade('unnamed.backup', [tableLine, row], { things: 1, others: 0 }), /altered: its rows do not match the counts/);
    const ok = handMade('after.backup', [tableLine, row]);
    writeFileSync(ok, readFileSync(ok, 'utf8') + '["more"]\n');
    await refused(ok, /data after the trailer/);
  });

  test('another format, a newer format version, a malformed header are refused', async () => {
    const path = join(dir, 'other.backup');
    writeFileSync(path, '{"hello":"world"}\n');
    await refused(path, /not an openkms backup/);
    writeFileSync(path, `${JSON.stringify({ format: 'openkms-backup', formatVersion: 2, ...HEADER })}\n`);
    await refused(path, /format version 2 is newer than this kms reads \(1\)/);
    writeFileSync(path, `${JSON.stringify({ format: 'openkms-backup', formatVersion: 1, ...HEADER, schemaVersion: 0 })}\n`);
    await refused(path, /no valid schemaVersion/);
  });

  test('a value of the wrong type, a row of the wrong length, a row before its table are refused (even with a correct digest)', async () => {
    await refused(handMade('type.backup', [tableLine, JSON.stringify([1, 1, null])]), /line 3: things\.id is not text/);
    await refused(handMade('int.backup', [tableLine, JSON.stringify(['a', 1.5, null])]), /things\.n is not an integer/);
    await refused(handMade('unsafe.backup', [tableLine, JSON.stringify(['a', 2 ** 60, null])]), /things\.n is not an integer/);
    await refused(handMade('b64.backup', [tableLine, JSON.stringify(['a', 1, 'not base64!'])]), /things\.sealed is not base64/);
    await refused(handMade('short.backup', [tableLine, JSON.stringify(['a', 1])]), /has 2 values, not 3/);
    await refused(handMade('orphan.backup', [JSON.stringify(['a', 1, null])]), /a row before any table/);
    await refused(handMade('twice.backup', [tableLine, tableLine], { things: 0 }), /table things appears twice/);
    await refused(handMade('bad-type.backup', [JSON.stringify({ table: 'things', columns: [{ name: 'id', type: 'float' }] })], {}), /a column of table things is malformed/);
  });

  test('a missing file is one line', async () => {
    await refused(join(dir, 'absent.backup'), /cannot read it: ENOENT/);
    assert.equal(existsSync(join(dir, 'absent.backup')), false);
  });
});
