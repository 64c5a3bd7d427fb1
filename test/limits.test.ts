/**
 * The limits on by default (docs/decisions.md, "Limits on by default"), through a real KMS over
 * HTTP and WebSocket: a principal flooding past its limit gets 429s while another principal is
 * served all along; a host flooding handshakes gets 429s while a host at another address
 * handshakes (the KMS sees 127.0.0.1 and 127.0.0.2: clients bind their connections to either
 * loopback address); each refusal is a well-formed answer the SDK matches to its request.
 */
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { KmsClient, KmsError, type FetchLike, type KmsClientOptions } from '@openkms/client';
import { join } from 'node:path';
import { kmsFolder, manualClock, startDevKms, type DevKms } from '@openkms/server/testing';
import { loadConfig } from '../packages/server/dist/src/config.js';

/** fetch over connections from `localAddress` (the address the KMS sees). */
function fetchFrom(localAddress: string): FetchLike {
  return (input, init) =>
    new Promise((resolve, reject) => {
      const req = httpRequest(input, { method: init.method, headers: init.headers, localAddress, signal: init.signal }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, json: async () => JSON.parse(text) as unknown, text: async () => text });
        });
      });
      req.on('error', reject);
      req.end(init.body);
    });
}

/** The `ws` WebSocket, its connections from `localAddress`. */
function webSocketFrom(localAddress: string): NonNullable<KmsClientOptions['WebSocket']> {
  return class extends WebSocket {
    constructor(url: string) {
      super(url, { localAddress });
    }
  } as unknown as NonNullable<KmsClientOptions['WebSocket']>;
}

const isRateLimited = (err: unknown) => err instanceof KmsError && err.code === 'RATE_LIMITED' && err.status === 429;

/** Settles every call, and says which failed with what. */
async function outcomes(calls: Promise<unknown>[]): Promise<{ ok: number; limited: number; other: unknown[] }> {
  const settled = await Promise.allSettled(calls);
  const other = settled.filter((s) => s.status === 'rejected' && !isRateLimited(s.reason)).map((s) => (s as PromiseRejectedResult).reason as unknown);
  return { ok: settled.filter((s) => s.status === 'fulfilled').length, limited: settled.filter((s) => s.status === 'rejected' && isRateLimited(s.reason)).length, other };
}

test('the defaults are on: a limit per principal and one per address for handshakes (a folder of kms init)', async () => {
  const config = loadConfig(join(await kmsFolder(), 'kms.json'));
  assert.equal(config.limits.requestsPerMinutePerPrincipal, 1200);
  assert.equal(config.limits.handshakesPerMinutePerAddress, 600);
});

describe('a principal past its limit', () => {
  const clock = manualClock();
  const LIMIT = 20;
  let kms: DevKms;
  const clients: KmsClient[] = [];
  const client = (user: string, transport: 'http' | 'websocket' = 'http') => {
    const c = new KmsClient({ url: kms.url, token: () => kms.token(user, { ttlSeconds: 7200 }), trustAnchors: kms.trustAnchors, transport, WebSocket: WebSocket as unknown as KmsClientOptions['WebSocket'], now: clock.now });
    clients.push(c);
    return c;
  };
  before(async () => {
    kms = await startDevKms({ now: clock.now, config: { limits: { requestsPerMinutePerPrincipal: LIMIT } } });
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await kms.close();
  });

  test('gets 429s for the rest of its minute while another principal, asking at the same time, is served every time', async () => {
    const alice = client('alice@a.example');
    const bob = client('bob@a.example', 'websocket');
    await alice.ping(); // its handshake and a ping: 2 of its 20
    await bob.ping();
    // Alice floods (three times her limit) while Bob keeps asking, the two interleaved.
    const flood = Array.from({ length: 3 * LIMIT }, () => alice.ping());
    const meanwhile = Array.from({ length: 15 }, () => bob.ping());
    const [a, b] = await Promise.all([outcomes(flood), outcomes(meanwhile)]);
    assert.deepEqual(a.other, []);
    assert.deepEqual({ ok: a.ok, limited: a.limited }, { ok: LIMIT - 2, limited: 3 * LIMIT - (LIMIT - 2) }, 'exactly her limit answered, the rest refused');
    assert.deepEqual(b, { ok: 15, limited: 0, other: [] }, 'Bob was never refused nor failed');
    // Another of Alice's clients is the same principal: still refused; the next minute she is served again.
    await assert.rejects(client('alice@a.example').ping(), isRateLimited);
    clock.advance(60_000);
    await alice.ping();
  });
});

describe('handshakes from one address past its limit', () => {
  const clock = manualClock();
  const LIMIT = 5;
  let kms: DevKms;
  const clients: KmsClient[] = [];
  const from = (address: string, user: string, transport: 'http' | 'websocket' = 'http') => {
    const c = new KmsClient({
      url: kms.url,
      token: () => kms.token(user, { ttlSeconds: 7200 }),
      trustAnchors: kms.trustAnchors,
      transport,
      fetch: fetchFrom(address),
      WebSocket: webSocketFrom(address),
      now: clock.now,
    });
    clients.push(c);
    return c;
  };
  before(async () => {
    // The per-principal limit off: every handshake here is someone's first request anyway.
    kms = await startDevKms({ now: clock.now, config: { limits: { handshakesPerMinutePerAddress: LIMIT, requestsPerMinutePerPrincipal: 0 } } });
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await kms.close();
  });

  test('are refused 429 (a handshake refusal the SDK matches to its request) while another address handshakes, over HTTP and WebSocket', async () => {
    // Each new client makes one handshake; the users differ, so only the address is shared.
    const flood = Array.from({ length: 4 * LIMIT }, (_, i) => from('127.0.0.2', `u${i}@a.example`, i % 2 ? 'websocket' : 'http').ping());
    const meanwhile = Array.from({ length: LIMIT }, (_, i) => from('127.0.0.1', `v${i}@a.example`, i % 2 ? 'websocket' : 'http').ping());
    const [a, b] = await Promise.all([outcomes(flood), outcomes(meanwhile)]);
    assert.deepEqual(a.other, []);
    assert.deepEqual({ ok: a.ok, limited: a.limited }, { ok: LIMIT, limited: 3 * LIMIT });
    assert.deepEqual(b, { ok: LIMIT, limited: 0, other: [] }, 'the other address was never refused');
    // The refusal is the KMS's answer to that handshake: signed, its requestId echoed, marked as a handshake's.
    const refused = await from('127.0.0.2', 'w@a.example').ping().then(
      () => assert.fail('a handshake past the limit was answered'),
      (err: unknown) => err,
    );
    assert.ok(isRateLimited(refused) && (refused as KmsError).handshake === true, String(refused));
    // Requests on channels made before are not handshakes: they go on.
    await clients[0]!.ping();
    clock.advance(60_000);
    await from('127.0.0.2', 'x@a.example').ping();
    // Refused handshakes are audited like any request (method, status, no principal: none was checked).
    const refusals = kms.logs.filter((l) => /"op":"createEphemeralKey"/.test(l) && /"status":429/.test(l));
    assert.equal(refusals.length, 3 * LIMIT + 1);
  });
});
