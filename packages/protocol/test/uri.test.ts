import assert from 'node:assert/strict';
import { test } from 'node:test';
import { absoluteUri, objectRef, parseKmsUri } from '../src/uri.js';

const ID = '7f35c3eb-95d6-4558-a7fc-1942e5f03094';

test('absolute and relative URIs name the same object', () => {
  assert.deepEqual(objectRef(`kms://kms.a.example/keys/${ID}`, 'keys', 'kms.a.example'), { authority: 'kms.a.example', id: ID });
  assert.deepEqual(objectRef(`/keys/${ID}`, 'keys', 'kms.a.example'), { authority: 'kms.a.example', id: ID });
  assert.deepEqual(objectRef(`kms://KMS.B.example/resources/${ID}`, 'resources', 'kms.a.example'), { authority: 'kms.b.example', id: ID });
  assert.equal(absoluteUri('kms.a.example', 'keys', ID), `kms://kms.a.example/keys/${ID}`);
});

test('objectRef refuses other collections, bad ids, queries and extra segments', () => {
  for (const uri of [`/resources/${ID}`, '/keys/not-a-uuid', `/keys/${ID}?x=1`, `/keys/${ID}/extra`, `keys/${ID}`, `http://x/keys/${ID}`, `kms://bad host/keys/${ID}`, '']) {
    assert.equal(objectRef(uri, 'keys', 'kms.a.example'), undefined, uri);
  }
});

test('parseKmsUri reads segments and the authId query', () => {
  const parsed = parseKmsUri(`/resources/${ID}/authorizations?authId=bob%40b.example`)!;
  assert.equal(parsed.authority, undefined);
  assert.deepEqual(parsed.segments, ['resources', ID, 'authorizations']);
  assert.equal(parsed.query.get('authId'), 'bob@b.example');
  assert.deepEqual(parseKmsUri('/ecdhe/')!.segments, ['ecdhe'], 'one trailing slash is tolerated');
  assert.equal(parseKmsUri('/keys//x'), undefined, 'empty segments are not');
  assert.equal(parseKmsUri('/ping?a=1&a=2'), undefined, 'repeated query parameters are refused');
  assert.equal(parseKmsUri('x'.repeat(3000)), undefined);
});
