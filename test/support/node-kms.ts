/**
 * Drives the real Cisco client, node-kms@0.4.1 (the one the Webex SDK uses), unchanged: its own
 * Context, Request and Response objects do the ECDHE handshake and wrap every request.
 */
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
