/**
 * What the SDK accepts as an answer: a JSON object with a status of the profile, for the request
 * it was sent for (the transport is untrusted), and the KmsError an error answer stands for.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KmsResponse } from '@openkms/protocol';
import { answerFor, checkStatus, readPayload } from '../src/answers.js';
import { refusal } from './support.js';

const bytes = (text: string) => new TextEncoder().encode(text);
const answer = (payload: KmsResponse) => ({ payload, signed: false });

test('readPayload: a JSON object with an integer status (and a string reason, a string or number requestId)', async () => {
  assert.deepEqual(readPayload(bytes('{"status":200,"requestId":"r-1","key":{"uri":"kms://a/keys/1"}}')), { status: 200, requestId: 'r-1', key: { uri: 'kms://a/keys/1' } });
  assert.deepEqual(readPayload(bytes('{"status":404,"reason":"no such key","requestId":7}')), { status: 404, reason: 'no such key', requestId: 7 });
  const notJson = await refusal(() => readPayload(bytes('{"status":')), 'ANSWER_INVALID', /not JSON/);
  assert.ok(notJson.cause instanceof SyntaxError);
  for (const text of ['null', '[]', '"200"', '42']) await refusal(() => readPayload(bytes(text)), 'ANSWER_INVALID', /not a JSON object/);
  for (const status of ['{}', '{"status":"200"}', '{"status":200.5}', '{"status":null}']) await refusal(() => readPayload(bytes(status)), 'ANSWER_INVALID', /integer status/);
  await refusal(() => readPayload(bytes('{"status":400,"reason":{"field":"count"}}')), 'ANSWER_INVALID', /reason/);
  await refusal(() => readPayload(bytes('{"status":200,"requestId":{"id":1}}')), 'ANSWER_INVALID', /requestId/);
});

test('answerFor: only the answer naming this request, of the same type, is accepted', async () => {
  answerFor(answer({ status: 200, requestId: 'r-1' }), 'r-1');
  answerFor(answer({ status: 200, requestId: 7 }), 7);
  for (const [got, sent] of [['r-2', 'r-1'], ['7', 7], [7, '7'], [undefined, 'r-1']] as const) {
    const err = await refusal(() => answerFor(answer({ status: 200, requestId: got }), sent), 'ANSWER_INVALID', /another request/);
    assert.equal(err.requestId, sent, 'the error names the request that was sent');
  }
});

test('checkStatus: 200, 201 and 204 are successes; an error status is the code fromWire gives, with the reason and requestId', async () => {
  for (const status of [200, 201, 204]) checkStatus({ status }, 'r-1');
  const forbidden = await refusal(() => checkStatus({ status: 403, reason: 'not allowed', requestId: 'r-1' }, 'r-1'), 'NOT_AUTHORIZED', /^not allowed$/);
  assert.equal(forbidden.requestId, 'r-1');
  assert.equal(forbidden.handshake, false);
  await refusal(() => checkStatus({ status: 400 }, 'r-1'), 'INVALID_FIELD', /^request failed$/);
  await refusal(() => checkStatus({ status: 499, reason: 'reset' }, 'r-1'), 'CHANNEL_RESET');
  // Not a status of the profile: a redirect, an informational status.
  await refusal(() => checkStatus({ status: 302 }, 'r-1'), 'ANSWER_INVALID', /status 302 outside the profile/);
  await refusal(() => checkStatus({ status: 100 }, 'r-1'), 'ANSWER_INVALID', /status 100 outside the profile/);
});

test('checkStatus for a handshake: only 201 succeeds; a refusal is marked handshake', async () => {
  checkStatus({ status: 201 }, 'h-1', true);
  for (const status of [200, 204]) await refusal(() => checkStatus({ status }, 'h-1', true), 'ANSWER_INVALID', new RegExp(`handshake with status ${status}, not 201`));
  const refused = await refusal(() => checkStatus({ status: 401, reason: 'token expired' }, 'h-1', true), 'CREDENTIAL_INVALID', /^handshake refused: token expired$/);
  assert.equal(refused.handshake, true);
  assert.equal(refused.requestId, 'h-1');
  await refusal(() => checkStatus({ status: 403 }, 'h-1', true), 'NOT_AUTHORIZED', /^handshake refused: no reason given$/);
});
