/** Bounded JSON (src/json.ts): nesting counted outside strings, refused past the limit before parsing. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Limits, jsonDepthWithin, parseBoundedJson, topLevelMember } from '../src/index.js';

describe('jsonDepthWithin / parseBoundedJson', () => {
  test('arrays and objects count, at the limit and one past it', () => {
    assert.equal(jsonDepthWithin('{"a":[{"b":[]}]}', 4), true);
    assert.equal(jsonDepthWithin('{"a":[{"b":[]}]}', 3), false);
    assert.equal(jsonDepthWithin('[]'.repeat(1000), 1), true, 'siblings are not nesting');
    assert.equal(jsonDepthWithin('1', 0), true);
  });

  test('brackets inside strings, escaped quotes included, do not count', () => {
    assert.equal(jsonDepthWithin(JSON.stringify({ a: '[[[[{{{{', b: 'say \\"[[[[\\"', c: '\\' }), 1), true);
    assert.equal(jsonDepthWithin('{"a":"\\\\"}', 1), true, 'an escaped backslash ends before the quote');
  });

  test('parseBoundedJson parses within the limit and throws a SyntaxError past it, as for text that is not JSON', () => {
    const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);
    assert.deepEqual(parseBoundedJson('{"a":[1]}'), { a: [1] });
    assert.ok(parseBoundedJson(deep(Limits.maxJsonDepth)));
    assert.throws(() => parseBoundedJson(deep(Limits.maxJsonDepth + 1)), SyntaxError);
    assert.throws(() => parseBoundedJson('{'), SyntaxError);
  });
});

describe('topLevelMember', () => {
  const deep = '['.repeat(10_000) + ']'.repeat(10_000);
  test('a string or number member of the top-level object, whatever nests after or before it', () => {
    assert.equal(topLevelMember(`{"requestId":"r-1","x":${deep}}`, 'requestId'), 'r-1');
    assert.equal(topLevelMember(`{"x":${deep}, "requestId" : 42}`, 'requestId'), 42);
    assert.equal(topLevelMember('{"requestId":"a \\"quoted\\" \\u00e9"}', 'requestId'), 'a "quoted" é');
  });

  test('not a nested member, a key inside a string, or a value that names it; the last occurrence wins', () => {
    assert.equal(topLevelMember('{"x":{"requestId":"inner"}}', 'requestId'), undefined);
    assert.equal(topLevelMember('{"x":"\\"requestId\\":1"}', 'requestId'), undefined);
    assert.equal(topLevelMember('{"x":"requestId","y":1}', 'requestId'), undefined);
    assert.equal(topLevelMember('{"requestId":"a","requestId":"b"}', 'requestId'), 'b');
    assert.equal(topLevelMember('{"requestId":[1]}', 'requestId'), undefined);
    assert.equal(topLevelMember('{"requestId":"unterminated', 'requestId'), undefined);
  });
});

