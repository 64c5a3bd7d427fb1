/**
 * The WebSocket transport against a socket the test plays (the WebSocketLike the SDK is given):
 * answers matched by requestId, and every way a socket fails, each with its code, its cause and
 * the requestId of each request waiting. The real sockets (the `ws` package, a browser's) are
 * exercised against the real KMS in test/client.test.ts and test/browser.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Answer } from '../src/transport.js';
import { WsTransport, type WebSocketConstructor, type WebSocketLike, type WsTransportOptions } from '../src/ws-transport.js';
import { isConnectionLost } from '../src/failures.js';
import { refusal } from './support.js';

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

/** Frames are JSON payloads: the transport only carries and matches them. */
const decode = async (frame: string): Promise<Answer> => ({ payload: JSON.parse(frame) as Answer['payload'], signed: false });
const frame = (requestId: string, status = 200) => JSON.stringify({ status, requestId });

/** A socket driven by the test: it opens, answers, fails or closes when told. */
class PlayedSocket implements WebSocketLike {
  readyState = CONNECTING;
  readonly sent: string[] = [];
  closedWith: number | undefined;
  sendThrows: Error | undefined;
  private readonly listeners = new Map<string, ((event: never) => void)[]>();
  constructor(readonly url: string) {}
  addEventListener(type: string, listener: (event: never) => void): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }
  private emit(type: string, event: unknown): void {
    for (const listener of this.listeners.get(type) ?? []) listener(event as never);
  }
  send(data: string): void {
    if (this.sendThrows) throw this.sendThrows;
    this.sent.push(data);
  }
  close(code = 1005): void {
    this.closedWith = code;
    this.drop(code);
  }
  open(): void {
    this.readyState = OPEN;
    this.emit('open', {});
  }
  answer(data: string): void {
    this.emit('message', { data });
  }
  /** An error event: the `ws` package's carries the socket error, a browser's nothing. */
  fail(error?: Error): void {
    this.emit('error', error ? { type: 'error', error, message: error.message } : { type: 'error' });
  }
  drop(code = 1006, reason = ''): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.emit('close', { code, reason });
  }
}

/** A WebSocket constructor whose sockets the test drives; `opens` makes each one open at once. */
function playedWebSocket(opens = true): { WebSocket: WebSocketConstructor; sockets: PlayedSocket[] } {
  const sockets: PlayedSocket[] = [];
  class Played extends PlayedSocket {
    constructor(url: string) {
      super(url);
      sockets.push(this);
      if (opens) queueMicrotask(() => this.open());
    }
  }
  return { WebSocket: Played, sockets };
}

function transport(WebSocket: WebSocketConstructor, options: Partial<WsTransportOptions> = {}): WsTransport {
  return new WsTransport({ url: 'http://127.0.0.1:7001', decode, WebSocket, timeoutMs: 5_000, ...options });
}

/** Lets the transport's promise chains run (socket opening, sending). */
const settle = () => new Promise((resolve) => setImmediate(resolve));

test('one socket to ws://…/kms/ws carries every request; answers find their request by requestId, in any order', async () => {
  const { WebSocket, sockets } = playedWebSocket();
  const ws = transport(WebSocket);
  const a = ws.exchange('message a', 'a');
  const b = ws.exchange('message b', 'b');
  await settle();
  assert.equal(sockets.length, 1);
  assert.equal(sockets[0]!.url, 'ws://127.0.0.1:7001/kms/ws');
  assert.deepEqual(sockets[0]!.sent, ['message a', 'message b']);
  sockets[0]!.answer(frame('unknown')); // nobody waits for it: dropped
  sockets[0]!.answer(frame('b'));
  sockets[0]!.answer(frame('a'));
  assert.equal((await a).payload.requestId, 'a');
  assert.equal((await b).payload.requestId, 'b');
  await ws.close();
});

test('a refused connection is KMS_UNREACHABLE naming the socket, with the socket error as cause; the next request tries again', async () => {
  const { WebSocket, sockets } = playedWebSocket(false);
  const ws = transport(WebSocket);
  const first = refusal(ws.exchange('m', 'r-1'), 'KMS_UNREACHABLE', /^KMS unreachable: WebSocket ws:\/\/127\.0\.0\.1:7001\/kms\/ws: connect ECONNREFUSED 127\.0\.0\.1:7001$/);
  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:7001'), { code: 'ECONNREFUSED' });
  sockets[0]!.fail(refused);
  sockets[0]!.drop(1006);
  assert.equal((await first).cause, refused);
  const second = ws.exchange('m', 'r-2');
  await settle();
  assert.equal(sockets.length, 2, 'a new socket');
  sockets[1]!.open();
  await settle();
  sockets[1]!.answer(frame('r-2'));
  assert.equal((await second).payload.requestId, 'r-2');
  await ws.close();
});

