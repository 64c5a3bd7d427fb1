/**
 * Retries are safe (issue 8): a client whose connection breaks after the KMS carried out its
 * request but before the answer reached it sends the request again — the SDK does it at once, on
 * a new connection, on the same channel with the same requestId — and gets the FIRST answer back,
 * from whichever node the retry lands on: a retried create makes no second key set, a retried bind
 * is a 200, not a 409. Two copies of one request at once (a client and its impatient retry, on two
 * nodes) run it once.
 *
 * Two real `kms serve` processes on one database (SQLite file; PostgreSQL schema, fresh per run)
 * behind a load balancer played by the test: an HTTP proxy that hands each POST to the next node
 * in turn and, when told, forwards a request, waits for the KMS's answer and then destroys the
 * client's connection instead of answering (the answer is lost), or sends one request to both
 * nodes at once. The SDK is the real one; the KMS is the real one.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { KmsClient, KmsError, type WebSocketConstructor } from '@openkms/client';
import { runKms, serve, type Served } from '../support/cli.js';
import { onEachBackend, type Backend } from '../support/nodes.js';

const AUTHORITY = 'kms.retries.example';
const TEST = { timeout: 120_000 };

/** What the balancer does with the next POST /kms/messages. */
type Plan = 'forward' | 'lose' | 'duplicate';

interface Balancer {
  url: string;
  /** Plans for the next POSTs, in order; afterwards each is forwarded. */
  plan(...next: Plan[]): void;
  /** How each POST was handled, in order, and by which node. */
  log: string[];
  close(): Promise<void>;
}

async function body(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function balancer(nodes: Served[]): Promise<Balancer> {
  const plans: Plan[] = [];
  const log: string[] = [];
  let turn = 0;
  const forward = async (i: number, req: IncomingMessage, text: string) => {
    const res = await fetch(`${nodes[i]!.url}${req.url}`, { method: req.method, headers: { 'content-type': 'application/json' }, body: req.method === 'POST' ? text : undefined });
    return { status: res.status, type: res.headers.get('content-type') ?? 'application/json', text: await res.text() };
  };
  const answer = (res: ServerResponse, a: { status: number; type: string; text: string }) => res.writeHead(a.status, { 'content-type': a.type }).end(a.text);
  const server: Server = createServer((req, res) => {
    void (async () => {
      const text = await body(req);
      if (req.method !== 'POST') return answer(res, await forward(0, req, text));
      const plan = plans.shift() ?? 'forward';
      const i = turn++ % nodes.length;
      if (plan === 'duplicate') {
        // The same messages to both nodes at once; the client gets the first node's answer.
        const [first] = await Promise.all([forward(0, req, text), forward(1, req, text)]);
        log.push('duplicate to both');
        return answer(res, first);
      }
      const a = await forward(i, req, text);
      log.push(`${plan} ${i}`);
      // The KMS answered (its write is done); the client never hears it.
      if (plan === 'lose') return req.socket.destroy();
      answer(res, a);
    })().catch((err: Error) => res.writeHead(502).end(err.message));
  });
  // WebSocket: each client connection is relayed to the next node; a frame planned 'lose' is
  // forwarded, and when the node's answer comes back the client's socket is cut instead.
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (down) => {
    const i = turn++ % nodes.length;
    const up = new WebSocket(`${nodes[i]!.url.replace(/^http/, 'ws')}/kms/ws`);
    const early: RawData[] = [];
    let lose = 0;
    up.on('open', () => early.splice(0).forEach((m) => up.send(m.toString())));
    up.on('message', (m) => {
      if (lose > 0) {
        lose--;
        log.push(`lose ws ${i}`);
        return down.terminate();
      }
      down.send(m.toString());
    });
    down.on('message', (m) => {
      if (plans[0] === 'lose') {
        plans.shift();
        lose++;
      }
      if (up.readyState === WebSocket.OPEN) up.send(m.toString());
      else early.push(m);
    });
    down.on('close', () => up.close());
    up.on('close', () => down.close());
    up.on('error', () => down.terminate());
  }));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    plan: (...next) => void plans.push(...next),
    log,
    close: () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

