/**
 * The HTTP batch transport against a `fetch` the test plays (the transport's only way out):
 * coalescing into batches, answers in request order, and every way a batch can fail, each with its
 * code, its cause and the requestId of each request. A real refused connection is in
 * test/client.test.ts, against a port nobody listens on.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KmsError, type ErrorCode } from '@openkms/protocol';
import { HttpTransport, type HttpTransportOptions } from '../src/http-transport.js';
import type { Answer, FetchLike } from '../src/transport.js';
import { isConnectionLost } from '../src/failures.js';
import { refusal } from './support.js';

const URL = 'http://127.0.0.1:7001';

/** Answers every message with {status: 200, requestId: <the message>}: the transport's job is only to carry it. */
const decode = async (compact: string): Promise<Answer> => ({ payload: { status: 200, requestId: compact }, signed: false });

interface Call {
  url: string;
  messages: string[];
  signal: AbortSignal | undefined;
}

/** A fetch that records each batch and answers it with `respond` (default: echo every message). */
function playedFetch(respond: (call: Call) => Promise<{ status: number; text: string }> | { status: number; text: string } = (call) => ({ status: 200, text: JSON.stringify({ kmsMessages: call.messages }) })): { fetch: FetchLike; calls: Call[] } {
  const calls: Call[] = [];
  const fetch: FetchLike = async (url, init) => {
    const call = { url, messages: (JSON.parse(init.body ?? '{}') as { kmsMessages: string[] }).kmsMessages, signal: init.signal };
    calls.push(call);
    const { status, text } = await respond(call);
    return { status, text: async () => text, json: async () => JSON.parse(text) as unknown };
  };
  return { fetch, calls };
}

function transport(fetch: FetchLike, options: Partial<HttpTransportOptions> = {}): HttpTransport {
  return new HttpTransport({ url: URL, decode, fetch, debounceMs: 1, ...options });
}

test('messages sent together travel in one POST /kms/messages; each gets its own answer, in order', async () => {
  const { fetch, calls } = playedFetch();
  const http = transport(fetch);
  const answers = await Promise.all(['a', 'b', 'c'].map((m) => http.exchange(m, m)));
  assert.deepEqual(answers.map((a) => a.payload.requestId), ['a', 'b', 'c']);
  assert.equal(calls.length, 1);
  assert.equal(calls[0]!.url, `${URL}/kms/messages`);
  assert.deepEqual(calls[0]!.messages, ['a', 'b', 'c']);
  assert.equal(http.requests, 1);
  // Sent apart (after the debounce), they travel apart.
  await http.exchange('d', 'd');
  await http.exchange('e', 'e');
  assert.equal(calls.length, 3);
});

test('at most maxBatch messages a request; a full batch leaves without waiting for the debounce', async () => {
  const { fetch, calls } = playedFetch();
  const http = transport(fetch, { maxBatch: 2, debounceMs: 60_000 });
  const answers = Promise.all(['1', '2', '3', '4'].map((m) => http.exchange(m, m)));
  assert.deepEqual((await answers).map((a) => a.payload.requestId), ['1', '2', '3', '4']);
  assert.deepEqual(calls.map((c) => c.messages), [['1', '2'], ['3', '4']]);
});

test('a refused connection is KMS_UNREACHABLE naming the request and ECONNREFUSED, with the fetch error as cause', async () => {
  // What Node's fetch throws when nobody listens: the socket error hides under "fetch failed".
  const socket = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:7001'), { code: 'ECONNREFUSED' });
  const refused = new TypeError('fetch failed', { cause: socket });
  const refusing: FetchLike = async () => {
    throw refused;
  };
  const http = transport(refusing);
  const [first, second] = await Promise.all([refusal(http.exchange('a', 'r-1'), 'KMS_UNREACHABLE'), refusal(http.exchange('b', 'r-2'), 'KMS_UNREACHABLE')]);
  assert.equal(first.reason, `KMS unreachable: POST ${URL}/kms/messages: connect ECONNREFUSED 127.0.0.1:7001`);
  assert.equal(first.cause, refused, 'the fetch error itself, with the socket error under it');
  // One batch, one failure, reported to each request with its own requestId.
  assert.deepEqual([first.requestId, second.requestId], ['r-1', 'r-2']);
  assert.equal(second.cause, first.cause);
  assert.equal(second.reason, first.reason);
  assert.ok(isConnectionLost(first) && isConnectionLost(second), 'a lost connection, for each request: the client may retry');
});

test('a body that breaks off is KMS_UNREACHABLE with that error as cause', async () => {
  const terminated = new TypeError('terminated');
  const breaking: FetchLike = async () => ({ status: 200, text: () => Promise.reject(terminated), json: () => Promise.reject(terminated) });
  assert.equal((await refusal(transport(breaking).exchange('a', 'r-1'), 'KMS_UNREACHABLE', /terminated/)).cause, terminated);
});

