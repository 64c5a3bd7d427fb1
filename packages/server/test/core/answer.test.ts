/**
 * Stage 5, answer (src/core/answer.ts): every answer is audited first — an answer that could not
 * be audited is a bare 500 — and then sealed for whom it goes to: a `dir` JWE for a user, a
 * signature inside the JWE for a peer KMS, a signature alone with no usable channel. The audit and
 * the logger are in-memory fakes; the sealing is the protocol's real codec with a real RSA key.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import { joseCodec, KmsError, peekHeader, segmentCount, verifyStatic, type KmsResponse } from '@openkms/protocol';
import type { AuditEntry } from '../../src/audit/audit.js';
import type { Channel } from '../../src/channels.js';
import { Answerer, type Destination, type RequestEvent } from '../../src/core/answer.js';
import { newRecord, type RequestRecord } from '../../src/core/record.js';
import type { Logger } from '../../src/logger.js';
import { AUTHORITY, PEER_AUTHORITY, channelOf, staticKeyPair } from '../support/core.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const dec = new TextDecoder();
const staticKey = staticKeyPair();
const NOW = Date.UTC(2026, 10, 28);

/** An audit log in memory that fails, when told to, like a full disk. */
class Audit {
  readonly entries: AuditEntry[] = [];
  failing = false;

  async record(entry: AuditEntry): Promise<void> {
    if (this.failing) throw new Error('disk full');
    this.entries.push(entry);
  }
}

class Logs implements Logger {
  readonly lines: { level: string; obj: object; msg?: string }[] = [];
  debug(obj: object, msg?: string) {
    this.lines.push({ level: 'debug', obj, msg });
  }
  info(obj: object, msg?: string) {
    this.lines.push({ level: 'info', obj, msg });
  }
  warn(obj: object, msg?: string) {
    this.lines.push({ level: 'warn', obj, msg });
  }
  error(obj: object, msg?: string) {
    this.lines.push({ level: 'error', obj, msg });
  }
}

function answerer() {
  const audit = new Audit();
  const logs = new Logs();
  const events: RequestEvent[] = [];
  const a = new Answerer(audit, joseCodec, staticKey, logs, () => NOW);
  a.onRequest = (event) => events.push(event);
  return { a, audit, logs, events };
}

const recordOf = (over: Partial<RequestRecord> = {}): RequestRecord => ({
  ...newRecord(),
  op: 'retrieveKey',
  principal: 'alice@a.example',
  clientId: 'client-1',
  method: 'retrieve',
  uri: `/keys/${randomUUID()}`,
  requestId: 'r-1',
  ...over,
});

const toUser = (channel: Channel): Destination => ({ channel, toPeer: false });
const toPeer = (channel: Channel): Destination => ({ channel, toPeer: true });
const nowhere: Destination = { toPeer: false };

/** The payload of a JWS signed by this KMS's static key (verified). */
async function signedPayload(compact: string): Promise<KmsResponse> {
  assert.equal(segmentCount(compact), 3, 'a compact JWS');
  const { plaintext, header } = await verifyStatic(compact, staticKey.publicKey);
  assert.deepEqual(header, { alg: 'PS256', kid: staticKey.kid });
  return JSON.parse(dec.decode(plaintext)) as KmsResponse;
}

/** The payload of a `dir` JWE under the channel key, checking its header. */
async function channelPayload(compact: string, channel: Channel, cty?: string): Promise<string> {
  assert.equal(segmentCount(compact), 5, 'a compact JWE');
  assert.deepEqual(peekHeader(compact), { alg: 'dir', enc: 'A256GCM', kid: channel.uri, ...(cty ? { cty } : {}) });
  return dec.decode((await joseCodec.decryptChannel(compact, channel.key.reveal())).plaintext);
}

const key = { uri: `kms://${AUTHORITY}/keys/${randomUUID()}`, jwk: { kty: 'oct', k: 'c2VjcmV0' } };

