/**
 * Stage 2, authenticate (src/core/authenticate.ts): who sent the request. Its ports are fakes in
 * memory: bearers by a table, peer proofs as real PS256 signatures checked against one known key,
 * the peers' domains, and a rate limiter that records whom it was asked about and refuses on demand.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import { KmsError, Limits, joseCodec, verifyStatic, type KmsRequest } from '@openkms/protocol';
import type { Channel } from '../../src/channels.js';
import { Authentication, type BearerAuthenticator, type PeerProofs } from '../../src/core/authenticate.js';
import type { Opened } from '../../src/core/open.js';
import { newRecord } from '../../src/core/record.js';
import type { PeerPrincipal, Principal } from '../../src/identity/principal.js';
import { principalId } from '../../src/identity/principal.js';
import { AUTHORITY, PEER_AUTHORITY, channelOf, peerPrincipal, rejectsWith, requestOf, staticKeyPair, userOf } from '../support/core.js';

const enc = new TextEncoder();
const dec = new TextDecoder();
const LIFETIME_MS = 3_600_000;
const peerKey = staticKeyPair(`kms://${PEER_AUTHORITY}`);
const alice = userOf('alice@a.example');

class Bearers implements BearerAuthenticator {
  readonly asked: unknown[] = [];
  async authenticate(credential: KmsRequest['client']['credential'] | undefined): Promise<Principal> {
    this.asked.push(credential);
    if (credential?.bearer === 'alice') return alice;
    throw KmsError.unauthorized();
  }
  /** Alice may read as anyone but mallory@a.example (identity/authenticator.ts decides for real). */
  actingFor(holder: Principal, onBehalfOf: string): Principal {
    if (onBehalfOf === 'mallory@a.example') throw KmsError.forbidden('not of your organisation');
    return { ...userOf(onBehalfOf), agent: principalId(holder) };
  }
}

/** Peer proofs: a PS256 signature by the one peer key this fake knows, kid its authority. */
class Proofs implements PeerProofs {
  readonly verified: string[] = [];
  private async payload(jws: string): Promise<Record<string, unknown>> {
    try {
      return JSON.parse(dec.decode((await verifyStatic(jws, peerKey.publicKey)).plaintext)) as Record<string, unknown>;
    } catch {
      throw KmsError.unauthorized('peer signature does not verify');
    }
  }
  async verifyHandshake(jws: string, channelLifetimeMs: number) {
    const principal: PeerPrincipal = { ...peerPrincipal, expiresAt: channelLifetimeMs };
    return { request: await this.payload(jws), principal };
  }
  async verify(jws: string, authority: string) {
    this.verified.push(authority);
    return this.payload(jws);
  }
}

class Limiter {
  readonly asked: string[] = [];
  refuse = false;
  allow(key: string): boolean {
    this.asked.push(key);
    return !this.refuse;
  }
}

function setup() {
  const bearers = new Bearers();
  const proofs = new Proofs();
  const limiter = new Limiter();
  const peers = { byAuthority: (authority: string) => (authority === PEER_AUTHORITY ? { domains: ['b.example', 'b2.example'] } : undefined) };
  const auth = new Authentication(AUTHORITY, bearers, proofs, peers, LIFETIME_MS, limiter);
  return { auth, bearers, proofs, limiter };
}

const plain = (request: unknown, channel?: Channel): Opened => ({ channel, plaintext: enc.encode(JSON.stringify(request)), cty: undefined });
const withBearer = (method: KmsRequest['method'], uri: string, bearer = 'alice', more: Record<string, unknown> = {}) =>
  requestOf(method, uri, { client: { clientId: 'client-1', credential: { bearer } }, ...more });
async function signed(request: unknown, channel?: Channel): Promise<Opened> {
  return { channel, plaintext: enc.encode(await joseCodec.signStatic(enc.encode(JSON.stringify(request)), peerKey.privateKey, peerKey.kid)), cty: 'JOSE' };
}
const peerRequest = (more: Record<string, unknown> = {}) => requestOf('retrieve', `/keys/${randomUUID()}`, { client: { clientId: peerKey.kid, credential: {} }, ...more });

