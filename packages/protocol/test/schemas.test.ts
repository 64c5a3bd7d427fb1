import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KmsError } from '../src/errors.js';
import { Limits } from '../src/limits.js';
import { basicRequestSchema, readBasicRequest, bindKeySchema, bulkDeleteAuthorizationsSchema, invalidationsSchema, createCmkSchema, createKeysSchema, createResourceSchema, ecdheSchema, retrieveKeysSchema, validate } from '../src/schemas.js';
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

// readBasicRequest checks the common shape by hand and leaves the rest to zod: over generated
// requests, near-valid and broken, it gives what validate(basicRequestSchema) gives — the same
// members in the same order, or the same refusal. A failing seed is printed (BASIC_REQUEST_SEED).
test('readBasicRequest agrees with validate(basicRequestSchema) on generated requests', () => {
  const seed = Number(process.env.BASIC_REQUEST_SEED ?? (Date.now() >>> 0));
  let state = seed >>> 0;
  const rand = (): number => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const strings = (limit: number, empty = true): unknown[] => [
    'ok', 'alice@a.example', 'kms://kms.a.example/keys/5b0c8f2e-1b2c-4d5e-8f9a-0b1c2d3e4f5a', ...(empty ? [''] : []),
    'x'.repeat(limit), 'x'.repeat(limit + 1), 'a\u0000b', 'tab\there', 'del\u007f', 'lone\ud800', '\udc00lone', 'pair\ud83d\ude00', 'é€😀',
    7, 1.5, null, true, {}, [], undefined,
  ];
  const variants = {
    requestId: [...strings(Limits.maxIdChars), 0, -0, 42, -7, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 1, -Number.MAX_SAFE_INTEGER - 2, NaN, Infinity],
    clientId: strings(Limits.maxIdChars),
    userId: strings(Limits.maxIdChars),
    bearer: strings(Limits.maxBearerChars),
    onBehalfOf: strings(Limits.maxIdChars),
    method: ['create', 'retrieve', 'update', 'delete', 'patch', 'CREATE', '', 1, null, undefined],
    uri: strings(Limits.maxUriChars),
  };
  const maybe = (o: Record<string, unknown>, name: keyof typeof variants, p: number, fallback: unknown): void => {
    const r = rand();
    if (r < p) o[name] = pick(variants[name]);
    else if (r < p + 0.05) return; // absent
    else o[name] = fallback;
  };
  let agreedOk = 0;
  let agreedRefused = 0;
  for (let i = 0; i < 5000; i++) {
    const credential: Record<string, unknown> = {};
    if (rand() < 0.3) maybe(credential, 'userId', 0.3, 'device-1');
    maybe(credential, 'bearer', 0.15, 'token');
    if (rand() < 0.1) maybe(credential, 'onBehalfOf', 0.3, 'bob@a.example');
    if (rand() < 0.05) credential.jwk = pick([{ kty: 'RSA', n: 'AQAB', e: 'AQAB' }, { 'lone\ud800': 1 }, 'jwk', null]);
    if (rand() < 0.05) credential[pick(['extra', '__proto__', 'constructor', 'toString'])] = pick(['x', 1, {}]);
    const client: Record<string, unknown> = { credential: rand() < 0.03 ? pick([null, 'c', [], undefined]) : credential };
    maybe(client, 'clientId', 0.15, 'client-1');
    if (rand() < 0.05) client.extra = 'x';
    const request: Record<string, unknown> = { client: rand() < 0.03 ? pick([null, 'c', [], undefined]) : client };
    maybe(request, 'requestId', 0.2, 'r-1');
    maybe(request, 'method', 0.15, 'retrieve');
    maybe(request, 'uri', 0.15, '/keys');
    if (rand() < 0.1) request.resourceUri = '/resources/x';
    const input: unknown = rand() < 0.02 ? pick([null, [], 'request', 42]) : request;
    const outcome = (read: () => unknown): { ok: true; value: unknown; text: string } | { ok: false; code: string; reason: string } => {
      try {
        const value = read();
        return { ok: true, value, text: JSON.stringify(value) };
      } catch (err) {
        assert.ok(err instanceof KmsError, String(err));
        return { ok: false, code: err.code, reason: err.reason };
      }
    };
    const byZod = outcome(() => validate(basicRequestSchema, input));
    const byHand = outcome(() => readBasicRequest(input));
    const where = `#${i} ${JSON.stringify(input)} (BASIC_REQUEST_SEED=${seed})`;
    assert.deepEqual(byHand, byZod, where);
    if (byZod.ok) agreedOk++;
    else agreedRefused++;
  }
  assert.ok(agreedOk > 500 && agreedRefused > 500, `both outcomes exercised: ${agreedOk} accepted, ${agreedRefused} refused (BASIC_REQUEST_SEED=${seed})`);
});

test('text checks: the one-pass screen never lets through what the precise checks refuse', () => {
  // Every character class the screen is about, alone, paired and next to others.
  const pieces = ['a', 'é', '\u0000', '\u0001', '\u001f', ' ', '\u007f', '\u0080', '\ud800', '\udbff', '\udc00', '\udfff', '\ud83d\ude00', '\ufffd'];
  for (const a of pieces) {
    for (const b of pieces) {
      for (const value of [a + b, `x${a}y${b}z`]) {
        const lone = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(value);
        assert.equal(isWellFormedText(value), !lone && !value.includes('\u0000'), JSON.stringify(value));
        assert.equal(isPlainText(value), !lone && !/[\u0000-\u001f\u007f]/.test(value), JSON.stringify(value));
        assert.equal(textProblem(value, true) === undefined, isPlainText(value), JSON.stringify(value));
        assert.equal(textProblem(value) === undefined, isWellFormedText(value), JSON.stringify(value));
      }
    }
  }
});
