/**
 * The strict reader's rules (src/strict-jose.ts), each both ways: canonical base64url against every
 * way Node's lenient decoder would still read a segment, and the protected-header member rules of a
 * JWE and of a JWS.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { isCanonicalBase64url, protectedHeaderProblem } from '../src/index.js';

describe('isCanonicalBase64url', () => {
  test('the encoding of every length of bytes is canonical, and it is the only one Buffer re-encodes to itself', () => {
    for (let n = 0; n < 70; n++) {
      const segment = randomBytes(n).toString('base64url');
      assert.equal(isCanonicalBase64url(segment), true, segment);
      // every other value of the last character that decodes to the same bytes is refused
      if (segment.length % 4 >= 2) {
        const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
        for (const c of alphabet) {
          const other = segment.slice(0, -1) + c;
          const canonical = Buffer.from(other, 'base64url').toString('base64url') === other;
          assert.equal(isCanonicalBase64url(other), canonical, other);
        }
      }
    }
  });

  test('padding, the standard alphabet, whitespace, other characters and an impossible length are refused', () => {
    for (const segment of ['AA==', 'AAA=', 'AB+/', 'AB/C', 'AA AA', 'AAAA\n', '\tAAAA', 'AA.A', 'AAA!', 'é', 'A', 'AAAAA', 'AAAA=']) {
      assert.equal(isCanonicalBase64url(segment), false, JSON.stringify(segment));
    }
    assert.equal(isCanonicalBase64url(''), true, 'no bytes, no characters');
  });
});

describe('protectedHeaderProblem', () => {
  const algs = ['dir'];
  const check = (header: unknown) => protectedHeaderProblem(header, algs, 'A256GCM');

  test('alg and enc with the expected values, kid and cty strings, in any order', () => {
    assert.equal(check({ alg: 'dir', enc: 'A256GCM' }), undefined);
    assert.equal(check({ alg: 'dir', enc: 'A256GCM', kid: 'kms://kms.a.example/ecdhe/1' }), undefined);
    assert.equal(check({ kid: '', cty: 'JOSE', enc: 'A256GCM', alg: 'dir' }), undefined);
    assert.equal(protectedHeaderProblem({ alg: 'RSA-OAEP-256', enc: 'A256GCM' }, ['RSA-OAEP', 'RSA-OAEP-256'], 'A256GCM'), undefined);
  });

  test('anything else is refused, naming why', () => {
    for (const value of [null, [], 'dir', 1, true]) assert.equal(check(value), 'not an object', JSON.stringify(value));
    for (const member of ['zip', 'crit', 'jku', 'jwk', 'x5u', 'x5c', 'epk', 'p2s', 'typ', 'iv', 'tag', 'b64']) {
      assert.equal(check({ alg: 'dir', enc: 'A256GCM', [member]: 'x' }), 'unsupported member', member);
    }
    assert.equal(check(JSON.parse('{"alg":"dir","enc":"A256GCM","__proto__":{"kid":"x"}}')), 'unsupported member', 'an own __proto__ member');
    for (const value of [1, null, {}, ['a'], true]) {
      assert.equal(check({ alg: 'dir', enc: 'A256GCM', kid: value }), 'member of the wrong type', `kid ${JSON.stringify(value)}`);
      assert.equal(check({ alg: 'dir', enc: 'A256GCM', cty: value }), 'member of the wrong type', `cty ${JSON.stringify(value)}`);
    }
    for (const alg of [undefined, 'DIR', 'dir ', 'RSA-OAEP', 'none', 1]) assert.equal(check({ alg, enc: 'A256GCM' }), 'alg not allowed', String(alg));
    for (const enc of [undefined, 'A128GCM', 'a256gcm', null]) assert.equal(check({ alg: 'dir', enc }), 'enc not allowed', String(enc));
  });

  test('a JWS header (no enc expected): alg, kid and cty only', () => {
    const jws = (header: unknown) => protectedHeaderProblem(header, ['PS256']);
    assert.equal(jws({ alg: 'PS256', kid: 'kms://kms.a.example' }), undefined);
    assert.equal(jws({ kid: 'kms://kms.a.example', alg: 'PS256', cty: 'JWT' }), undefined);
    assert.equal(jws({ alg: 'PS256', enc: 'A256GCM' }), 'unsupported member');
    for (const member of ['b64', 'crit', 'typ', 'jwk', 'x5c']) assert.equal(jws({ alg: 'PS256', [member]: false }), 'unsupported member', member);
    for (const alg of ['RS256', 'PS384', 'none', 'ps256', undefined]) assert.equal(jws({ alg }), 'alg not allowed', String(alg));
  });
});