describe('a handshake under the static key', () => {
  test('a user\'s, by its bearer: the principal is the bearer\'s and no peer is involved', async () => {
    const { auth } = setup();
    const record = newRecord();
    const out = await auth.authenticate(plain(withBearer('create', '/ecdhe')), record);
    assert.equal(out.principal, alice);
    assert.equal(out.peer, undefined);
    // The operation is the opener's to record (the static key says a handshake); this stage records who.
    assert.deepEqual([record.op, record.principal], ['reset', 'alice@a.example']);
  });

  test('anything but create /ecdhe is refused before the bearer is looked at', async () => {
    const { auth, bearers } = setup();
    await rejectsWith(auth.authenticate(plain(withBearer('create', '/keys')), newRecord()), 'INVALID_FIELD', 400);
    assert.equal(bearers.asked.length, 0);
  });

  test('a bearer refused is a 401, and no principal is recorded', async () => {
    const { auth } = setup();
    const record = newRecord();
    await rejectsWith(auth.authenticate(plain(withBearer('create', '/ecdhe', 'mallory')), record), 'CREDENTIAL_INVALID', 401);
    assert.equal(record.principal, null);
  });

  test('a peer\'s, signed (cty JOSE): the principal is the peer, on a channel of the configured lifetime', async () => {
    const { auth } = setup();
    const record = newRecord();
    const out = await auth.authenticate(await signed({ ...peerRequest(), method: 'create', uri: '/ecdhe' }), record);
    assert.deepEqual(out.principal, { ...peerPrincipal, expiresAt: LIFETIME_MS });
    assert.equal(out.peer, out.principal);
    assert.deepEqual([record.principal, record.peer], [`kms://${PEER_AUTHORITY}`, `kms://${PEER_AUTHORITY}`]);
  });

  test('a peer handshake whose proof fails is still audited with the kid it claimed, cut to the id limit', async () => {
    const { auth } = setup();
    const other = staticKeyPair();
    for (const kid of [`kms://${PEER_AUTHORITY}`, `kms://${'x'.repeat(Limits.maxIdChars)}`]) {
      const record = newRecord();
      const opened = { plaintext: enc.encode(await joseCodec.signStatic(enc.encode('{}'), other.privateKey, kid)), cty: 'JOSE' };
      await rejectsWith(auth.authenticate(opened, record), 'CREDENTIAL_INVALID', 401);
      assert.equal(record.peer, kid.slice(0, Limits.maxIdChars));
      assert.equal(record.principal, null);
    }
  });
});

describe('a request on a user\'s channel', () => {
  test('the bearer must prove the channel\'s owner again', async () => {
    const { auth } = setup();
    const mine = await auth.authenticate(plain(withBearer('update', '/ping'), channelOf('alice@a.example')), newRecord());
    assert.equal(mine.principal, alice);
    await rejectsWith(auth.authenticate(plain(withBearer('update', '/ping'), channelOf('bob@a.example')), newRecord()), 'NOT_AUTHORIZED', 403, /another principal/);
  });

  test('a nested (cty) payload is for peer channels only: PAYLOAD_INVALID', async () => {
    const { auth } = setup();
    const opened = { ...plain(withBearer('update', '/ping'), channelOf('alice@a.example')), cty: 'JOSE' };
    await rejectsWith(auth.authenticate(opened, newRecord()), 'PAYLOAD_INVALID', 400);
  });

  test('the record says the operation is not known yet, and who asked', async () => {
    const { auth } = setup();
    const record = newRecord();
    await auth.authenticate(plain(withBearer('update', '/ping'), channelOf('alice@a.example')), record);
    assert.deepEqual([record.op, record.principal, record.peer], ['unknown', 'alice@a.example', null]);
  });

  test('credential.onBehalfOf: the user read as, on the bearer holder’s channel; both recorded, also when refused', async () => {
    const { auth, limiter } = setup();
    const asBob = (onBehalfOf: string) => withBearer('retrieve', `kms://${AUTHORITY}/keys/x`, 'alice', { client: { clientId: 'client-1', credential: { bearer: 'alice', onBehalfOf } } });
    const record = newRecord();
    const out = await auth.authenticate(plain(asBob('bob@a.example'), channelOf('alice@a.example')), record);
    assert.deepEqual(out.principal, { ...userOf('bob@a.example'), agent: 'alice@a.example' });
    assert.deepEqual([record.principal, record.onBehalfOf], ['alice@a.example', 'bob@a.example']);
    assert.deepEqual(limiter.asked, ['alice@a.example'], 'counted for the holder');
    // Bob's channel is not Alice's, whatever she reads as.
    await rejectsWith(auth.authenticate(plain(asBob('bob@a.example'), channelOf('bob@a.example')), newRecord()), 'NOT_AUTHORIZED', 403, /another principal/);
    const refused = newRecord();
    await rejectsWith(auth.authenticate(plain(asBob('mallory@a.example'), channelOf('alice@a.example')), refused), 'NOT_AUTHORIZED', 403);
    assert.deepEqual([refused.principal, refused.onBehalfOf], ['alice@a.example', 'mallory@a.example']);
  });
});

