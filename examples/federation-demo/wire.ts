/**
 * What crossed which wire, for `kms demo`: no mocks, only observation.
 *
 * - `recordingFetch` is the `fetch` a user's KmsClient is given: it calls the real fetch and notes
 *   each HTTP exchange (the SDK's `fetch` option, meant for exactly this kind of wrapping).
 * - `startWireTap` is a plain loopback HTTP relay placed in front of a KMS as the endpoint its
 *   peer is configured with (`kms peer add --endpoint`): the KMS-to-KMS transport is untrusted by
 *   design (every message is JOSE), so a relay in between is a legitimate deployment, and it
 *   sees exactly what an eavesdropper on that wire would see.
 *
 * Each record keeps the bodies (for the demo's "no key, no plaintext crossed here" checks) and a
 * description of the JOSE objects in them (`JWE dir/A256GCM carrying a signed JWS`, `JWS PS256`).
 */
import { createServer, request as httpRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FetchLike } from '@openkms/client';

export interface WireRecord {
  /** performance.now() when the answer came back. */
  at: number;
  from: string;
  to: string;
  method: string;
  path: string;
  status: number;
  requestBody: string;
  responseBody: string;
  /** The JOSE objects (or documents) in each body, described. */
  request: string[];
  response: string[];
}

/** Every exchange observed, in order, across all wires. */
export class Wire {
  readonly records: WireRecord[] = [];
  mark(): number {
    return this.records.length;
  }
  since(mark: number, filter: { from?: string; to?: string } = {}): WireRecord[] {
    return this.records.slice(mark).filter((r) => (filter.from === undefined || r.from === filter.from) && (filter.to === undefined || r.to === filter.to));
  }
}

function b64json(segment: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8')) as unknown;
    return v && typeof v === 'object' ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** `JWE dir/A256GCM`, `JWE RSA-OAEP-256/A256GCM carrying a signed JWS`, `JWS PS256`. */
export function describeJose(compact: string): string {
  const parts = compact.split('.');
  const header = b64json(parts[0] ?? '');
  if (!header) return 'not JOSE';
  if (parts.length === 5) return `JWE ${String(header.alg)}/${String(header.enc)}${header.cty === 'JOSE' ? ' carrying a signed JWS' : ''}`;
  if (parts.length === 3) return `JWS ${String(header.alg)}`;
  return 'not JOSE';
}

/** What a body holds: the KMS messages of a batch, the discovery document, or nothing. */
export function describeBody(body: string): string[] {
  if (body.length === 0) return [];
  try {
    const v = JSON.parse(body) as { kmsMessages?: unknown; kmsCluster?: unknown; rsaPublicKey?: { x5c?: unknown[] } };
    if (Array.isArray(v.kmsMessages)) return v.kmsMessages.map((m) => (typeof m === 'string' ? describeJose(m) : 'not JOSE'));
    if (typeof v.kmsCluster === 'string') return [`${v.kmsCluster}'s static public key with a ${v.rsaPublicKey?.x5c?.length ?? 0}-certificate chain (JSON)`];
    return ['JSON'];
  } catch {
    return ['bytes'];
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function annotate(descriptions: string[], bytes: number): string {
  if (descriptions.length === 0) return '';
  const kinds = [...new Set(descriptions)];
  const what = descriptions.length === 1 ? kinds[0]! : `${descriptions.length} messages: ${kinds.join(', ')}`;
  return ` [${what}, ${formatBytes(bytes)}]`;
}

/** ` [JWE dir/A256GCM, 412 B]`: what the requests of these records carried, all together. */
export function requestNote(records: WireRecord[]): string {
  return annotate(records.flatMap((r) => r.request), records.reduce((n, r) => n + Buffer.byteLength(r.requestBody), 0));
}

/** The same for the answers. */
export function responseNote(records: WireRecord[]): string {
  return annotate(records.flatMap((r) => r.response), records.reduce((n, r) => n + Buffer.byteLength(r.responseBody), 0));
}

/** A KmsClient `fetch` that notes every exchange as `from` → `to`. */
export function recordingFetch(wire: Wire, from: string, to: string): FetchLike {
  return async (input, init) => {
    const res = await fetch(input, init);
    const text = await res.text();
    const body = init.body ?? '';
    wire.records.push({
      at: performance.now(),
      from,
      to,
      method: init.method,
      path: new URL(input).pathname,
      status: res.status,
      requestBody: body,
      responseBody: text,
      request: describeBody(body),
      response: describeBody(text),
    });
    return { status: res.status, text: async () => text, json: async () => JSON.parse(text) as unknown };
  };
}

export interface WireTap {
  /** http://127.0.0.1:<port>: what the other KMS is told is this KMS's endpoint. */
  url: string;
  /** While true the relay cuts every connection (recorded with status 0): a one-way partition. */
  cut: boolean;
  close(): Promise<void>;
}

async function readAll(stream: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'host', 'upgrade', 'proxy-connection']);

/** A loopback HTTP relay to `target`, noting each exchange as `from` → `to`. */
export async function startWireTap(wire: Wire, from: string, to: string, target: string): Promise<WireTap> {
  const base = new URL(target);
  const tap: { cut: boolean } = { cut: false }; // checked on every request, kept-alive connections included
  const server = createServer((req, res) => {
    void (async () => {
      const body = await readAll(req);
      if (tap.cut) {
        const requestBody = body.toString('utf8');
        const path = new URL(req.url ?? '/', base).pathname;
        wire.records.push({ at: performance.now(), from, to, method: req.method ?? 'GET', path, status: 0, requestBody, responseBody: '', request: describeBody(requestBody), response: [] });
        res.destroy();
        return;
      }
      const headers: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
      headers['content-length'] = String(body.length);
      const upstream = await new Promise<{ status: number; headers: Record<string, string | string[]>; body: Buffer }>((resolve, reject) => {
        const out = httpRequest({ host: base.hostname, port: base.port, method: req.method, path: req.url, headers }, (answer) => {
          readAll(answer).then((bytes) => {
            const h: Record<string, string | string[]> = {};
            for (const [k, v] of Object.entries(answer.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) h[k] = v;
            resolve({ status: answer.statusCode ?? 502, headers: h, body: bytes });
          }, reject);
        });
        out.once('error', reject);
        out.end(body);
      });
      const requestBody = body.toString('utf8');
      const responseBody = upstream.body.toString('utf8');
      wire.records.push({
        at: performance.now(),
        from,
        to,
        method: req.method ?? 'GET',
        path: new URL(req.url ?? '/', base).pathname,
        status: upstream.status,
        requestBody,
        responseBody,
        request: describeBody(requestBody),
        response: describeBody(responseBody),
      });
      res.writeHead(upstream.status, { ...upstream.headers, 'content-length': String(upstream.body.length) }).end(upstream.body);
    })().catch(() => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return Object.assign(tap, {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  });
}
