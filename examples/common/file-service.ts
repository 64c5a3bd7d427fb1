/**
 * The file-sharing service of draft §3.1 (the "resource server"): a plain node:http service that
 * stores whatever bytes it is given (used by examples/file-share and by the federation demo,
 * `kms demo`). It is trusted to store and serve files, not to keep them secret: it
 * only ever receives ciphertext (JWE chunks), the kms:// URIs of the key and of the KMS resource
 * object (KRO) that stands for the file. It never talks to the KMS and never holds a key.
 *
 *   POST /files                 body: the encrypted file; X-File-Name, X-User,
 *                               optionally X-Kms-Key (the key's kms:// URI)    → 201 { id, url }
 *   PUT  /files/<id>/resource   body: { "resourceUri": "kms://…/resources/…" } → 204
 *   GET  /files                 the listing (how others learn of a new file: its
 *                               URL, and its key's URI when the uploader gave it) → 200 [ … ]
 *   GET  /files/<id>            the stored bytes; X-Kms-Resource: the KRO URI  → 200
 *
 * Users are named by an X-User header: the service's own authentication is out of scope here.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';

export interface StoredFile {
  id: string;
  name: string;
  owner: string;
  bytes: Buffer;
  /** The kms:// URI of the key the file is encrypted with, when the uploader named it. */
  keyUri?: string;
  resourceUri?: string;
}

export interface FileService {
  url: string;
  /** Everything stored, by id. */
  files: Map<string, StoredFile>;
  /** Every request the service received — method, URL, headers and body — for inspection. */
  received: Buffer[];
  close(): Promise<void>;
}

const MAX_BYTES = 50 * 1024 * 1024;

async function body(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of req) {
    size += (part as Buffer).length;
    if (size > MAX_BYTES) throw Object.assign(new Error('file too large'), { status: 413 });
    parts.push(part as Buffer);
  }
  return Buffer.concat(parts);
}

function json(res: ServerResponse, status: number, value: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
}

export async function startFileService(): Promise<FileService> {
  const files = new Map<string, StoredFile>();
  const received: Buffer[] = [];
  let base = '';

  const server = createServer((req, res) => {
    handle(req, res).catch((err: { status?: number; message?: string }) => {
      if (!res.headersSent) json(res, err.status ?? 500, { error: err.message ?? 'error' });
      else res.destroy();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const bytes = await body(req);
    received.push(Buffer.from(`${req.method} ${req.url}\n${JSON.stringify(req.headers)}\n`), bytes);
    const path = new URL(req.url ?? '/', base).pathname;
    const user = String(req.headers['x-user'] ?? 'anonymous');
    const match = /^\/files\/([0-9a-f-]{36})(\/resource)?$/.exec(path);

    if (req.method === 'POST' && path === '/files') {
      const id = randomUUID();
      const keyUri = req.headers['x-kms-key'];
      if (keyUri !== undefined && (typeof keyUri !== 'string' || !keyUri.startsWith('kms://'))) return json(res, 400, { error: 'X-Kms-Key must be a kms:// URI' });
      files.set(id, { id, name: String(req.headers['x-file-name'] ?? 'untitled'), owner: user, bytes, keyUri });
      return json(res, 201, { id, url: `${base}/files/${id}` });
    }
    if (req.method === 'GET' && path === '/files') {
      return json(
        res,
        200,
        [...files.values()].map((f) => ({ id: f.id, name: f.name, owner: f.owner, size: f.bytes.length, url: `${base}/files/${f.id}`, keyUri: f.keyUri, resourceUri: f.resourceUri })),
      );
    }
    const file = match ? files.get(match[1]!) : undefined;
    if (!match) return json(res, 404, { error: 'not found' });
    if (!file) return json(res, 404, { error: 'no such file' });
    if (req.method === 'PUT' && match[2]) {
      if (user !== file.owner) return json(res, 403, { error: 'only the owner may set the resource' });
      const resourceUri = (JSON.parse(bytes.toString('utf8')) as { resourceUri?: unknown }).resourceUri;
      if (typeof resourceUri !== 'string' || !resourceUri.startsWith('kms://')) return json(res, 400, { error: 'resourceUri must be a kms:// URI' });
      file.resourceUri = resourceUri;
      res.writeHead(204).end();
      return;
    }
    if (req.method === 'GET' && !match[2]) {
      const headers: Record<string, string | number> = { 'content-type': 'application/octet-stream', 'content-length': file.bytes.length, 'x-file-name': file.name };
      if (file.resourceUri) headers['x-kms-resource'] = file.resourceUri;
      res.writeHead(200, headers).end(file.bytes);
      return;
    }
    json(res, 405, { error: 'method not allowed' });
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: base,
    files,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