test('a browser\'s error event says nothing, and says so; a close before opening names its code', async () => {
  const { WebSocket, sockets } = playedWebSocket(false);
  const ws = transport(WebSocket);
  const failed = refusal(ws.exchange('m', 'r-1'), 'KMS_UNREACHABLE', /ws:\/\/127\.0\.0\.1:7001\/kms\/ws: no detail given$/);
  sockets[0]!.fail();
  await failed;
  const { WebSocket: Closing, sockets: closing } = playedWebSocket(false);
  const ws2 = transport(Closing);
  const closed = refusal(ws2.exchange('m', 'r-1'), 'KMS_UNREACHABLE', /closed before it opened \(code 1006\)$/);
  closing[0]!.drop(1006);
  assert.equal((await closed).cause, undefined);
});

test('a socket that never opens is KMS_TIMEOUT after timeoutMs, and is closed', async () => {
  const { WebSocket, sockets } = playedWebSocket(false);
  const ws = transport(WebSocket, { timeoutMs: 20 });
  await refusal(ws.exchange('m', 'r-1'), 'KMS_TIMEOUT', /^KMS did not answer in time: opening WebSocket ws:\/\/127\.0\.0\.1:7001\/kms\/ws \(timeout 20 ms\)$/);
  assert.equal(sockets[0]!.readyState, CLOSED);
});

test('a request unanswered within timeoutMs is KMS_TIMEOUT with its requestId; the socket stays', async () => {
  const { WebSocket, sockets } = playedWebSocket();
  const ws = transport(WebSocket, { timeoutMs: 20 });
  const err = await refusal(ws.exchange('m', 'r-1'), 'KMS_TIMEOUT', /a message on WebSocket ws:\/\/127\.0\.0\.1:7001\/kms\/ws \(timeout 20 ms\)/);
  assert.equal(err.requestId, 'r-1');
  sockets[0]!.answer(frame('r-1')); // too late: nobody waits for it any more
  const next = ws.exchange('m', 'r-2');
  await settle();
  sockets[0]!.answer(frame('r-2'));
  assert.equal((await next).payload.requestId, 'r-2');
  assert.equal(sockets.length, 1);
  await ws.close();
});

test('a socket that closes under waiting requests fails each with KMS_UNREACHABLE, its requestId, the close code and the last error', async () => {
  const { WebSocket, sockets } = playedWebSocket();
  const ws = transport(WebSocket);
  const waiting = [refusal(ws.exchange('a', 'r-1'), 'KMS_UNREACHABLE'), refusal(ws.exchange('b', 'r-2'), 'KMS_UNREACHABLE')];
  await settle();
  const reset = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
  sockets[0]!.fail(reset);
  sockets[0]!.drop(1009, 'message too big');
  const errors = await Promise.all(waiting);
  assert.deepEqual(errors.map((e) => e.requestId), ['r-1', 'r-2']);
  for (const err of errors) {
    assert.match(err.reason, /closed before the KMS answered \(read ECONNRESET; code 1009, message too big\)$/);
    assert.equal(err.cause, reset);
    assert.ok(isConnectionLost(err), 'a lost connection: the client may retry the request');
  }
  await ws.close();
});

test('a send that throws is KMS_UNREACHABLE with that error as cause; the next request opens a new socket', async () => {
  const { WebSocket, sockets } = playedWebSocket();
  const ws = transport(WebSocket);
  await settle();
  const first = ws.exchange('m', 'r-0');
  await settle();
  sockets[0]!.answer(frame('r-0'));
  await first;
  const broken = new Error('InvalidStateError');
  sockets[0]!.sendThrows = broken;
  const err = await refusal(ws.exchange('m', 'r-1'), 'KMS_UNREACHABLE', /InvalidStateError/);
  assert.equal(err.cause, broken);
  assert.equal(err.requestId, 'r-1');
  const next = ws.exchange('m', 'r-2');
  await settle();
  assert.equal(sockets.length, 2);
  sockets[1]!.answer(frame('r-2'));
  assert.equal((await next).payload.requestId, 'r-2');
  await ws.close();
});

test('a WebSocket constructor that throws is KMS_UNREACHABLE with its error as cause', async () => {
  const syntax = new SyntaxError('The URL is invalid');
  class Refusing extends PlayedSocket {
    constructor(url: string) {
      super(url);
      throw syntax;
    }
  }
  const err = await refusal(transport(Refusing).exchange('m', 'r-1'), 'KMS_UNREACHABLE', /The URL is invalid$/);
  assert.equal(err.cause, syntax);
});

test('close fails the waiting requests with CLIENT_CLOSED, closes the socket, and refuses every later exchange', async () => {
  const { WebSocket, sockets } = playedWebSocket();
  const ws = transport(WebSocket);
  const waiting = refusal(ws.exchange('m', 'r-1'), 'CLIENT_CLOSED', /before the KMS answered/);
  await settle();
  await ws.close();
  assert.equal((await waiting).requestId, 'r-1');
  assert.equal(sockets[0]!.closedWith, 1000);
  assert.equal((await refusal(ws.exchange('m', 'r-2'), 'CLIENT_CLOSED')).requestId, 'r-2');
  assert.equal(sockets.length, 1, 'no new socket after close');
});
