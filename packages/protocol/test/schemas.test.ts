import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KmsError } from '../src/errors.js';
import { basicRequestSchema, createKeysSchema, createResourceSchema, retrieveKeysSchema, validate } from '../src/schemas.js';

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
  assert.ok(validate(retrieveKeysSchema, { boundAfter: '2026-11-28T21:05:03.123Z' }));
  refused(() => validate(retrieveKeysSchema, { boundAfter: 'yesterday' }), 400, /boundAfter/);
});
