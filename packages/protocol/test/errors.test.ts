/**
 * The closed table of error codes and the one KmsError: status from code, what a status received
 * on the wire stands for, the options an error carries; and docs/errors.md kept in sync with the
 * table both ways.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ErrorCodes, KmsError, Status, WIRE_ERROR_CODES, hasCode, type ErrorCode } from '../src/errors.js';

const CODES = Object.keys(ErrorCodes) as ErrorCode[];
/** The codes only the client SDK produces (never sent by a KMS): the table's second part. */
const SDK_CODES: ErrorCode[] = ['INVALID_ARGUMENT', 'CONTENT_INVALID', 'ANSWER_INVALID', 'DISCOVERY_INVALID', 'CERTIFICATE_REFUSED', 'KMS_UNREACHABLE', 'CLIENT_CLOSED', 'KMS_TIMEOUT'];

test('the table says who produces each code: the SDK for its own failures, a KMS for the rest', () => {
  for (const code of CODES) assert.equal(ErrorCodes[code].by, SDK_CODES.includes(code) ? 'sdk' : 'kms', code);
  // One code per profile status reaches a client from the wire, and none of them is the SDK's.
  assert.deepEqual(WIRE_ERROR_CODES, ['INVALID_FIELD', 'CREDENTIAL_INVALID', 'NOT_AUTHORIZED', 'NOT_FOUND', 'KEY_ALREADY_BOUND', 'TOO_LARGE', 'RATE_LIMITED', 'CHANNEL_RESET', 'INTERNAL', 'PEER_FAILED', 'STORAGE_UNAVAILABLE', 'PEER_TIMEOUT']);
});
/** The error statuses of the profile (PROTOCOL.md §4). */
const WIRE_STATUSES = Object.values(Status).filter((s) => s >= 400);

test('every code has a status of the profile and a meaning; codes are upper snake case', () => {
  for (const code of CODES) {
    const { status, meaning } = ErrorCodes[code];
    assert.match(code, /^[A-Z]+(_[A-Z]+)*$/);
    assert.ok((WIRE_STATUSES as number[]).includes(status), `${code}: ${status} is not an error status of the profile`);
    assert.ok(meaning.length > 10, code);
  }
  for (const code of SDK_CODES) assert.ok(code in ErrorCodes, code);
});

test('a KmsError takes its status from its code; message is "status reason"', () => {
  for (const code of CODES) {
    const err = new KmsError(code, 'the reason');
    assert.equal(err.code, code);
    assert.equal(err.status, ErrorCodes[code].status);
    assert.equal(err.reason, 'the reason');
    assert.equal(err.message, `${ErrorCodes[code].status} the reason`);
    assert.equal(err.name, 'KmsError');
    assert.ok(err instanceof Error);
  }
});

test('fromWire: every error status of the profile gives the first code of that status, never an SDK code', () => {
  for (const status of WIRE_STATUSES) {
    const err = KmsError.fromWire(status, 'said by the KMS', { requestId: 'r-1' });
    const first = CODES.find((c) => ErrorCodes[c].status === status);
    assert.ok(first, `no code for status ${status}`);
    assert.equal(err.code, first, `status ${status}`);
    assert.equal(err.status, status);
    assert.equal(err.reason, 'said by the KMS', 'the reason travels as it was sent');
    assert.equal(err.requestId, 'r-1');
    assert.ok(!SDK_CODES.includes(err.code), `${status} must read as the KMS's code, not the SDK's ${err.code}`);
  }
  // The codes a client can receive: one per status; the others of a status are the KMS's own.
  assert.equal(KmsError.fromWire(400, 'x').code, 'INVALID_FIELD');
  assert.equal(KmsError.fromWire(502, 'x').code, 'PEER_FAILED');
  assert.equal(KmsError.fromWire(503, 'x').code, 'STORAGE_UNAVAILABLE');
  assert.equal(KmsError.fromWire(504, 'x').code, 'PEER_TIMEOUT');
});

test('fromWire: a status outside the profile (or a success status) is ANSWER_INVALID naming it', () => {
  for (const status of [200, 201, 302, 418, 422, 501, 600, -1]) {
    const err = KmsError.fromWire(status, 'whatever', { requestId: 7 });
    assert.equal(err.code, 'ANSWER_INVALID', String(status));
    assert.equal(err.status, 502);
    assert.match(err.reason, new RegExp(`status ${status} outside the profile: whatever`));
    assert.equal(err.requestId, 7);
  }
});