function retries(db: Backend): void {
  describe(`retries on two kms serve processes on one ${db.name} database`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'kms-retries-'));
    const config = join(dir, 'kms.json');
    const nodes: Served[] = [];
    const clients: KmsClient[] = [];
    let lb: Balancer;

    const token = (user: string) => {
      const r = runKms(['token', '--config', config, '--user', user]);
      assert.equal(r.code, 0, r.stderr);
      return r.stdout.trim();
    };
    const client = (user: string, transport: 'http' | 'websocket' = 'http') => {
      const c = new KmsClient({
        url: lb.url,
        authority: AUTHORITY,
        token: token(user),
        trustAnchors: [readFileSync(join(dir, 'ca.pem'), 'utf8')],
        debounceMs: 0,
        transport,
        WebSocket: WebSocket as unknown as WebSocketConstructor,
      });
      clients.push(c);
      return c;
    };
    const keysOf = async (user: string) => (await db.sql(dir, `SELECT id FROM keys WHERE user_id = '${user}' ORDER BY id`)).map((r) => r.id as string);
    const audited = async (method: string, uriLike: string) =>
      (await db.sql(dir, `SELECT node, status, request_id FROM audit WHERE method = '${method}' AND uri LIKE '${uriLike}' ORDER BY seq`)).map((r) => ({ node: r.node as string, status: Number(r.status), requestId: r.request_id as string }));
    const idOf = (uri: string) => uri.slice(uri.lastIndexOf('/') + 1);

    before(async () => {
      const init = runKms(['init', '--dir', dir, '--authority', AUTHORITY, '--domain', 'retries.example']);
      assert.equal(init.code, 0, init.stderr);
      nodes.push(await serve(['--config', config, '--port', '0', ...db.dbArgs]));
      nodes.push(await serve(['--config', config, '--port', '0', ...db.dbArgs]));
      lb = await balancer(nodes);
    });
    after(async () => {
      await Promise.all(clients.map((c) => c.close().catch(() => {})));
      await lb?.close();
      const codes = await Promise.all(nodes.map((n) => n.stop()));
      rmSync(dir, { recursive: true, force: true });
      assert.deepEqual(codes, [0, 0]);
    });

    test('a create whose answer is lost: the SDK retries on the other node and gets the same keys; one key set exists', TEST, async () => {
      const user = `alice-${randomBytes(3).toString('hex')}@retries.example`;
      const alice = client(user);
      await alice.ping(); // the channel first, so the plan below meets the create itself
      lb.plan('lose');
      const keys = await alice.createKeys(3);
      assert.equal(keys.length, 3);
      assert.deepEqual(await keysOf(user), keys.map((k) => idOf(k.uri)).sort(), 'only the first key set exists');
      for (const k of keys) assert.equal((await alice.retrieveKey(k.uri)).jwk.k, k.jwk.k, 'the material of the first answer');
      const creates = await audited('create', '%/keys');
      const mine = creates.filter((c) => c.requestId === creates.at(-1)!.requestId);
      assert.equal(mine.length, 2, `the first copy and its retry, one requestId: ${JSON.stringify(creates)}`);
      assert.deepEqual(mine.map((c) => c.status), [201, 201]);
      assert.notEqual(mine[0]!.node, mine[1]!.node, 'the retry landed on the other node');
      assert.equal(alice.handshakes, 1, 'on the same channel');
    });

    test('a bind whose answer is lost: the retry is a 200 with the same answer, not a 409', TEST, async () => {
      const user = `bob-${randomBytes(3).toString('hex')}@retries.example`;
      const bob = client(user);
      const [k1, k2] = await bob.createKeys(2);
      const { resource } = await bob.createResource({ keyUris: [k1!.uri] });
      lb.plan('lose');
      const bound = await bob.bindKey(k2!.uri, resource.uri);
      assert.equal(bound.resourceUri, resource.uri);
      const again = await bob.retrieveKey(k2!.uri);
      assert.equal(again.bindDate, bound.bindDate, 'the first bind is the one that holds');
      // A new bind of the same key (a new requestId) is another request: the key is bound.
      await assert.rejects(bob.bindKey(k2!.uri, resource.uri), (err: unknown) => err instanceof KmsError && err.code === 'KEY_ALREADY_BOUND');
      const binds = (await audited('update', `%/keys/${idOf(k2!.uri)}`)).map((b) => b.status);
      assert.deepEqual(binds, [200, 200, 409], 'the bind, its retry (the first answer), the new bind');
    });

    test('a lost answer to a create of a resource with keys and of authorizations: the retries answer the first', TEST, async () => {
      const user = `carol-${randomBytes(3).toString('hex')}@retries.example`;
      const carol = client(user);
      const keys = await carol.createKeys(2);
      lb.plan('lose');
      const { resource } = await carol.createResource({ keyUris: keys.map((k) => k.uri), authIds: ['dave@retries.example'] });
      const resources = await db.sql(dir, `SELECT id FROM resources WHERE creator = '${user}'`);
      assert.deepEqual(resources.map((r) => r.id), [idOf(resource.uri)], 'one resource');
      lb.plan('lose');
      const added = await carol.authorize(resource.uri, ['erin@retries.example']);
      const listed = await carol.listAuthorizations(resource.uri, 'erin@retries.example');
      assert.deepEqual(listed.map((a) => a.uri), added.map((a) => a.uri), 'the authorization the first answer named');
    });

    test('over WebSocket: the socket cut before the answer; the retry on a new socket (the other node) gets the same keys', TEST, async () => {
      const user = `gina-${randomBytes(3).toString('hex')}@retries.example`;
      const gina = client(user, 'websocket');
      await gina.ping();
      lb.plan('lose');
      const keys = await gina.createKeys(2);
      assert.deepEqual(await keysOf(user), keys.map((k) => idOf(k.uri)).sort(), 'only the first key set exists');
      assert.ok(lb.log.some((l) => l.startsWith('lose ws')), lb.log.join());
      assert.equal(gina.handshakes, 1, 'on the same channel');
      for (const k of keys) assert.equal((await gina.retrieveKey(k.uri)).jwk.k, k.jwk.k);
    });

    test('two copies of one request at once, on both nodes: it runs once', TEST, async () => {
      const user = `frank-${randomBytes(3).toString('hex')}@retries.example`;
      const frank = client(user);
      await frank.ping();
      lb.plan('duplicate');
      const keys = await frank.createKeys(4);
      assert.deepEqual(await keysOf(user), keys.map((k) => idOf(k.uri)).sort(), 'one key set: the copy that waited got its answer');
      const creates = await audited('create', '%/keys');
      const copies = creates.filter((c) => c.requestId === creates.at(-1)!.requestId);
      assert.equal(copies.length, 2, JSON.stringify(creates));
      assert.equal(new Set(copies.map((c) => c.node)).size, 2, 'one copy on each node');
      // The copy that found the other running waited for its answer (or, past its deadline, was
      // told to retry later: never a second run, never a 500).
      for (const c of copies) assert.ok(c.status === 201 || c.status === 503, JSON.stringify(copies));
      assert.ok(copies.some((c) => c.status === 201));
      assert.ok(lb.log.includes('duplicate to both'), lb.log.join());
    });
  });
}

await onEachBackend('retries on two kms serve processes on one database', retries);
