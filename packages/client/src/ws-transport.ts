/**
 * WebSocket transport (`/kms/ws`): one frame per message, answers matched by requestId, a timeout
 * per request, and reconnection on the next request after the socket drops. Unsolicited resets
 * pushed by the KMS are passed to `onReset`.
 */
import { KmsError, peekHeader, type RequestId } from '@openkms/protocol';
import { connectionLost, failureDetail, timedOut, unreachable } from './failures.js';
import type { Answer, Decoder, Transport } from './transport.js';

/** The subset of the WHATWG WebSocket the transport uses (browsers, Node 22+, or the `ws` package). */
export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: 'message', listener: (event: { data: unknown }) => void): void;
  /** The close code (1006: the connection dropped) and reason. */
  addEventListener(type: 'close', listener: (event: { code?: number; reason?: string }) => void): void;
  /** Browsers say nothing about the failure; the `ws` package passes the socket error as `error`. */
  addEventListener(type: 'open' | 'error', listener: (event: unknown) => void): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface WsTransportOptions {
  url: string;
  decode: Decoder;
  WebSocket: WebSocketConstructor;
  timeoutMs?: number;
  onReset?: (answer: Answer) => void;
  /**
   * True when a message sent under `kid` can no longer be answered except by a reset (its channel
   * was dropped). A reset for a message the KMS could not read carries a requestId of its own, so
   * it is handed to every request waiting under such a kid (PROTOCOL.md §4: "echoed when known").
   */
  isDead?: (kid: unknown) => boolean;
}

const OPEN = 1;

interface Pending {
  resolve(answer: Answer): void;
  reject(err: unknown): void;
  timer: ReturnType<typeof setTimeout>;
  /** The socket it was sent on: only that socket's closing fails it. */
  ws: WebSocketLike;
  /** The kid of the message (a channel URI, or the static kid for a handshake). */
  kid: unknown;
  requestId: RequestId;
}

/** What an `error` event says: the `ws` package's socket error, else the event itself. */
function socketError(event: unknown): unknown {
  const error = (event as { error?: unknown } | null)?.error;
  return error ?? event;
}

export class WsTransport implements Transport {
  private socket: Promise<WebSocketLike> | undefined;
  private readonly pending = new Map<string, Pending>();
  private closed = false;
  /** Connections opened so far. */
  connections = 0;

  constructor(private readonly options: WsTransportOptions) {}

  private get url(): string {
    return `${this.options.url.replace(/^http/, 'ws')}/kms/ws`;
  }

  private connect(): Promise<WebSocketLike> {
    const url = this.url;
    const timeoutMs = this.options.timeoutMs ?? 30_000;
    const attempt = new Promise<WebSocketLike>((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new this.options.WebSocket(url);
      } catch (err) {
        return reject(unreachable(`WebSocket ${url}`, err));
      }
      this.connections++;
      let opened = false;
      /** The socket's last error, kept as the cause of the failures its closing brings. */
      let lastError: unknown;
      // An endpoint that accepts TCP but never completes the upgrade must not hang the caller.
      const timer = setTimeout(() => {
        if (opened) return;
        reject(timedOut(`opening WebSocket ${url}`, timeoutMs));
        ws.close();
      }, timeoutMs);
      ws.addEventListener('open', () => {
        clearTimeout(timer);
        opened = true;
        resolve(ws);
      });
      ws.addEventListener('error', (event) => {
        lastError = socketError(event);
        if (!opened) reject(unreachable(`WebSocket ${url}`, lastError));
      });
      ws.addEventListener('close', (event) => {
        clearTimeout(timer);
        if (this.socket === attempt) this.socket = undefined;
        const closed = `code ${event?.code ?? 'unknown'}${event?.reason ? `, ${event.reason}` : ''}`;
        const detail = lastError === undefined ? closed : `${failureDetail(lastError)}; ${closed}`;
        if (!opened) reject(connectionLost(new KmsError('KMS_UNREACHABLE', `KMS unreachable: WebSocket ${url} closed before it opened (${detail})`, { cause: lastError })));
        this.failAll((requestId) => connectionLost(new KmsError('KMS_UNREACHABLE', `KMS unreachable: WebSocket ${url} closed before the KMS answered (${detail})`, { cause: lastError, requestId })), ws);
      });
      ws.addEventListener('message', (event) => void this.receive(String(event.data)));
    });
    attempt.catch(() => {
      if (this.socket === attempt) this.socket = undefined;
    });
    return attempt;
  }

  private async receive(frame: string): Promise<void> {
    let answer: Answer;
    try {
      answer = await this.options.decode(frame);
    } catch {
      return; // Not ours to read (e.g. under a channel already replaced): nobody waits for it.
    }
    const key = String(answer.payload.requestId);
    const waiting = this.pending.get(key);
    if (waiting) {
      this.pending.delete(key);
      clearTimeout(waiting.timer);
      waiting.resolve(answer);
    } else if (answer.signed && answer.payload.status === 499) {
      this.options.onReset?.(answer);
      for (const [id, p] of this.pending) {
        if (!this.options.isDead?.(p.kid)) continue;
        this.pending.delete(id);
        clearTimeout(p.timer);
        p.resolve(answer);
      }
    }
  }

  /** Fails every request waiting (on `ws` only, when given), each with its own requestId. */
  private failAll(failure: (requestId: RequestId) => KmsError, ws?: WebSocketLike): void {
    for (const [id, p] of this.pending) {
      if (ws && p.ws !== ws) continue;
      clearTimeout(p.timer);
      p.reject(failure(p.requestId));
      this.pending.delete(id);
    }
  }

  async exchange(message: string, requestId: RequestId): Promise<Answer> {
    if (this.closed) throw new KmsError('CLIENT_CLOSED', 'client closed', { requestId });
    const current = (this.socket ??= this.connect());
    let ws = await current;
    if (ws.readyState !== OPEN) {
      // Closing (its close event not seen yet): the next request opens a new socket.
      if (this.socket === current || this.socket === undefined) this.socket = this.connect();
      ws = await this.socket;
    }
    const kid = peekHeader(message)?.kid;
    return new Promise((resolve, reject) => {
      const key = String(requestId);
      const timeoutMs = this.options.timeoutMs ?? 30_000;
      const timer = setTimeout(() => {
        this.pending.delete(key);
        reject(timedOut(`a message on WebSocket ${this.url}`, timeoutMs, undefined, requestId));
      }, timeoutMs);
      this.pending.set(key, { resolve, reject, timer, ws, kid, requestId });
      const unsent = (err: KmsError) => {
        this.pending.delete(key);
        clearTimeout(timer);
        this.socket = undefined; // the next request opens a new socket
        reject(err);
      };
      if (ws.readyState !== OPEN) {
        return unsent(connectionLost(new KmsError('KMS_UNREACHABLE', `KMS unreachable: WebSocket ${this.url} is no longer open (readyState ${ws.readyState})`, { requestId })));
      }
      try {
        ws.send(message);
      } catch (err) {
        unsent(unreachable(`WebSocket ${this.url}`, err, requestId));
      }
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const socket = this.socket;
    this.socket = undefined;
    this.failAll((requestId) => new KmsError('CLIENT_CLOSED', 'client closed before the KMS answered', { requestId }));
    if (socket) (await socket.catch(() => undefined))?.close(1000, 'client closed');
  }
}
