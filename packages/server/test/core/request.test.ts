/**
 * Reading a request out of an opened message (src/core/request.ts): UTF-8, JSON, the basic
 * request schema with the requestId recorded even from a request that fails it, and the static
 * key's one operation.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Limits } from '@openkms/protocol';
import { newRecord } from '../../src/core/record.js';
import { onlyHandshake, parseJson, readRequest, text } from '../../src/core/request.js';
import { AUTHORITY, PEER_AUTHORITY, rejectsWith, requestOf } from '../support/core.js';

const enc = new TextEncoder();
const client = { clientId: 'client-1', credential: { bearer: 'b' } };

describe('text and parseJson', () => {
  test('UTF-8 is read as text, multi-byte characters included', () => {
    assert.equal(text(enc.encode('{"a":"é€😀"}')), '{"a":"é€😀"}');
  });

  test('bytes that are not UTF-8 are the client\'s error: PAYLOAD_INVALID 400', async () => {
    for (const bytes of [[0xff], [0xc3], [0xed, 0xa0, 0x80], [0x7b, 0x80, 0x7d]]) {
      await rejectsWith(() => text(new Uint8Array(bytes)), 'PAYLOAD_INVALID', 400, /not UTF-8/);
      await rejectsWith(() => parseJson(new Uint8Array(bytes)), 'PAYLOAD_INVALID', 400, /not UTF-8/);
    }
  });

  test('JSON is parsed; anything else is PAYLOAD_INVALID 400', async () => {
    assert.deepEqual(parseJson(enc.encode('{"method":"create"}')), { method: 'create' });
    for (const payload of ['', '{', 'not json', "{'a':1}", '{"a":1}}']) {
      await rejectsWith(() => parseJson(enc.encode(payload)), 'PAYLOAD_INVALID', 400, /not JSON/);
    }
  });

  test('JSON nested deeper than Limits.maxJsonDepth is refused before it is parsed: PAYLOAD_INVALID 400', async () => {
    const nested = (depth: number) => `{"requestId":1,"x":${'['.repeat(depth - 1)}${']'.repeat(depth - 1)}}`;
    assert.ok(parseJson(enc.encode(nested(Limits.maxJsonDepth))));
    for (const depth of [Limits.maxJsonDepth + 1, 100_000]) {
      const record = newRecord();
      await rejectsWith(() => parseJson(enc.encode(nested(depth)), record), 'PAYLOAD_INVALID', 400, new RegExp(`nests deeper than ${Limits.maxJsonDepth} levels`));
      assert.equal(record.requestId, 1, 'the refusal still echoes the requestId');
    }
  });
});

describe('readRequest', () => {
  test('a valid request is recorded (method, uri, clientId, requestId) and keeps its own members', () => {
    const record = newRecord();
    const request = readRequest({ requestId: 'r-1', client, method: 'create', uri: '/keys', count: 3 }, record);
    assert.deepEqual(request, { requestId: 'r-1', client, method: 'create', uri: '/keys', count: 3 });
    assert.deepEqual([record.requestId, record.method, record.uri, record.clientId], ['r-1', 'create', '/keys', 'client-1']);
  });

  test('the requestId is recorded even when the request fails validation, so the error can echo it', async () => {
    for (const [requestId, raw] of [
      ['r-2', { requestId: 'r-2', client, uri: '/keys' }],
      [42, { requestId: 42, method: 'create', uri: '/keys' }],
      ['r-3', { requestId: 'r-3', client, method: 'frobnicate', uri: '/keys' }],
    ] as const) {
      const record = newRecord();
      await rejectsWith(() => readRequest(raw, record), 'INVALID_FIELD', 400);
      assert.equal(record.requestId, requestId);
      assert.equal(record.method, null, 'nothing else of an invalid request is recorded');
    }
  });

  test('a requestId the schema refuses is not recorded either', async () => {
    for (const requestId of ['x'.repeat(Limits.maxIdChars + 1), 1.5, Number.MAX_SAFE_INTEGER + 2, { id: 1 }, ['r']]) {
      const record = newRecord();
      await rejectsWith(() => readRequest({ requestId, client, method: 'create', uri: '/keys' }, record), 'INVALID_FIELD', 400);
      assert.equal(record.requestId, undefined, JSON.stringify(requestId));
    }
    const longest = newRecord();
    readRequest({ requestId: 'x'.repeat(Limits.maxIdChars), client, method: 'create', uri: '/keys' }, longest);
    assert.equal(longest.requestId, 'x'.repeat(Limits.maxIdChars));
  });

  test('a payload that is not an object is a 400 and records nothing', async () => {
    for (const raw of [null, 'r-1', 7, [{ requestId: 'r-1' }]]) {
      const record = newRecord();
      await rejectsWith(() => readRequest(raw, record), 'INVALID_FIELD', 400);
      assert.deepEqual(record, newRecord());
    }
  });
});

describe('onlyHandshake', () => {
  test('create /ecdhe of this KMS passes, relative or absolute', () => {
    for (const uri of ['/ecdhe', `kms://${AUTHORITY}/ecdhe`]) {
      const request = requestOf('create', uri);
      assert.equal(onlyHandshake(request, AUTHORITY), request, uri);
    }
  });

  test('anything else under the static key is a 400, before any credential is read', async () => {
    for (const [method, uri] of [
      ['retrieve', '/ecdhe'],
      ['delete', '/ecdhe'],
      ['create', `kms://${PEER_AUTHORITY}/ecdhe`],
      ['create', '/ecdhe/0b0e0f6c-2c5d-4a51-9f07-7b6f0b1f1e43'],
      ['create', '/keys'],
      ['update', '/ping'],
      ['create', 'not a uri'],
    ] as const) {
      await rejectsWith(() => onlyHandshake(requestOf(method, uri), AUTHORITY), 'INVALID_FIELD', 400, /static key only takes create \/ecdhe/);
    }
  });
});
