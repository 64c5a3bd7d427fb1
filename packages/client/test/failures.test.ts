/**
 * How the SDK names a failure on the way to the KMS: the detail read from a cause chain, the code
 * an endpoint's HTTP status stands for, and the cause kept.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KmsError } from '@openkms/protocol';
import { answerStep, failureDetail, httpFailure, timedOut, unreachable } from '../src/failures.js';
import { refusal } from './support.js';

const URL = 'POST http://127.0.0.1:7001/kms/messages';

function systemError(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

test('failureDetail reads the innermost error that says something', () => {
  // What undici throws: the socket error hides under "fetch failed".
  const refused = new TypeError('fetch failed', { cause: systemError('connect ECONNREFUSED 127.0.0.1:7001', 'ECONNREFUSED') });
  assert.equal(failureDetail(refused), 'connect ECONNREFUSED 127.0.0.1:7001');
  // Happy eyeballs: an AggregateError with no message, only a code.
  const both = new TypeError('fetch failed', { cause: Object.assign(new AggregateError([], ''), { code: 'ECONNREFUSED' }) });
  assert.equal(failureDetail(both), 'ECONNREFUSED');
  assert.equal(failureDetail(systemError('socket hang up', 'ECONNRESET')), 'socket hang up (ECONNRESET)');
  // A browser says little, and a cause that says nothing does not hide what the outer one said.
  assert.equal(failureDetail(new TypeError('Failed to fetch')), 'Failed to fetch');
  assert.equal(failureDetail(new Error('outer', { cause: new Error('') })), 'outer');
  assert.equal(failureDetail('a string thrown'), 'a string thrown');
  for (const nothing of [undefined, null, {}, '', { type: 'error' }]) assert.equal(failureDetail(nothing), 'no detail given');
  const looped = new Error('looped') as Error & { cause?: unknown };
  looped.cause = looped;
  assert.equal(failureDetail(looped), 'looped', 'a cycle of causes ends');
});

test('unreachable and timedOut name the request, keep the cause and the requestId', () => {
  const cause = new TypeError('fetch failed', { cause: systemError('getaddrinfo ENOTFOUND kms.a.example', 'ENOTFOUND') });
  const lost = unreachable(URL, cause, 'r-1');
  assert.equal(lost.code, 'KMS_UNREACHABLE');
  assert.equal(lost.reason, `KMS unreachable: ${URL}: getaddrinfo ENOTFOUND kms.a.example`);
  assert.equal(lost.cause, cause);
  assert.equal(lost.requestId, 'r-1');
  const slow = timedOut(URL, 150, undefined, 7);
  assert.equal(slow.code, 'KMS_TIMEOUT');
  assert.equal(slow.reason, `KMS did not answer in time: ${URL} (timeout 150 ms)`);
  assert.equal(slow.requestId, 7);
  assert.equal('cause' in slow, false);
});

test('httpFailure: the KMS\'s own statuses keep their meaning, a gateway\'s are unreachable or (504) a timeout, others `otherwise`', () => {
  const json = (error: string) => JSON.stringify({ error });
  const cases: [number, readonly number[] | undefined, string][] = [
    [500, undefined, 'INTERNAL'],
    [502, undefined, 'KMS_UNREACHABLE'],
    [503, undefined, 'KMS_UNREACHABLE'],
    [504, undefined, 'KMS_TIMEOUT'],
    [404, undefined, 'DISCOVERY_INVALID'],
    [400, undefined, 'DISCOVERY_INVALID'],
    [302, undefined, 'DISCOVERY_INVALID'],
    [413, undefined, 'DISCOVERY_INVALID'],
    [413, [413, 500], 'TOO_LARGE'],
    [500, [413, 500], 'INTERNAL'],
    [429, [413, 500], 'DISCOVERY_INVALID'],
  ];
  for (const [status, kmsStatuses, code] of cases) {
    const err = httpFailure(URL, status, json('what it said'), 'DISCOVERY_INVALID', kmsStatuses);
    assert.equal(err.code, code, `HTTP ${status} (${kmsStatuses ?? 'default'})`);
    assert.match(err.reason, new RegExp(`${URL} answered HTTP ${status}: what it said$`));
  }
  assert.match(httpFailure(URL, 404, '<html>Not Found</html>\n', 'ANSWER_INVALID').reason, /HTTP 404: <html>Not Found<\/html>$/);
  assert.match(httpFailure(URL, 404, '', 'ANSWER_INVALID').reason, /HTTP 404: empty body$/);
  assert.ok(httpFailure(URL, 404, 'x'.repeat(5000), 'ANSWER_INVALID').reason.length < URL.length + 250, 'a long body is cut');
});

test('answerStep: a failed step is ANSWER_INVALID naming it, with the error as cause; a KmsError passes as it is', async () => {
  assert.equal(await answerStep('reading', () => 42), 42);
  const jose = new Error('signature verification failed');
  const err = await refusal(answerStep('KMS answer does not verify', () => Promise.reject(jose)), 'ANSWER_INVALID', /^KMS answer does not verify: signature verification failed$/);
  assert.equal(err.cause, jose);
  const own = new KmsError('CLIENT_CLOSED', 'closed');
  await assert.rejects(
    answerStep('reading', () => {
      throw own;
    }),
    (e: unknown) => e === own,
  );
});
