import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KmsError } from '../src/errors.js';
import { basicRequestSchema, bindKeySchema, bulkDeleteAuthorizationsSchema, invalidationsSchema, createCmkSchema, createKeysSchema, createResourceSchema, ecdheSchema, retrieveKeysSchema, validate } from '../src/schemas.js';
import { isPlainText, isWellFormedText, textProblem } from '../src/text.js';

const base = { requestId: 'r1', client: { clientId: 'c', credential: { bearer: 't' } }, method: 'create', uri: '/keys' };

function refused(fn: () => unknown, status: number, field: RegExp): void {
  assert.throws(fn, (err: unknown) => err instanceof KmsError && err.status === status && field.test(err.reason));
}

test('the basic request: required members, types, reasons naming the field', () => {
  assert.equal(validate(basicRequestSchema, base).uri, '/keys');
  assert.equal(validate(basicRequestSchema, { ...base, requestId: 42 }).requestId, 42);
  refused(() => validate(basicRequestSchema, { ...base, requestId: undefined }), 400, /requestId/);
  refused(() => validate(basicRequestSchema, { ...base, requestId: 1.5 }), 400, /requestId/);
  refused(() => validate(basicRequestSchema, { ...base, method: 'patch' }), 400, /method/);
  refused(() => validate(basicRequestSchema, { ...base, client: { clientId: 'c' } }), 400, /client\.credential/);
  refused(() => validate(basicRequestSchema, { ...base, client: { clientId: 7, credential: {} } }), 400, /client\.clientId/);
  refused(() => validate(basicRequestSchema, { ...base, uri: '' }), 400, /uri/);
  refused(() => validate(basicRequestSchema, null), 400, /payload/);
  refused(() => validate(basicRequestSchema, { ...base, client: { clientId: 'c', credential: { bearer: 'x'.repeat(20000) } } }), 400, /bearer/);
});

test('operation members', () => {
  assert.equal(validate(createKeysSchema, { count: 3 }).count, 3);
  refused(() => validate(createKeysSchema, { count: '3' }), 400, /count/);
  refused(() => validate(createKeysSchema, {}), 400, /count: missing/);
  refused(() => validate(createResourceSchema, { authIds: Array.from({ length: 101 }, (_, i) => `u${i}`) }), 413, /authIds/);
  refused(() => validate(createResourceSchema, { ttl: -1 }), 400, /ttl/);
  assert.ok(validate(bulkDeleteAuthorizationsSchema, { resourceUri: '/resources/x', authIds: ['bob@a.example'] }));
  refused(() => validate(bulkDeleteAuthorizationsSchema, { resourceUri: '/resources/x', authIds: [] }), 400, /authIds/);
  assert.ok(validate(invalidationsSchema, { resourceUris: ['kms://kms.b.example/resources/x'] }));
  refused(() => validate(invalidationsSchema, { resourceUris: [] }), 400, /resourceUris/);
  assert.ok(validate(retrieveKeysSchema, { boundAfter: '2026-11-28T21:05:03.123Z' }));
  refused(() => validate(retrieveKeysSchema, { boundAfter: 'yesterday' }), 400, /boundAfter/);
});

// A hostile list of thousands of entries (found by the fuzz campaign): its length is refused
// before any entry is validated, so entries that are all wrong still make it a 413, not a 400 for
// the first of them after every one was checked.
test('a list over the limit is refused for its length before its entries are read', () => {
  const numbers = Array.from({ length: 20_000 }, (_, i) => i);
  refused(() => validate(createResourceSchema, { authIds: numbers }), 413, /^authIds: more than 100 entries$/);
  refused(() => validate(createResourceSchema, { keyUris: numbers }), 413, /^keyUris: more than 100 entries$/);
  refused(() => validate(bulkDeleteAuthorizationsSchema, { resourceUri: '/resources/x', authIds: numbers }), 413, /^authIds: more than/);
  refused(() => validate(invalidationsSchema, { resourceUris: numbers }), 413, /^resourceUris: more than/);
  // Within the limit, the first wrong entry is named as before.
  refused(() => validate(createResourceSchema, { authIds: numbers.slice(0, 100) }), 400, /^invalid field authIds\.0: /);
});

test('well-formed and plain text: lone surrogates and U+0000 refused, pairs and other text kept', () => {
  for (const ok of ['', 'alice@a.example', '😀', 'a\ud83d\ude00b', 'ß İ \ufeff\u202e\u2028', '\uffff']) {
    assert.ok(isWellFormedText(ok), JSON.stringify(ok));
    assert.ok(isPlainText(ok), JSON.stringify(ok));
  }
  for (const bad of ['\ud800', '\udfff', 'a\ud800', '\udc00a', '\ude00\ud83d', '\u0000', 'a\u0000b']) {
    assert.ok(!isWellFormedText(bad), JSON.stringify(bad));
    assert.ok(!isPlainText(bad), JSON.stringify(bad));
  }
  for (const control of ['\u0007', 'a\nb', '\u001b', '\u007f', '\t']) {
    assert.ok(isWellFormedText(control), JSON.stringify(control));
    assert.ok(!isPlainText(control), JSON.stringify(control));
  }
  assert.equal(textProblem('x\ud800'), 'contains a lone UTF-16 surrogate');
  assert.equal(textProblem('x\u0000'), 'contains U+0000');
  assert.equal(textProblem('x\n'), undefined);
  assert.equal(textProblem('x\n', true), 'contains a control character');
});

test('every string member of a request is refused with a 400 naming it when it is not plain text', () => {
  const c = (patch: Record<string, unknown>) => ({ ...base, client: { clientId: 'c', credential: { bearer: 't', ...patch } } });
  for (const junk of ['\ud800', '\udfff', '\u0000', '\u0007']) {
    refused(() => validate(basicRequestSchema, { ...base, requestId: `r${junk}` }), 400, /invalid field requestId: contains/);
    refused(() => validate(basicRequestSchema, { ...base, client: { clientId: `c${junk}`, credential: {} } }), 400, /invalid field client\.clientId: contains/);
    refused(() => validate(basicRequestSchema, { ...base, uri: `/keys${junk}` }), 400, /invalid field uri: contains/);
    refused(() => validate(basicRequestSchema, c({ bearer: `t${junk}` })), 400, /client\.credential\.bearer: contains/);
    refused(() => validate(basicRequestSchema, c({ userId: `u${junk}` })), 400, /client\.credential\.userId: contains/);
    refused(() => validate(createResourceSchema, { authIds: ['bob@a.example', `x${junk}`] }), 400, /authIds\.1: contains/);
    refused(() => validate(createResourceSchema, { keyUris: [`/keys/${junk}`] }), 400, /keyUris\.0: contains/);
    refused(() => validate(bindKeySchema, { resourceUri: `/resources/${junk}` }), 400, /resourceUri: contains/);
    refused(() => validate(createCmkSchema, { assignedOrgId: `o${junk}` }), 400, /assignedOrgId: contains/);
    refused(() => validate(ecdheSchema, { jwk: { kty: 'EC', crv: `P-256${junk}` } }), 400, /jwk\.crv: contains/);
  }
  // A surrogate pair is text like any other.
  assert.equal(validate(basicRequestSchema, { ...base, requestId: 'r😀', client: { clientId: 'c😀', credential: {} } }).client.clientId, 'c😀');
});
