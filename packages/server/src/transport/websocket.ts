/**
 * The WebSocket transport (PROTOCOL.md §3) at /kms/ws: one text frame per compact message each
 * way, answers in any order (clients match them by requestId). A thin adapter over the core's
 * message handler, like the HTTP batch endpoint.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { Limits } from '@openkms/protocol';
import { MAX_IN_FLIGHT_PER_SOCKET } from '../limits.js';
import type { Logger } from '../logger.js';

export class WebSocketEndpoint {
  private readonly wss: WebSocketServer;
  private closing = false;

  constructor(
    private readonly kms: { handle(compact: string, from?: { address?: string }): Promise<string> },
    private readonly logger: Logger,
    /** Wraps each message's work so that the server's shutdown waits for it. */
    private readonly track: <T>(work: Promise<T>) => Promise<T>,
  ) {
    // maxPayload: a larger frame closes the socket with 1009 (PROTOCOL.md §3).
    this.wss = new WebSocketServer({ noServer: true, maxPayload: Limits.maxBodyBytes });
  }

  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const from = { address: req.socket.remoteAddress };
    this.wss.handleUpgrade(req, socket, head, (ws) => this.serve(ws, from));
  }

  /** Stops taking frames and tells every client the server is going away. */
  close(): void {
    this.closing = true;
    for (const ws of this.wss.clients) ws.close(1001, 'server shutting down');
  }

  private serve(ws: WebSocket, from: { address?: string }): void {
    let inFlight = 0;
    ws.on('message', (data, isBinary) => {
      if (this.closing) return;
      if (isBinary) return ws.close(1003, 'text frames only');
      // One socket may not queue unbounded work: past the limit it is closed (policy violation).
      if (inFlight >= MAX_IN_FLIGHT_PER_SOCKET) return ws.close(1008, 'too many requests in flight');
      inFlight++;
      // ws hands a Buffer (its default binaryType): read as it is, not copied first.
      const text = Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.isBuffer(data) ? data.toString('utf8') : Buffer.from(data).toString('utf8');
      void this.track(this.kms.handle(text, from))
        .then(
          (answer) => ws.readyState === ws.OPEN && ws.send(answer),
          (err) => this.logger.error({ err: { message: (err as Error).message } }, 'websocket handler error'),
        )
        .finally(() => inFlight--);
    });
    ws.on('error', () => ws.terminate());
  }
}