test('no answer within timeoutMs is KMS_TIMEOUT; the request is aborted', async () => {
  const { fetch, calls } = playedFetch(
    (call) =>
      new Promise((_, reject) => {
        call.signal!.addEventListener('abort', () => reject(call.signal!.reason));
      }),
  );
  const err = await refusal(transport(fetch, { timeoutMs: 30 }).exchange('a', 'r-1'), 'KMS_TIMEOUT', /^KMS did not answer in time: POST http:\/\/127\.0\.0\.1:7001\/kms\/messages \(timeout 30 ms\)$/);
  assert.equal(err.requestId, 'r-1');
  assert.equal(calls[0]!.signal!.aborted, true);
  assert.equal((err.cause as Error).name, 'AbortError');
  assert.ok(!isConnectionLost(err), 'a timeout is not retried: the KMS may still be running the request');
});

test('HTTP statuses: 413 TOO_LARGE and 500 INTERNAL (the KMS\'s own), 502-503 KMS_UNREACHABLE and 504 KMS_TIMEOUT (a gateway), others ANSWER_INVALID', async () => {
  const cases: [number, string, ErrorCode][] = [
    [413, '{"error":"at most 100 messages per batch"}', 'TOO_LARGE'],
    [500, '{"error":"internal error"}', 'INTERNAL'],
    [502, '<html>Bad Gateway</html>', 'KMS_UNREACHABLE'],
    [503, 'Service Unavailable', 'KMS_UNREACHABLE'],
    [504, 'Gateway Timeout', 'KMS_TIMEOUT'],
    // A 400 cannot answer the transport's own well-formed batch: whatever answered is not a KMS.
    [400, '{"error":"body is not JSON"}', 'ANSWER_INVALID'],
    [404, '{"error":"no such endpoint: POST /kms/messages"}', 'ANSWER_INVALID'],
    [401, 'proxy authentication required', 'ANSWER_INVALID'],
    [302, '', 'ANSWER_INVALID'],
    [204, '', 'ANSWER_INVALID'],
  ];
  for (const [status, text, code] of cases) {
    const { fetch } = playedFetch(() => ({ status, text }));
    const err = await refusal(transport(fetch).exchange('a', 'r-1'), code, new RegExp(`answered HTTP ${status}: `));
    assert.equal(err.requestId, 'r-1', `HTTP ${status}`);
    assert.ok(!isConnectionLost(err), `HTTP ${status} is an answer: never retried at once`);
  }
  const { fetch } = playedFetch(() => ({ status: 413, text: '{"error":"at most 100 messages per batch"}' }));
  await refusal(transport(fetch).exchange('a', 'r-1'), 'TOO_LARGE', /HTTP 413: at most 100 messages per batch$/);
});

test('a 200 whose body is not the batch answer is ANSWER_INVALID for every request of the batch', async () => {
  const notJson = playedFetch(() => ({ status: 200, text: '<html>' }));
  const err = await refusal(transport(notJson.fetch).exchange('a', 'r-1'), 'ANSWER_INVALID', /not JSON/);
  assert.ok(err.cause instanceof SyntaxError);
  for (const text of ['null', '{}', '{"kmsMessages":"a"}', '{"kmsMessages":["a","extra"]}', '{"kmsMessages":[]}']) {
    const { fetch } = playedFetch(() => ({ status: 200, text }));
    await refusal(transport(fetch).exchange('a', 'r-1'), 'ANSWER_INVALID', /wrong shape/);
  }
});

test('an unusable answer fails its own request only', async () => {
  const { fetch } = playedFetch((call) => ({ status: 200, text: JSON.stringify({ kmsMessages: [call.messages[0], 42, call.messages[2]] }) }));
  const forged = new KmsError('ANSWER_INVALID', 'KMS answer does not verify');
  const http = transport(fetch, { decode: async (compact) => (compact === 'forged' ? Promise.reject(forged) : decode(compact)) });
  const [ok, notCompact, refused] = await Promise.allSettled([http.exchange('a', 'a'), http.exchange('b', 'b'), http.exchange('forged', 'forged')]);
  assert.equal(ok.status === 'fulfilled' && ok.value.payload.requestId, 'a');
  assert.ok(notCompact.status === 'rejected' && notCompact.reason instanceof KmsError);
  assert.equal(notCompact.reason.code, 'ANSWER_INVALID');
  assert.equal(notCompact.reason.requestId, 'b');
  assert.ok(refused.status === 'rejected');
  assert.equal(refused.reason, forged, "the decoder's own error");
});

test('close sends what is queued; afterwards every exchange is CLIENT_CLOSED', async () => {
  const { fetch, calls } = playedFetch();
  const http = transport(fetch, { debounceMs: 60_000 });
  const queued = http.exchange('a', 'a');
  await http.close();
  assert.equal((await queued).payload.requestId, 'a');
  const err = await refusal(http.exchange('b', 'r-2'), 'CLIENT_CLOSED');
  assert.equal(err.requestId, 'r-2');
  assert.equal(calls.length, 1, 'nothing sent after close');
});
