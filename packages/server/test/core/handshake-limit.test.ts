/**
 * The per-address handshake limit (src/core/handshake-limit.ts): counted by the address's key, and
 * its refusal echoes the handshake's requestId (a user's JSON, or the payload of a peer's JWS,
 * unverified) so that the client can match it; nothing is echoed when none can be read.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { admitHandshake } from '../../src/core/handshake-limit.js';
import { newRecord } from '../../src/core/record.js';
import { RateLimiter } from '../../src/rate-limit.js';
import { rejectsWith } from '../support/core.js';

const bytes = (text: string) => new TextEncoder().encode(text);
const jws = (payload: unknown) => `${Buffer.from('{"alg":"PS256"}').toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.c2ln`;

test('counted per address (IPv6 per /64); a refusal is RATE_LIMITED 429 with the requestId of a user\'s or a peer\'s handshake', async () => {
  const limiter = new RateLimiter(1, () => 0);
  const user = { plaintext: bytes(JSON.stringify({ requestId: 'r-1', method: 'create', uri: '/ecdhe' })), cty: undefined };
  admitHandshake(limiter, '10.0.0.1', user, newRecord());
  admitHandshake(limiter, '2001:db8::1', user, newRecord());
  const record = newRecord();
  await rejectsWith(() => admitHandshake(limiter, '10.0.0.1', user, record), 'RATE_LIMITED', 429);
  assert.equal(record.requestId, 'r-1');
  const peer = newRecord();
  await rejectsWith(() => admitHandshake(limiter, '2001:db8:0:0:ffff::2', { plaintext: bytes(jws({ requestId: 7 })), cty: 'JOSE' }, peer), 'RATE_LIMITED', 429);
  assert.equal(peer.requestId, 7);
  for (const plaintext of [bytes('not json'), new Uint8Array([0xff, 0xfe]), bytes(JSON.stringify({ requestId: 'a\u0000b' }))]) {
    const none = newRecord();
    await rejectsWith(() => admitHandshake(limiter, '10.0.0.1', { plaintext, cty: undefined }, none), 'RATE_LIMITED', 429);
    assert.equal(none.requestId, undefined);
  }
  admitHandshake(limiter, '10.0.0.2', user, newRecord());
});