describe('a request on a peer\'s channel', () => {
  const peerChannel = () => channelOf(`kms://${PEER_AUTHORITY}`);

  test('an unsigned one is a 401, recorded as the peer\'s', async () => {
    const { auth } = setup();
    const record = newRecord();
    await rejectsWith(auth.authenticate(plain(peerRequest(), peerChannel()), record), 'CREDENTIAL_INVALID', 401, /signs every request/);
    assert.equal(record.peer, `kms://${PEER_AUTHORITY}`);
  });

  test('the proof is checked against the channel owner\'s authority', async () => {
    const { auth, proofs } = setup();
    await auth.authenticate(await signed(peerRequest(), peerChannel()), newRecord());
    assert.deepEqual(proofs.verified, [PEER_AUTHORITY]);
  });

  test('without federated + onBehalfOf the peer speaks for itself, with its configured domains', async () => {
    const { auth } = setup();
    for (const more of [{}, { onBehalfOf: 'bob@b.example' }, { federated: 'true', onBehalfOf: 'bob@b.example' }, { federated: true }]) {
      const channel = peerChannel();
      const out = await auth.authenticate(await signed(peerRequest(more), channel), newRecord());
      assert.deepEqual(out.principal, { kind: 'peer', authority: PEER_AUTHORITY, domains: ['b.example', 'b2.example'], expiresAt: channel.expiresAt }, JSON.stringify(more));
      assert.equal(out.peer, out.principal);
    }
  });

  test('federated + onBehalfOf a user of the peer\'s domains: that user, for as long as the channel lives', async () => {
    const { auth } = setup();
    for (const [onBehalfOf, id, domain] of [
      ['bob@b.example', 'bob@b.example', 'b.example'],
      ['carol@B2.Example', 'carol@b2.example', 'b2.example'],
      ['dave', 'dave@b.example', 'b.example'],
    ] as const) {
      const channel = { ...peerChannel(), expiresAt: 123_456 };
      const record = newRecord();
      const out = await auth.authenticate(await signed(peerRequest({ federated: true, onBehalfOf }), channel), record);
      assert.deepEqual(out.principal, { kind: 'user', id, domain, roles: [], orgId: domain, expiresAt: 123_456 });
      assert.equal(out.peer?.authority, PEER_AUTHORITY);
      assert.deepEqual([record.principal, record.peer], [id, `kms://${PEER_AUTHORITY}`]);
    }
  });

  test('a peer never speaks for a user of another domain, or for a malformed one (403); a non-string is a 400', async () => {
    const { auth } = setup();
    for (const onBehalfOf of ['alice@a.example', 'eve@c.example', 'bob@b.example.evil', '@b.example', 'bob@']) {
      await rejectsWith(auth.authenticate(await signed(peerRequest({ federated: true, onBehalfOf }), peerChannel()), newRecord()), 'NOT_AUTHORIZED', 403);
    }
    await rejectsWith(auth.authenticate(await signed(peerRequest({ federated: true, onBehalfOf: 7 }), peerChannel()), newRecord()), 'INVALID_FIELD', 400);
  });
});

describe('the rate limit', () => {
  test('is asked per channel owner on a channel, per principal at a handshake; a refusal is RATE_LIMITED 429', async () => {
    const { auth, limiter } = setup();
    await auth.authenticate(plain(withBearer('create', '/ecdhe')), newRecord());
    await auth.authenticate(await signed(peerRequest({ federated: true, onBehalfOf: 'bob@b.example' }), channelOf(`kms://${PEER_AUTHORITY}`)), newRecord());
    // A peer's users share the peer's budget: the owner of the channel is the peer.
    assert.deepEqual(limiter.asked, ['alice@a.example', `kms://${PEER_AUTHORITY}`]);
    limiter.refuse = true;
    await rejectsWith(auth.authenticate(plain(withBearer('update', '/ping'), channelOf('alice@a.example')), newRecord()), 'RATE_LIMITED', 429);
  });
});
