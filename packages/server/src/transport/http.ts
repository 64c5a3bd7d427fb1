/**
 * The HTTP transport (PROTOCOL.md §3): a thin adapter over the core's message handler, plus the
 * discovery, health, readiness and metrics endpoints; WebSocket upgrades go to `websocket.ts`.
 * The transport is untrusted and only ever carries JOSE objects; per-message failures travel
 * inside a 200 as KMS error or reset messages, HTTP errors are only for a body that is not a batch.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import { Limits } from '@openkms/protocol';
import type { Logger } from '../logger.js';
import { WebSocketEndpoint } from './websocket.js';

/** What a transport needs of the KMS: nothing but this. */
export interface MessageHandler {
  /**
   * One compact JWE/JWS in, one out (errors travel inside the answer). `from.address`: the
   * connection's remote address, which handshakes are counted by (behind a proxy, the proxy's).
   */
  handle(compact: string, from?: { address?: string }): Promise<string>;
  /** The document served at /.well-known/kms. */
  wellKnown(): unknown;
  /** Whether this node can serve requests now (its storage answers). */
  ready(): Promise<boolean>;
}

export interface TransportOptions {
  kms: MessageHandler;
  /** What /metrics serves: Prometheus text (the registry of src/metrics.ts). */
  metrics: { readonly contentType: string; metrics(): Promise<string> };
  logger: Logger;
  tls?: { cert: string; key: string };
  /** Origins allowed by CORS (exact match, e.g. https://app.a.example). */
  corsOrigins?: readonly string[];
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function send(res: ServerResponse, status: number, body: unknown, type = 'application/json'): void {
  // Encoded once: its length and its bytes (a batch answer is tens of KiB).
  const bytes = Buffer.from(type === 'application/json' ? JSON.stringify(body) : String(body), 'utf8');
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'content-length': bytes.length });
  res.end(bytes);
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
  private readonly websocket: WebSocketEndpoint;
  private readonly sockets = new Set<Socket>();
  private inFlight = 0;
  private idle: (() => void) | undefined;

  constructor(private readonly options: TransportOptions) {
    const handler = (req: IncomingMessage, res: ServerResponse) => void this.route(req, res);
    this.server = options.tls ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, handler) : createHttpServer(handler);
    this.server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    this.websocket = new WebSocketEndpoint(options.kms, options.logger, (work) => this.track(work));
    this.server.on('upgrade', (req, socket, head) => {
      if (new URL(req.url ?? '/', 'http://x').pathname !== '/kms/ws') {
        socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n');
        return;
      }
      this.websocket.upgrade(req, socket, head);
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
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.websocket.close();
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    this.server.closeIdleConnections();
    setTimeout(() => this.sockets.forEach((s) => s.destroy()), 2000).unref();
    await closed;
  }

  /** Counts work under way, so that close() waits for it. */
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
            const from = { address: req.socket.remoteAddress };
            return Promise.all(messages.map((m) => this.options.kms.handle(m, from)));
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
            return (await this.options.kms.ready()) ? send(res, 200, { status: 'ready' }) : send(res, 503, { status: 'storage unreachable' });
          case '/metrics':
            return send(res, 200, await this.options.metrics.metrics(), this.options.metrics.contentType);
        }
      }
      send(res, 404, { error: `no such endpoint: ${req.method} ${path}` });
    } catch (err) {
      if (err instanceof HttpError) return send(res, err.status, { error: err.message });
      this.options.logger.error({ err: { message: (err as Error).message } }, 'http transport error');
      if (!res.headersSent) send(res, 500, { error: 'internal error' });
    }
  }
}
