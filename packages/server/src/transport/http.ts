/**
 * The HTTP and WebSocket transports (PROTOCOL.md §3): thin adapters over kms.handle. The
 * transport is untrusted and only ever carries JOSE objects; per-message failures travel inside
 * a 200 as KMS error or reset messages, HTTP errors are only for a body that is not a batch.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { Limits } from '@openkms/protocol';
import type { Kms, Logger } from '../kms.js';
import type { Store } from '../store/store.js';
import type { Metrics } from './metrics.js';

export interface TransportOptions {
  kms: Kms;
  store: Store;
  metrics: Metrics;
  logger: Logger;
  tls?: { cert: string; key: string };
  /** Origins allowed by CORS (exact match, e.g. https://app.a.example). */
  corsOrigins?: readonly string[];
}

/** WebSocket frames one socket may have under way at once. */
const MAX_IN_FLIGHT_PER_SOCKET = 256;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function send(res: ServerResponse, status: number, body: unknown, type = 'application/json'): void {
  const text = type === 'application/json' ? JSON.stringify(body) : String(body);
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > Limits.maxBodyBytes) throw new HttpError(413, 'body over 1 MiB');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > Limits.maxBodyBytes) throw new HttpError(413, 'body over 1 MiB');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** Reads `{"kmsMessages": ["<compact>", …]}` (1–100 strings); anything else is a 400 or 413. */
function parseBatch(body: Buffer): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    throw new HttpError(400, 'body is not JSON');
  }
  const messages = (parsed as { kmsMessages?: unknown } | null)?.kmsMessages;
  if (!Array.isArray(messages) || messages.length === 0 || !messages.every((m) => typeof m === 'string')) {
    throw new HttpError(400, 'body must be {"kmsMessages": ["<compact JWE/JWS>", …]} with 1 to 100 messages');
  }
  if (messages.length > Limits.maxBatch) throw new HttpError(413, `at most ${Limits.maxBatch} messages per batch`);
  return messages as string[];
}

export class Transport {
  readonly server: Server;
  private readonly wss: WebSocketServer;
  private readonly sockets = new Set<Socket>();
  private inFlight = 0;
  private idle: (() => void) | undefined;
  private closing = false;

  constructor(private readonly options: TransportOptions) {
    const handler = (req: IncomingMessage, res: ServerResponse) => void this.route(req, res);
    this.server = options.tls ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, handler) : createHttpServer(handler);
    this.server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    // maxPayload: a larger frame closes the socket with 1009 (PROTOCOL.md §3).
    this.wss = new WebSocketServer({ noServer: true, maxPayload: Limits.maxBodyBytes });
    this.server.on('upgrade', (req, socket, head) => {
      if (new URL(req.url ?? '/', 'http://x').pathname !== '/kms/ws') {
        socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n');
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.serveSocket(ws));
    });
  }

  listen(port: number, host: string): Promise<{ port: number; host: string }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const addr = this.server.address();
        resolve({ port: typeof addr === 'object' && addr ? addr.port : port, host });
      });
    });
  }

  /** Stops accepting, lets in-flight requests finish, then closes every connection. */
  async close(): Promise<void> {
    this.closing = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const ws of this.wss.clients) ws.close(1001, 'server shutting down');
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    this.server.closeIdleConnections();
    setTimeout(() => this.sockets.forEach((s) => s.destroy()), 2000).unref();
    await closed;
  }

  private track<T>(work: Promise<T>): Promise<T> {
    this.inFlight++;
    return work.finally(() => {
      if (--this.inFlight === 0 && this.idle) this.idle();
    });
  }

  /**
   * CORS for browser clients of the listed origins. Messages are JOSE and carry their own
   * credentials, so no cookies are involved and no credentialed CORS is offered.
   */
  private cors(req: IncomingMessage, res: ServerResponse): boolean {
    const origin = req.headers.origin;
    if (!origin || !this.options.corsOrigins?.includes(origin)) return false;
    res.setHeader('access-control-allow-origin', origin);
    res.setHeader('vary', 'origin');
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        'access-control-allow-methods': 'GET, POST',
        'access-control-allow-headers': 'content-type',
        'access-control-max-age': '600',
      });
      res.end();
      return true;
    }
    return false;
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (this.cors(req, res)) return;
    try {
      if (req.method === 'POST' && path === '/kms/messages') {
        // Tracked from arrival (body included), so shutdown waits for it.
        const answers = await this.track(
          (async () => {
            const messages = parseBatch(await readBody(req));
            return Promise.all(messages.map((m) => this.options.kms.handle(m)));
          })(),
        );
        return send(res, 200, { kmsMessages: answers });
      }
      if (req.method === 'GET' || req.method === 'HEAD') {
        switch (path) {
          case '/.well-known/kms':
            return send(res, 200, this.options.kms.wellKnown());
          case '/healthz':
            return send(res, 200, { status: 'ok' });
          case '/readyz':
            try {
              await this.options.store.ping();
              return send(res, 200, { status: 'ready' });
            } catch {
              return send(res, 503, { status: 'storage unreachable' });
            }
          case '/metrics':
            return send(res, 200, await this.options.metrics.registry.metrics(), this.options.metrics.registry.contentType);
        }
      }
      send(res, 404, { error: `no such endpoint: ${req.method} ${path}` });
    } catch (err) {
      if (err instanceof HttpError) return send(res, err.status, { error: err.message });
      this.options.logger.error({ err: { message: (err as Error).message } }, 'http transport error');
      if (!res.headersSent) send(res, 500, { error: 'internal error' });
    }
  }

  private serveSocket(ws: WebSocket): void {
    let inFlight = 0;
    ws.on('message', (data, isBinary) => {
      if (this.closing) return;
      if (isBinary) return ws.close(1003, 'text frames only');
      // One socket may not queue unbounded work: past the limit it is closed (policy violation).
      if (inFlight >= MAX_IN_FLIGHT_PER_SOCKET) return ws.close(1008, 'too many requests in flight');
      inFlight++;
      const text = Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data as ArrayBuffer).toString('utf8');
      void this.track(this.options.kms.handle(text))
        .then(
          (answer) => ws.readyState === ws.OPEN && ws.send(answer),
          (err) => this.options.logger.error({ err: { message: (err as Error).message } }, 'websocket handler error'),
        )
        .finally(() => inFlight--);
    });
    ws.on('error', () => ws.terminate());
  }
}