describe('sealing', () => {
  test('a user\'s answer is a dir JWE under the channel key, kid the channel URI, no cty', async () => {
    const channel = channelOf('alice@a.example');
    const { a } = answerer();
    const sealed = await a.answer({ status: 200, key }, recordOf(), toUser(channel), 0);
    assert.deepEqual(JSON.parse(await channelPayload(sealed, channel)), { status: 200, key, requestId: 'r-1' });
  });

  test('a peer\'s answer is a JWE with cty JOSE around this KMS\'s PS256 signature of it', async () => {
    const channel = channelOf(`kms://${PEER_AUTHORITY}`);
    const { a } = answerer();
    const sealed = await a.answer({ status: 200, key }, recordOf({ peer: `kms://${PEER_AUTHORITY}` }), toPeer(channel), 0);
    const proof = await channelPayload(sealed, channel, 'JOSE');
    assert.deepEqual(await signedPayload(proof), { status: 200, key, requestId: 'r-1' });
  });

  test('with no channel (a handshake, a message that did not open) the answer is signed by the static key', async () => {
    const { a } = answerer();
    const answer = { status: 201, key: { uri: `kms://${AUTHORITY}/ecdhe/${randomUUID()}` } };
    assert.deepEqual(await signedPayload(await a.answer(answer, recordOf(), nowhere, 0)), { ...answer, requestId: 'r-1' });
  });

  test('a reset is signed, never sealed under the channel it resets: for a user and for a peer', async () => {
    for (const to of [toUser(channelOf('alice@a.example')), toPeer(channelOf(`kms://${PEER_AUTHORITY}`))]) {
      const { a } = answerer();
      const sealed = await a.answer({ status: 499, reason: 'ephemeral key unknown' }, recordOf(), to, 0);
      assert.deepEqual(await signedPayload(sealed), { status: 499, reason: 'ephemeral key unknown', requestId: 'r-1' });
    }
  });
});

describe('the requestId', () => {
  test('a reset with no known requestId gets a fresh UUID, the same in the answer and the audit record', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 2; i++) {
      const { a, audit } = answerer();
      const answer = await signedPayload(await a.answer({ status: 499, reason: 'reset' }, recordOf({ requestId: undefined }), nowhere, 0));
      assert.match(String(answer.requestId), UUID_RE);
      assert.equal(audit.entries[0]!.requestId, answer.requestId);
      seen.add(String(answer.requestId));
    }
    assert.equal(seen.size, 2, 'a fresh one each time');
  });

  test('a known requestId is echoed, a string or a number, and audited as a string', async () => {
    for (const requestId of ['r-7', 7]) {
      const { a, audit } = answerer();
      const answer = await signedPayload(await a.answer({ status: 499, reason: 'reset' }, recordOf({ requestId }), nowhere, 0));
      assert.equal(answer.requestId, requestId);
      assert.equal(audit.entries[0]!.requestId, String(requestId));
    }
  });

  test('an error that is not a reset, with no known requestId, carries none (audited as null)', async () => {
    const { a, audit } = answerer();
    const answer = await signedPayload(await a.answer({ status: 400, reason: 'payload is not JSON' }, recordOf({ requestId: undefined }), nowhere, 0));
    assert.deepEqual(answer, { status: 400, reason: 'payload is not JSON' });
    assert.equal(audit.entries[0]!.requestId, null);
  });
});

