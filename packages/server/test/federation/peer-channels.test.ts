/**
 * The peer channels' pure parts (src/federation/peer-channels.ts): how a peer's failure reaches
 * this KMS's user (`failure`, decided by code, never by reason text), the one deadline of a
 * federated request, the peer lookup and the audit record of an exchange. No channel is opened:
 * the registry holds one peer that is never contacted, the audit is a list in memory.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, test } from 'node:test';
import { ErrorCodes, KmsError, joseCodec, type ErrorCode } from '@openkms/protocol';
import type { AuditEntry } from '../../src/audit/audit.js';
import { PeerChannels } from '../../src/federation/peer-channels.js';
import { PeerRegistry, type Peer } from '../../src/federation/peers.js';
import { rejectsWith, userOf } from '../support/core.js';

const NOW = Date.UTC(2026, 10, 28);
const peer: Peer = { authority: 'kms.a.example', domains: ['a.example'], endpoint: 'http://127.0.0.1:1', trustAnchors: [] };
const WHO = 'kms://kms.a.example';

function channels(timeoutMs = 60_000) {
  const audited: AuditEntry[] = [];
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const c = new PeerChannels({
    authority: 'kms.b.example',
    peers: new PeerRegistry({ authority: 'kms.b.example', domains: ['b.example'], peers: [peer] }),
    staticKey: { privateKey, publicJwk: {}, kid: 'kms://kms.b.example' },
    codec: joseCodec,
    timeoutMs,
    now: () => NOW,
    audit: async (entry) => void audited.push(entry),
    logger: { debug() {}, info() {}, error() {}, warn: (obj: object, msg?: string) => void logged.push(JSON.stringify({ ...obj, msg })) },
  });
  return { c, audited };
}

const logged: string[] = [];
const { c } = channels();
const CODES = Object.keys(ErrorCodes) as ErrorCode[];
/** What the peer said of the user's own request: it reaches the user as it is (PROTOCOL.md §6). */
const READ_VERDICTS: ErrorCode[] = ['NOT_AUTHORIZED', 'NOT_FOUND'];
/** A forwarded change: the codes a KMS's 4xx answers arrive as, but a reset. */
const FORWARD_VERDICTS: ErrorCode[] = ['INVALID_FIELD', 'CREDENTIAL_INVALID', 'NOT_AUTHORIZED', 'NOT_FOUND', 'KEY_ALREADY_BOUND', 'TOO_LARGE', 'RATE_LIMITED'];
const TIMEOUTS: ErrorCode[] = ['KMS_TIMEOUT', 'PEER_TIMEOUT'];

/** Asserts the user's error: its code, its status (the code's), and the peer named in the reason. */
function expectFailure(got: KmsError, code: ErrorCode, what: string): void {
  assert.ok(got instanceof KmsError, what);
  assert.equal(got.code, code, `${what}: expected ${code}, got ${got.code}`);
  assert.equal(got.status, ErrorCodes[code].status, what);
  assert.ok(got.reason.startsWith(WHO), `${what}: the reason names the peer: ${got.reason}`);
}

describe('failure: a federated read', () => {
  test('the peer\'s 403 and 404 reach the user as they are, with the peer\'s reason', () => {
    for (const code of READ_VERDICTS) {
      const got = c.failure(new KmsError(code, 'not authorized on this resource'), peer);
      expectFailure(got, code, code);
      assert.equal(got.reason, `${WHO}: not authorized on this resource`);
    }
  });

  test('every other refusal by the peer is the peer failing (502), the peer\'s error kept as cause', () => {
    for (const code of CODES.filter((c) => !READ_VERDICTS.includes(c) && !TIMEOUTS.includes(c))) {
      const err = new KmsError(code, 'something at 10.0.0.7:8443');
      const got = c.failure(err, peer);
      expectFailure(got, 'PEER_FAILED', code);
      assert.equal(got.cause, err, code);
      // The user learns the kind of failure; the detail is the operator's, in the log.
      assert.doesNotMatch(got.reason, /something|10\.0\.0\.7/, code);
      assert.ok(logged.some((line) => line.includes('something at 10.0.0.7:8443') && line.includes(code)), `${code} logged for the operator`);
    }
  });

  test('what the user is told of the way to the peer: unreachable, a refused certificate or answer, a refused handshake', () => {
    const said = (err: KmsError) => c.failure(err, peer).reason;
    assert.equal(said(new KmsError('KMS_UNREACHABLE', 'KMS unreachable: POST https://10.0.0.7:8443/kms/messages: connect ECONNREFUSED')), `${WHO} failed: unreachable`);
    assert.equal(said(new KmsError('CERTIFICATE_REFUSED', 'KMS certificate refused: expired')), `${WHO} failed: its certificate was refused`);
    assert.equal(said(new KmsError('ANSWER_INVALID', 'not JSON at position 3')), `${WHO} failed: its answer was refused`);
    assert.equal(said(new KmsError('NOT_AUTHORIZED', 'handshake refused: no', { handshake: true })), `${WHO} failed: 403 handshake refused`);
    assert.equal(said(new KmsError('INTERNAL', 'internal error')), `${WHO} failed: 500 INTERNAL`);
  });
});

