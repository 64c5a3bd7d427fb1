/**
 * Stage 1, open (src/core/open.ts): which key a message is under and its plaintext. Whatever
 * cannot be opened is a reset (CHANNEL_RESET: handshake again); a storage failure is not. The
 * channel lookup is the only port: an in-memory map that counts what it was asked and can fail.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import { KmsError, Limits, encryptStatic, joseCodec } from '@openkms/protocol';
import type { Channel } from '../../src/channels.js';
import { newRecord } from '../../src/core/record.js';
import { Opener, peerOwning, type ChannelLookup } from '../../src/core/open.js';
import { fastCodec } from '../../src/codec/fast-codec.js';
import { AUTHORITY, PEER_AUTHORITY, channelOf, rejectsWith, staticKeyPair } from '../support/core.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

class Lookup implements ChannelLookup {
  readonly asked: string[] = [];
  readonly channels = new Map<string, Channel>();
  failure: Error | undefined;

  async get(id: string): Promise<Channel | undefined> {
    this.asked.push(id);
    if (this.failure) throw this.failure;
    return this.channels.get(id);
  }
}

const staticKey = staticKeyPair();
const lookup = new Lookup();
const opener = new Opener(AUTHORITY, staticKey, lookup, joseCodec);
const channel = channelOf('alice@a.example');
lookup.channels.set(channel.id, channel);

const underChannel = (plaintext: string, kid = channel.uri, key = channel.key.reveal(), cty?: string) => joseCodec.encryptChannel(enc.encode(plaintext), key, kid, cty);
const reset = (message: unknown) => rejectsWith(opener.open(message as string, newRecord()), 'CHANNEL_RESET', 499);

describe('the shape of a message', () => {
  test('anything but a compact JWE of 5 segments is a reset', async () => {
    const jws = await joseCodec.signStatic(enc.encode('{}'), staticKey.privateKey, staticKey.kid);
    for (const message of ['', 'a.b.c.d', 'a.b.c.d.e.f', jws, 42, null, undefined]) await reset(message);
  });

  test('five segments that are not a JWE are a reset', async () => {
    await reset('a.b.c.d.e');
    await reset(`${Buffer.from('{"alg":"none"}').toString('base64url')}.b.c.d.e`);
  });

  test('a message longer than the limit is a reset, and nothing is looked up for it', async () => {
    const asked = lookup.asked.length;
    const valid = await underChannel('{}');
    await reset(valid + 'A'.repeat(Limits.maxMessageChars - valid.length + 1));
    assert.equal(lookup.asked.length, asked);
    // The same message within the limit opens.
    assert.equal(dec.decode((await opener.open(valid, newRecord())).plaintext), '{}');
  });
});

describe('under a channel key', () => {
  test('opens with its channel, plaintext and cty', async () => {
    const opened = await opener.open(await underChannel('{"a":1}'), newRecord());
    assert.equal(opened.channel, channel);
    assert.equal(dec.decode(opened.plaintext), '{"a":1}');
    assert.equal(opened.cty, undefined);
    assert.equal((await opener.open(await underChannel('x', channel.uri, undefined, 'JOSE'), newRecord())).cty, 'JOSE');
  });

  test('the kid may be relative: /ecdhe/<id> is this KMS\'s channel', async () => {
    assert.equal((await opener.open(await underChannel('{}', `/ecdhe/${channel.id}`), newRecord())).channel, channel);
  });

  test('an unknown channel is a reset', async () => {
    const id = randomUUID();
    await reset(await underChannel('{}', `kms://${AUTHORITY}/ecdhe/${id}`));
    assert.equal(lookup.asked.at(-1), id, 'the lookup was asked for it');
  });

  test('a kid of another authority, or not naming a channel by its UUID, is a reset without asking storage', async () => {
    const asked = lookup.asked.length;
    for (const kid of [
      `kms://${PEER_AUTHORITY}/ecdhe/${channel.id}`,
      `kms://${AUTHORITY}/keys/${channel.id}`,
      `kms://${AUTHORITY}/ecdhe/${channel.id}/more`,
      `kms://${AUTHORITY}/ecdhe`,
      `kms://${AUTHORITY}/ecdhe/not-a-uuid`,
      channel.id,
      'not a uri',
    ]) {
      await reset(await underChannel('{}', kid));
    }
    assert.equal(lookup.asked.length, asked);
  });

  test('a message under another key than its channel\'s is a reset', async () => {
    await reset(await underChannel('{}', channel.uri, randomBytes(32)));
  });

  test('a tampered message is a reset', async () => {
    const parts = (await underChannel('{"a":1}')).split('.');
    parts[3] = Buffer.from(Buffer.from(parts[3]!, 'base64url').map((b) => b ^ 1)).toString('base64url');
    await reset(parts.join('.'));
  });

  test('a storage failure of the lookup propagates as it is: it is not a reset', async () => {
    const failing = new Lookup();
    failing.failure = new Error('database is locked');
    const err = await new Opener(AUTHORITY, staticKey, failing, joseCodec).open(await underChannel('{}'), newRecord()).then(
      () => assert.fail('opened'),
      (e: unknown) => e,
    );
    assert.equal(err, failing.failure);
    assert.ok(!(err instanceof KmsError));
  });
});

describe('under the static key', () => {
  test('opens with no channel, its plaintext and its cty', async () => {
    const plain = await opener.open(await encryptStatic(enc.encode('{"h":1}'), staticKey.publicKey, staticKey.kid), newRecord());
    assert.equal(plain.channel, undefined);
    assert.equal(dec.decode(plain.plaintext), '{"h":1}');
    assert.equal(plain.cty, undefined);
    const nested = await opener.open(await encryptStatic(enc.encode('a.b.c'), staticKey.publicKey, staticKey.kid, 'JOSE'), newRecord());
    assert.equal(nested.cty, 'JOSE');
    assert.equal(dec.decode(nested.plaintext), 'a.b.c');
  });

  test('another kid than this KMS\'s static key is a reset', async () => {
    await reset(await encryptStatic(enc.encode('{}'), staticKey.publicKey, `kms://${PEER_AUTHORITY}`));
  });

  test('encrypted to another key under this KMS\'s kid is a reset', async () => {
    const other = staticKeyPair();
    await reset(await encryptStatic(enc.encode('{}'), other.publicKey, staticKey.kid));
  });
});

describe('peerOwning', () => {
  test('a channel owned by kms://<authority> is that peer\'s; a user\'s or an anonymous bearer\'s is nobody\'s', () => {
    assert.equal(peerOwning(channelOf(`kms://${PEER_AUTHORITY}`)), PEER_AUTHORITY);
    assert.equal(peerOwning(channelOf('alice@a.example')), undefined);
    assert.equal(peerOwning(channelOf(`kms://${AUTHORITY}/authorizations/${randomUUID()}`)), undefined);
  });
});

describe('the record', () => {
  test('a message naming the static key is recorded as a handshake, even when it does not open', async () => {
    const record = newRecord();
    const garbled = (await encryptStatic(enc.encode('{}'), staticKey.publicKey, staticKey.kid)).split('.');
    garbled[4] = garbled[4]!.slice(0, -2) + (garbled[4]!.endsWith('AA') ? 'BB' : 'AA');
    await rejectsWith(opener.open(garbled.join('.'), record), 'CHANNEL_RESET', 499);
    assert.equal(record.op, 'createEphemeralKey');
    const other = newRecord();
    await opener.open(await underChannel('{}'), other);
    assert.equal(other.op, 'reset', 'a channel message is not labelled a handshake');
  });
});

describe('with the node:crypto codec (fast-codec.ts reads each header once)', () => {
  const fastLookup = new Lookup();
  fastLookup.channels.set(channel.id, channel);
  const fast = new Opener(AUTHORITY, staticKey, fastLookup, fastCodec);
  const fastReset = (message: unknown, record = newRecord()) => rejectsWith(fast.open(message as string, record), 'CHANNEL_RESET', 499);

  test('opens what the jose codec opens: channel messages (absolute or relative kid) and handshakes', async () => {
    const opened = await fast.open(await underChannel('{"a":1}'), newRecord());
    assert.equal(opened.channel, channel);
    assert.equal(dec.decode(opened.plaintext), '{"a":1}');
    assert.equal((await fast.open(await underChannel('{}', `/ecdhe/${channel.id}`), newRecord())).channel, channel);
    assert.equal((await fast.open(await underChannel('x', channel.uri, undefined, 'JOSE'), newRecord())).cty, 'JOSE');
    const plain = await fast.open(await encryptStatic(enc.encode('{"h":1}'), staticKey.publicKey, staticKey.kid), newRecord());
    assert.equal(plain.channel, undefined);
    assert.equal(dec.decode(plain.plaintext), '{"h":1}');
  });

  test('a header it refuses is a reset before any channel is looked up; one naming the static key is still recorded a handshake', async () => {
    const asked = fastLookup.asked.length;
    const forged = (header: Record<string, unknown>) =>
      `${Buffer.from(JSON.stringify(header)).toString('base64url')}..${randomBytes(12).toString('base64url')}.${randomBytes(8).toString('base64url')}.${randomBytes(16).toString('base64url')}`;
    await fastReset(forged({ alg: 'dir', enc: 'A256GCM', kid: channel.uri, zip: 'DEF' }));
    assert.equal(fastLookup.asked.length, asked, 'no lookup for a header the codec refuses');
    const record = newRecord();
    await fastReset(forged({ alg: 'RSA-OAEP', enc: 'A256GCM', kid: staticKey.kid, jku: 'https://x.example' }), record);
    assert.equal(record.op, 'createEphemeralKey');
    const other = newRecord();
    await fastReset(forged({ alg: 'dir', enc: 'A256GCM', kid: channel.uri, typ: 'JOSE' }), other);
    assert.equal(other.op, 'reset');
  });

  test('a kid in another form than the one this KMS gives its channels is read by the URI parser alike', async () => {
    const asked = fastLookup.asked.length;
    for (const kid of [`kms://${AUTHORITY.toUpperCase()}/ecdhe/${channel.id}`, `kms://${AUTHORITY}/ecdhe/${channel.id}/`, `kms://${AUTHORITY}/ecdhe/${channel.id}?a=b`]) {
      assert.equal((await fast.open(await underChannel('{}', kid), newRecord())).channel, channel, kid);
    }
    for (const kid of [`kms://${AUTHORITY}/ecdhe/${channel.id.toUpperCase()}`, `kms://${AUTHORITY}/ecdhe/${channel.id.slice(0, -1)}x`]) {
      await fastReset(await underChannel('{}', kid));
    }
    assert.equal(fastLookup.asked.length, asked + 3, 'only the readable kids were looked up');
  });
});