describe('the audit', () => {
  test('every answer is audited first, with what the record says and the status answered', async () => {
    const { a, audit, events } = answerer();
    const record = recordOf({ peer: `kms://${PEER_AUTHORITY}` });
    await a.answer({ status: 403, reason: 'not authorized' }, record, toUser(channelOf('alice@a.example')), 0);
    assert.deepEqual(audit.entries, [
      { time: NOW, principal: 'alice@a.example', onBehalfOf: null, clientId: 'client-1', method: 'retrieve', uri: record.uri, status: 403, peer: `kms://${PEER_AUTHORITY}`, requestId: 'r-1' },
    ]);
    assert.deepEqual(
      events.map((e) => [e.op, e.status]),
      [['retrieveKey', 403]],
    );
  });

  test('an answer that could not be audited is a 500 with status, reason and requestId only', async () => {
    const channel = channelOf('alice@a.example');
    const { a, audit, logs, events } = answerer();
    audit.failing = true;
    const sealed = await a.answer({ status: 200, key, reason: 'never seen' }, recordOf(), toUser(channel), 0);
    const payload = await channelPayload(sealed, channel);
    assert.deepEqual(JSON.parse(payload), { status: 500, reason: 'internal error', requestId: 'r-1' });
    assert.ok(!payload.includes(key.jwk.k), 'nothing of the answer leaks');
    assert.deepEqual(
      logs.lines.filter((l) => l.level === 'error').map((l) => l.msg),
      ['audit log write failed'],
    );
    assert.equal(events[0]!.status, 500, 'metrics count what was answered');
  });

  test('an audit failure on a peer\'s answer is the same bare 500, still signed inside the JWE', async () => {
    const channel = channelOf(`kms://${PEER_AUTHORITY}`);
    const { a, audit } = answerer();
    audit.failing = true;
    const sealed = await a.answer({ status: 200, resource: { uri: 'x' } }, recordOf(), toPeer(channel), 0);
    assert.deepEqual(await signedPayload(await channelPayload(sealed, channel, 'JOSE')), { status: 500, reason: 'internal error', requestId: 'r-1' });
  });
});

describe('storage unavailable for the audit', () => {
  const unavailable = () => new KmsError('STORAGE_UNAVAILABLE', 'storage unavailable: retry later', { cause: new Error('Connection terminated unexpectedly') });

  /** An audit log in memory that fails with a given error while `failure` is set. */
  class FailingAudit {
    readonly entries: AuditEntry[] = [];
    failure: unknown;
    async record(entry: AuditEntry): Promise<void> {
      if (this.failure !== undefined) throw this.failure;
      this.entries.push(entry);
    }
  }
  const setup = () => {
    const audit = new FailingAudit();
    return { audit, a: new Answerer(audit, joseCodec, staticKey, new Logs(), () => NOW) };
  };

  test('an audit write that failed because storage is unavailable is a 503 with its reason; any other failure stays a bare 500', async () => {
    const channel = channelOf('alice@a.example');
    const { a, audit } = setup();
    audit.failure = unavailable();
    const payload = await channelPayload(await a.answer({ status: 200, key }, recordOf(), toUser(channel), 0), channel);
    assert.deepEqual(JSON.parse(payload), { status: 503, reason: 'storage unavailable: retry later', requestId: 'r-1' });
    assert.ok(!payload.includes(key.jwk.k));
    audit.failure = new TypeError('a bug');
    assert.deepEqual(JSON.parse(await channelPayload(await a.answer({ status: 200, key }, recordOf(), toUser(channel), 0), channel)), {
      status: 500,
      reason: 'internal error',
      requestId: 'r-1',
    });
  });

  test('the audit log is writable until a write fails; then each probe writes a record of its own until one succeeds', async () => {
    const { a, audit } = setup();
    assert.equal(await a.auditWritable(), true);
    assert.equal(audit.entries.length, 0, 'a healthy node\'s probe writes nothing');
    audit.failure = unavailable();
    await a.answer({ status: 200, key }, recordOf(), nowhere, 0);
    assert.equal(await a.auditWritable(), false);
    assert.equal(await a.auditWritable(), false, 'still failing');
    audit.failure = undefined;
    assert.equal(await a.auditWritable(), true, 'writable again, without a request');
    assert.deepEqual(audit.entries, [{ time: NOW, principal: null, clientId: null, method: 'ready', uri: '/readyz', status: 200, peer: null, requestId: null }]);
    assert.equal(await a.auditWritable(), true);
    assert.equal(audit.entries.length, 1, 'and stops probing once it succeeded');
    // A request's successful write clears a failure too.
    audit.failure = new Error('disk full');
    await a.answer({ status: 200, key }, recordOf(), nowhere, 0);
    audit.failure = undefined;
    await a.answer({ status: 200, key }, recordOf(), nowhere, 0);
    assert.equal(await a.auditWritable(), true);
    assert.equal(audit.entries.length, 2);
  });
});