describe('failure: a forwarded change', () => {
  test('any refusal of the request itself reaches the user with its own code', () => {
    for (const code of FORWARD_VERDICTS) expectFailure(c.failure(new KmsError(code, 'why'), peer, true), code, code);
    expectFailure(c.failure(new KmsError('KEY_ALREADY_BOUND', 'key is bound'), peer, true), 'KEY_ALREADY_BOUND', 'bound');
  });

  test('a reset, the peer\'s own failure or its storage\'s is the peer failing (502)', () => {
    for (const code of CODES.filter((c) => !FORWARD_VERDICTS.includes(c) && !TIMEOUTS.includes(c))) {
      expectFailure(c.failure(new KmsError(code, 'x'), peer, true), 'PEER_FAILED', code);
    }
    expectFailure(c.failure(KmsError.reset(), peer, true), 'PEER_FAILED', 'CHANNEL_RESET');
  });

  test('the same refusal read, not forwarded, is the peer failing: a 400 of a read is this KMS\'s fault, not the user\'s', () => {
    expectFailure(c.failure(KmsError.badRequest('invalid field authIds'), peer), 'PEER_FAILED', 'read');
    expectFailure(c.failure(KmsError.badRequest('invalid field authIds'), peer, true), 'INVALID_FIELD', 'forwarded');
  });
});

describe('failure: this KMS refused, or no answer', () => {
  test('a refused handshake is the peer failing (502), whatever its status, read or forwarded', () => {
    for (const code of ['NOT_AUTHORIZED', 'CREDENTIAL_INVALID', 'NOT_FOUND', 'INVALID_FIELD'] as const) {
      for (const forwarded of [false, true]) {
        const err = new KmsError(code, 'kms://kms.b.example is not a configured peer', { handshake: true });
        const got = c.failure(err, peer, forwarded);
        expectFailure(got, 'PEER_FAILED', `${code} forwarded=${forwarded}`);
        assert.equal(got.cause, err);
      }
    }
  });

  test('a certificate this KMS refuses is the peer failing (502)', () => {
    for (const forwarded of [false, true]) expectFailure(c.failure(new KmsError('CERTIFICATE_REFUSED', 'untrusted'), peer, forwarded), 'PEER_FAILED', String(forwarded));
  });

  test('no answer in time, from the SDK or the deadline, is PEER_TIMEOUT (504), even at the handshake', () => {
    for (const code of TIMEOUTS) {
      for (const options of [{}, { handshake: true }]) {
        for (const forwarded of [false, true]) {
          const got = c.failure(new KmsError(code, 'timed out', options), peer, forwarded);
          expectFailure(got, 'PEER_TIMEOUT', code);
          assert.equal(got.reason, `${WHO} did not answer in time`);
        }
      }
    }
  });

  test('a failure that is not a KmsError is the peer failing (502), the error kept as cause', () => {
    for (const err of [new TypeError('fetch failed'), 'a string', undefined]) {
      const got = c.failure(err, peer);
      expectFailure(got, 'PEER_FAILED', String(err));
      assert.equal(got.cause, err);
      assert.equal(got.reason, `${WHO} failed`);
    }
  });

  test('the decision is the code\'s: a reason that reads like a verdict changes nothing', () => {
    expectFailure(c.failure(new KmsError('INTERNAL', '403 not authorized'), peer), 'PEER_FAILED', 'reason');
    expectFailure(c.failure(new KmsError('NOT_FOUND', 'internal error'), peer), 'NOT_FOUND', 'reason');
  });
});

describe('withinDeadline', () => {
  test('work that finishes gives its result; work that fails, its error', async () => {
    assert.equal(await c.withinDeadline(Promise.resolve(7), 'kms.a.example'), 7);
    const err = new Error('boom');
    await assert.rejects(c.withinDeadline(Promise.reject(err), 'kms.a.example'), (e) => e === err);
  });

  test('work that never finishes is PEER_TIMEOUT naming the peer', async () => {
    const { c: quick } = channels(1);
    await rejectsWith(quick.withinDeadline(new Promise(() => undefined), 'kms.a.example'), 'PEER_TIMEOUT', 504, /^kms:\/\/kms\.a\.example did not answer in time$/);
  });
});

describe('peerOf and audit', () => {
  test('a configured peer is found by its authority, case-insensitively; any other is a 404', async () => {
    assert.equal(c.peerOf('KMS.A.example').authority, 'kms.a.example');
    await rejectsWith(() => c.peerOf('kms.z.example'), 'NOT_FOUND', 404, /kms\.z\.example/);
  });

  test('an exchange is audited for the user it was made for, or for this KMS itself, with the peer', async () => {
    const { c: audited, audited: entries } = channels();
    await audited.audit(userOf('alice@b.example'), peer, 'retrieve', 'kms://kms.a.example/keys/x', 200);
    await audited.audit('self', peer, 'update', 'kms://kms.a.example/federation/invalidations', 204);
    await audited.audit({ ...userOf('bob@b.example'), agent: 'officer@b.example' }, peer, 'retrieve', 'kms://kms.a.example/keys/y', 200);
    assert.deepEqual(entries, [
      { time: NOW, principal: 'alice@b.example', onBehalfOf: null, clientId: 'federation', method: 'retrieve', uri: 'kms://kms.a.example/keys/x', status: 200, peer: WHO, requestId: null },
      { time: NOW, principal: 'kms://kms.b.example', onBehalfOf: null, clientId: 'federation', method: 'update', uri: 'kms://kms.a.example/federation/invalidations', status: 204, peer: WHO, requestId: null },
      // A compliance officer's read through the peer: the officer, for the user.
      { time: NOW, principal: 'officer@b.example', onBehalfOf: 'bob@b.example', clientId: 'federation', method: 'retrieve', uri: 'kms://kms.a.example/keys/y', status: 200, peer: WHO, requestId: null },
    ]);
  });
});
