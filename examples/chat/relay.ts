/**
 * The chat room service of draft §3.2 (there an XMPP MUC room; here a WebSocket relay built on the
 * `ws` package). It keeps each room's history and fans every post out to everyone connected, but
 * it is not trusted with what is said: it accepts only compact JWEs that name a kms:// key, so all
 * it ever holds is ciphertext, plus the URI of the KMS resource object (KRO) that stands for the
 * room. It never talks to the KMS and never holds a key. Nor does it enforce who is a member: the
 * KMS does, by giving the keys only to those authorized on the room's KRO.
 *
 *   connect  ws://host/rooms/<room>?user=<user>
 *   → { type: 'welcome', room, resourceUri?, history: [{ seq, from, jwe }] }
 *   ← { type: 'set-resource', resourceUri }   → everyone: { type: 'resource', resourceUri }
 *   ← { type: 'post', jwe }                   → everyone: { type: 'message', seq, from, jwe }
 *   ← anything else                           → { type: 'error', reason }
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';

export interface Posted {
  seq: number;
  from: string;
  jwe: string;
}

export type RelayFrame =
  | { type: 'welcome'; room: string; resourceUri?: string; history: Posted[] }
  | ({ type: 'message' } & Posted)
  | { type: 'resource'; resourceUri: string }
  | { type: 'error'; reason: string };

interface Room {
  resourceUri?: string;
  history: Posted[];
  members: Set<WebSocket>;
}

export interface Relay {
  /** ws://127.0.0.1:<port> */
  url: string;
  /** Every frame the relay received or sent, as on the wire. */
  frames: string[];
  rooms: Map<string, { resourceUri?: string; history: Posted[] }>;
  close(): Promise<void>;
}

/** A compact JWE (five segments) whose protected header names a kms:// key. */
function isKmsJwe(value: unknown): value is string {
  if (typeof value !== 'string' || value.split('.').length !== 5) return false;
  try {
    const header = JSON.parse(Buffer.from(value.split('.')[0]!, 'base64url').toString('utf8')) as { kid?: unknown };
    return typeof header.kid === 'string' && header.kid.startsWith('kms://');
  } catch {
    return false;
  }
}

export async function startRelay(): Promise<Relay> {
  const rooms = new Map<string, Room>();
  const frames: string[] = [];
  const http = createServer((_req, res) => res.writeHead(426).end('WebSocket only\n'));
  const wss = new WebSocketServer({ server: http, maxPayload: 1024 * 1024 });

  const send = (socket: WebSocket, frame: RelayFrame) => {
    const text = JSON.stringify(frame);
    frames.push(text);
    socket.send(text);
  };

  wss.on('connection', (socket, req) => {
    const url = new URL(req.url ?? '/', 'http://relay');
    const match = /^\/rooms\/([\w.-]{1,64})$/.exec(url.pathname);
    const user = url.searchParams.get('user');
    if (!match || !user) return socket.close(1008, 'connect to /rooms/<room>?user=<user>');
    const name = match[1]!;
    let room = rooms.get(name);
    if (!room) rooms.set(name, (room = { history: [], members: new Set() }));
    const here = room;
    here.members.add(socket);
    socket.on('close', () => here.members.delete(socket));
    send(socket, { type: 'welcome', room: name, ...(here.resourceUri ? { resourceUri: here.resourceUri } : {}), history: here.history });

    socket.on('message', (data) => {
      const text = String(data);
      frames.push(text);
      let frame: { type?: unknown; jwe?: unknown; resourceUri?: unknown };
      try {
        frame = JSON.parse(text) as typeof frame;
      } catch {
        return send(socket, { type: 'error', reason: 'not JSON' });
      }
      if (frame.type === 'post') {
        if (!isKmsJwe(frame.jwe)) return send(socket, { type: 'error', reason: 'this room relays only content encrypted with a KMS key' });
        const posted: Posted = { seq: here.history.length + 1, from: user, jwe: frame.jwe };
        here.history.push(posted);
        for (const member of here.members) send(member, { type: 'message', ...posted });
      } else if (frame.type === 'set-resource' && typeof frame.resourceUri === 'string' && frame.resourceUri.startsWith('kms://')) {
        here.resourceUri = frame.resourceUri;
        for (const member of here.members) send(member, { type: 'resource', resourceUri: frame.resourceUri });
      } else {
        send(socket, { type: 'error', reason: 'unknown frame' });
      }
    });
  });

  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(0, '127.0.0.1', () => resolve());
  });
  return {
    url: `ws://127.0.0.1:${(http.address() as AddressInfo).port}`,
    frames,
    rooms,
    close: () =>
      new Promise<void>((resolve) => {
        for (const client of wss.clients) client.terminate();
        wss.close(() => http.close(() => resolve()));
      }),
  };
}
