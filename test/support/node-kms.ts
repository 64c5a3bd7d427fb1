/**
 * Drives the real Cisco client, node-kms@0.4.1 (the one the Webex SDK uses), unchanged: its own
 * Context, Request and Response objects do the ECDHE handshake and wrap every request.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
// eslint-disable-next-line @typescript-eslint/no-require-imports
const KMS = require('node-kms') as {
  Context: new () => NodeKmsContext;
  Request: new (body: Record<string, unknown>) => { wrap(ctx: NodeKmsContext, opts?: { serverKey?: boolean }): Promise<string>; wrapped: string };
  Response: new (wrapped: string) => { unwrap(ctx: NodeKmsContext): Promise<Record<string, unknown>>; body: Record<string, unknown> };
};

interface NodeKmsContext {
  clientInfo: unknown;
  serverInfo: unknown;
  ephemeralKey: { jwk: Record<string, string>; uri: string } | null;
  createECDHKey(): Promise<{ jwk: Record<string, string> }>;
  deriveEphemeralKey(remote: unknown): Promise<{ jwk: Record<string, string>; uri: string }>;
}

async function post(url: string, message: string): Promise<string> {
  const res = await fetch(`${url}/kms/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kmsMessages: [message] }) });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
  return ((await res.json()) as { kmsMessages: string[] }).kmsMessages[0]!;
}

export interface NodeKmsSession {
  /** The client's ECDH private key `d` it sent in the handshake, and the derived channel key. */
  secrets: string[];
  channelUri: string;
  call(body: Record<string, unknown>): Promise<Record<string, unknown>>;
}

export async function nodeKmsSession(url: string, bearer: string, clientId: string): Promise<NodeKmsSession> {
  const wellKnown = (await (await fetch(`${url}/.well-known/kms`)).json()) as { rsaPublicKey: unknown };
  const ctx = new KMS.Context();
  // The Webex client puts a device-local id in credential.userId; the KMS must ignore it.
  ctx.clientInfo = { clientId, credential: { userId: 'device-local-id', bearer } };
  ctx.serverInfo = { key: wellKnown.rsaPublicKey };
  const local = await ctx.createECDHKey();
  ctx.ephemeralKey = local as NodeKmsContext['ephemeralKey'];
  const hello = new KMS.Request({ method: 'create', uri: '/ecdhe', jwk: local.jwk });
  await hello.wrap(ctx, { serverKey: true });
  const answer = new KMS.Response(await post(url, hello.wrapped));
  await answer.unwrap(ctx);
  if (answer.body.status !== 201) throw new Error(`node-kms handshake refused: ${answer.body.status} ${answer.body.reason}`);
  const channel = await ctx.deriveEphemeralKey(answer.body.key);
  ctx.ephemeralKey = channel;
  return {
    secrets: [local.jwk.d!, channel.jwk.k!],
    channelUri: channel.uri,
    async call(body) {
      const request = new KMS.Request(body);
      await request.wrap(ctx);
      const response = new KMS.Response(await post(url, request.wrapped));
      return response.unwrap(ctx);
    },
  };
}

/**
 * The interop flow against the KMS at `url` (users of a.example; `token` makes their bearers):
 * handshake, create keys -> create resource -> retrieve as another user, and the refusals.
 */
export async function nodeKmsFlow(url: string, token: (user: string) => string): Promise<void> {
  const alice = await nodeKmsSession(url, token('alice@a.example'), 'alice-web');
  assert.match(alice.channelUri, /^kms:\/\/kms\.a\.example\/ecdhe\/[0-9a-f-]{36}$/);

  const created = await alice.call({ method: 'create', uri: '/keys', count: 2 });
  assert.equal(created.status, 201);
  const keys = created.keys as { uri: string; jwk: { k: string; kid: string; kty: string }; userId: string; clientId: string }[];
  assert.equal(keys.length, 2);
  assert.equal(keys[0]!.jwk.kty, 'oct');
  assert.equal(Buffer.from(keys[0]!.jwk.k, 'base64url').length, 32);
  assert.equal(keys[0]!.userId, 'alice@a.example');
  assert.equal(keys[0]!.clientId, 'alice-web');

  const resource = await alice.call({ method: 'create', uri: '/resources', userIds: ['bob@a.example'], keyUris: [keys[0]!.uri] });
  assert.equal(resource.status, 201);
  const rep = resource.resource as { uri: string; keyUris: string[]; authorizationUris: string[] };
  assert.deepEqual(rep.keyUris, [keys[0]!.uri]);
  assert.equal(rep.authorizationUris.length, 2);

  const bob = await nodeKmsSession(url, token('bob@a.example'), 'bob-phone');
  const got = await bob.call({ method: 'retrieve', uri: keys[0]!.uri });
  assert.equal(got.status, 200);
  const key = got.key as { jwk: { k: string }; resourceUri: string; bindDate: string };
  assert.equal(key.jwk.k, keys[0]!.jwk.k, 'Bob reads the key Alice bound');
  assert.equal(key.resourceUri, rep.uri);
  assert.match(key.bindDate, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);

  const all = await bob.call({ method: 'retrieve', uri: `${rep.uri}/keys` });
  assert.equal(all.status, 200);
  assert.deepEqual((all.keys as { uri: string }[]).map((k) => k.uri), [keys[0]!.uri]);

  const carol = await nodeKmsSession(url, token('carol@a.example'), 'carol-web');
  const refused = await carol.call({ method: 'retrieve', uri: keys[0]!.uri });
  assert.equal(refused.status, 403);

  // The unbound second key stays Alice's alone.
  assert.equal((await bob.call({ method: 'retrieve', uri: keys[1]!.uri })).status, 403);
  assert.equal((await alice.call({ method: 'retrieve', uri: keys[1]!.uri })).status, 200);
  assert.equal((await bob.call({ method: 'update', uri: '/ping' })).status, 200);
}