test('options: requestId, cause and the handshake flag are kept; absent, they are absent', () => {
  const socket = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:7001'), { code: 'ECONNREFUSED' });
  const err = new KmsError('KMS_UNREACHABLE', 'KMS unreachable', { requestId: 'abc', cause: socket });
  assert.equal(err.cause, socket);
  assert.equal(err.requestId, 'abc');
  assert.equal(err.handshake, false);
  const refused = KmsError.fromWire(401, 'handshake refused: bad token', { handshake: true, cause: socket });
  assert.equal(refused.handshake, true);
  assert.equal(refused.code, 'CREDENTIAL_INVALID');
  assert.equal(refused.cause, socket);
  const bare = new KmsError('NOT_FOUND', 'no such key');
  assert.equal(bare.requestId, undefined);
  assert.equal('cause' in bare, false, 'no cause member when there is none');
  assert.equal(bare.handshake, false);
});

test('the shorthands carry their codes', () => {
  assert.equal(KmsError.badRequest('count').code, 'INVALID_FIELD');
  assert.equal(KmsError.unauthorized().code, 'CREDENTIAL_INVALID');
  assert.equal(KmsError.forbidden().code, 'NOT_AUTHORIZED');
  assert.equal(KmsError.notFound().code, 'NOT_FOUND');
  assert.equal(KmsError.tooLarge('count').code, 'TOO_LARGE');
  assert.equal(KmsError.reset().code, 'CHANNEL_RESET');
});

test('hasCode: true only for a KmsError with one of the codes', () => {
  const err = new KmsError('KMS_TIMEOUT', 'slow');
  assert.equal(hasCode(err, 'KMS_TIMEOUT'), true);
  assert.equal(hasCode(err, 'KMS_UNREACHABLE', 'KMS_TIMEOUT'), true);
  assert.equal(hasCode(err, 'PEER_TIMEOUT'), false, 'the same status is not the same code');
  assert.equal(hasCode(err), false);
  assert.equal(hasCode(Object.assign(new Error('504 slow'), { code: 'KMS_TIMEOUT' }), 'KMS_TIMEOUT'), false, 'not a KmsError');
  assert.equal(hasCode(undefined, 'KMS_TIMEOUT'), false);
});

// ---- docs/errors.md ---------------------------------------------------------------------------

interface DocumentedCode {
  status: number;
  meaning: string;
  producedBy: string;
  advice: string;
}

/** The rows of the codes table: | `CODE` | status | meaning | produced by | what a client does | */
function documentedCodes(): Map<string, DocumentedCode> {
  const text = readFileSync(new URL('../../../../docs/errors.md', import.meta.url), 'utf8');
  const rows = new Map<string, DocumentedCode>();
  for (const line of text.split('\n')) {
    const m = /^\| `([A-Za-z_]+)` \| (\d+) \| (.+?) \| (.+?) \| (.+) \|$/.exec(line);
    if (!m) continue;
    assert.ok(!rows.has(m[1]!), `${m[1]} is documented twice`);
    rows.set(m[1]!, { status: Number(m[2]), meaning: m[3]!, producedBy: m[4]!, advice: m[5]! });
  }
  return rows;
}

test('docs/errors.md documents every code with its status, meaning, producer and advice', () => {
  const documented = documentedCodes();
  for (const code of CODES) {
    const row = documented.get(code);
    assert.ok(row, `${code} is missing from docs/errors.md`);
    assert.equal(row.status, ErrorCodes[code].status, `${code}: documented status`);
    assert.equal(row.meaning, ErrorCodes[code].meaning, `${code}: documented meaning`);
    assert.equal(row.producedBy, SDK_CODES.includes(code) ? 'SDK' : 'KMS', `${code}: produced by`);
    assert.ok(row.advice.length > 10, `${code}: what a client does`);
  }
});

test('docs/errors.md documents no code that does not exist', () => {
  const unknown = [...documentedCodes().keys()].filter((code) => !(code in ErrorCodes));
  assert.deepEqual(unknown, []);
});
