/**
 * The request limits (src/rate-limit.ts): a fixed one-minute window per key, each key counted on
 * its own (one key past its limit leaves every other key's count alone), peers not counted by the
 * per-principal limit, and client addresses keyed so that one host is one key.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { addressKey, PrincipalLimit, RateLimiter } from '../src/rate-limit.js';

describe('RateLimiter', () => {
  test('allows perMinute per key in a window, refuses past it, and allows again in the next window', () => {
    let t = 1_000_000;
    const limiter = new RateLimiter(3, () => t);
    assert.deepEqual([1, 2, 3, 4, 5].map(() => limiter.allow('a')), [true, true, true, false, false]);
    assert.equal(limiter.allow('b'), true, 'another key has its own window');
    t += 59_999;
    assert.equal(limiter.allow('a'), false, 'the window is a minute');
    t += 1;
    assert.deepEqual([1, 2, 3, 4].map(() => limiter.allow('a')), [true, true, true, false]);
  });

  test('a key flooding past its limit does not use up another key\'s', () => {
    const limiter = new RateLimiter(10, () => 0);
    let refused = 0;
    for (let i = 0; i < 10_000; i++) if (!limiter.allow('flood')) refused++;
    assert.equal(refused, 9_990);
    assert.deepEqual(Array.from({ length: 10 }, () => limiter.allow('quiet')), Array(10).fill(true));
  });

  test('0 turns it off', () => {
    const limiter = new RateLimiter(0, () => 0);
    for (let i = 0; i < 1000; i++) assert.equal(limiter.allow('a'), true);
  });

  test('many keys: the ended windows are dropped, and a new key is never refused for want of room', () => {
    let t = 0;
    const limiter = new RateLimiter(1, () => t);
    for (let i = 0; i < 100_010; i++) limiter.allow(`k${i}`);
    t += 60_000;
    for (let i = 0; i < 100_010; i++) assert.equal(limiter.allow(`n${i}`), true);
    assert.equal(limiter.allow('k0'), true, 'its window ended: counted afresh');
  });
});

describe('PrincipalLimit', () => {
  test('counts users and bearers, not peer KMSs (kms://authority)', () => {
    const limit = new PrincipalLimit(new RateLimiter(1, () => 0));
    assert.equal(limit.allow('alice@a.example'), true);
    assert.equal(limit.allow('alice@a.example'), false);
    const bearer = 'kms://kms.a.example/resources/r1/authorizations/x';
    assert.equal(limit.allow(bearer), true);
    assert.equal(limit.allow(bearer), false, 'an anonymous bearer is a principal like a user');
    for (let i = 0; i < 5; i++) assert.equal(limit.allow('kms://kms.b.example'), true);
  });
});

describe('addressKey', () => {
  test('IPv4 as it is, also when mapped into IPv6', () => {
    assert.equal(addressKey('127.0.0.2'), '127.0.0.2');
    assert.equal(addressKey('::ffff:10.1.2.3'), '10.1.2.3');
    assert.equal(addressKey('::FFFF:10.1.2.3'), '10.1.2.3');
  });

  test('IPv6 by its /64, however it is written', () => {
    const key = addressKey('2001:db8:1:2::1');
    assert.equal(key, '2001:db8:1:2::/64');
    assert.equal(addressKey('2001:0db8:0001:0002:ffff:ffff:ffff:ffff'), key);
    assert.equal(addressKey('2001:DB8:1:2:0:0:0:9%eth0'), key);
    assert.notEqual(addressKey('2001:db8:1:3::1'), key);
    assert.equal(addressKey('::1'), '0:0:0:0::/64');
    assert.equal(addressKey('fe80::1'), 'fe80:0:0:0::/64');
  });

  test('no address (an in-process caller) is one key of its own', () => {
    assert.equal(addressKey(undefined), 'unknown');
    assert.equal(addressKey(''), 'unknown');
  });
});
