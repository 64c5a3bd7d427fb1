/**
 * End-to-end tests of the client SDK (@openkms/client) against the REAL server: every KMS started
 * here is `startDevKms` (real SQLite, real keys and certificates, real sockets); nothing of the
 * KMS is mocked. What the tests wrap is only what the SDK lets an application inject: `fetch`
 * (to count and inspect the traffic, or to tamper with the discovery document), the WebSocket
 * constructor, and the clock.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { KmsClient, KmsError, type ErrorCode, type FetchLike, type KeyRep, type KmsClientOptions, type WebSocketConstructor } from '@openkms/client';
import { CertificateError, loadX509 } from '@openkms/protocol';
import { manualClock, startDevKms, type DevKms } from '@openkms/server/testing';
import { closedPort } from './support/ports.js';

const AUTHORITY = 'kms.a.example';
const DAY = 86_400_000;
const TEST = { timeout: 30_000 };

// ---- helpers ---------------------------------------------------------------------------------

function caOf(kms: DevKms): string[] {
  return [readFileSync(join(kms.dir, 'ca.pem'), 'utf8')];
}

/** What went over the wire, seen from a wrapping `fetch`. */
interface Traffic {
  fetch: FetchLike;
  /** "METHOD /path" of every HTTP request. */
  calls: string[];
  /** Payloads of the signed (JWS) answers: handshake answers and resets. Readable by anyone. */
  signed: { status: number; requestId?: unknown; key?: { uri?: string } }[];
  posts(): number;
  resets(): number;
  /** The channel URIs the KMS handed out, in order. */
  channels(): string[];
}

function b64urlJson(segment: string): unknown {
  return JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
}

function traffic(rewrite?: (path: string, body: unknown) => unknown): Traffic {
  const calls: string[] = [];
  const signed: Traffic['signed'] = [];
  const f: FetchLike = async (input, init) => {
    const path = new URL(input).pathname;
    calls.push(`${init.method} ${path}`);
    const res = await fetch(input, init);
    const text = await res.text();
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    const messages = (body as { kmsMessages?: unknown } | undefined)?.kmsMessages;
    if (Array.isArray(messages)) {
      for (const m of messages) {
        const parts = String(m).split('.');
        if (parts.length === 3) signed.push(b64urlJson(parts[1]!) as Traffic['signed'][number]);
      }
    }
    const out = rewrite && body !== undefined ? JSON.stringify(rewrite(path, body)) : text;
    return { status: res.status, json: async () => JSON.parse(out), text: async () => out };
  };
  return {
    fetch: f,
    calls,
    signed,
    posts: () => calls.filter((c) => c === 'POST /kms/messages').length,
    resets: () => signed.filter((s) => s.status === 499).length,
    channels: () => signed.flatMap((s) => (s.status === 201 && s.key?.uri ? [s.key.uri] : [])),
  };
}

/** The `ws` package's WebSocket, counting the sockets the SDK opens. */
function trackedWebSocket(): { WebSocket: WebSocketConstructor; sockets: WebSocket[] } {
  const sockets: WebSocket[] = [];
  class Tracked extends WebSocket {
    constructor(url: string) {
      super(url);
      sockets.push(this);
    }
  }
  return { WebSocket: Tracked as unknown as WebSocketConstructor, sockets };
}

async function rejectsWith(promise: Promise<unknown>, status: number, code: ErrorCode, reason?: RegExp): Promise<KmsError> {
  let caught: unknown;
  await assert.rejects(promise, (err: unknown) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof KmsError, `expected a KmsError, got ${String(caught)}`);
  assert.equal(caught.status, status, `status of: ${caught.message}`);
  assert.equal(caught.code, code, `code of: ${caught.message}`);
  if (reason) assert.match(caught.reason, reason);
  return caught;
}

/** Polls `condition` (yielding to the event loop); gives up, failing the test, after a generous bound. */
async function waitFor(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; !condition(); i++) {
    if (i > 5000) throw new Error(`gave up waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** The system error code (ECONNREFUSED…) of an error or of the first of its causes that has one. */
function errorCode(err: unknown): string | undefined {
  for (let e = err, depth = 0; typeof e === 'object' && e !== null && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}

const idOf = (uri: string) => uri.slice(uri.lastIndexOf('/') + 1);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Every client made by a suite, closed in its after hook. */
class Clients {
  private readonly all: KmsClient[] = [];
  constructor(private readonly kms: () => DevKms) {}
  make(token: KmsClientOptions['token'], options: Partial<KmsClientOptions> = {}): KmsClient {
    const kms = this.kms();
    const client = new KmsClient({ url: kms.url, token, trustAnchors: caOf(kms), authority: AUTHORITY, ...options });
    this.all.push(client);
    return client;
  }
  async closeAll(): Promise<void> {
    await Promise.all(this.all.map((c) => c.close()));
  }
}

// ---- every operation, over HTTP --------------------------------------------------------------

describe('every SDK method against the real KMS (HTTP)', () => {
  const clock = manualClock();
  let kms: DevKms;
  const clients = new Clients(() => kms);
  let alice: KmsClient;
  let bob: KmsClient;
  let carol: KmsClient;
  let aliceTraffic: Traffic;

  before(async () => {
    kms = await startDevKms({ now: clock.now });
    aliceTraffic = traffic();
    alice = clients.make(await kms.token('alice@a.example'), { clientId: 'alice-laptop', fetch: aliceTraffic.fetch });
    bob = clients.make(await kms.token('bob@a.example'), { clientId: 'bob-phone' });
    carol = clients.make(await kms.token('carol@a.example'));
  });
  after(async () => {
    await clients.closeAll();
    await kms?.close();
  });

  test('discovery happens before the first message; the first call handshakes once', TEST, async () => {
    assert.equal(await alice.authority(), AUTHORITY);
    assert.equal(alice.handshakes, 0);
    assert.deepEqual(aliceTraffic.calls, ['GET /.well-known/kms']);
    await alice.ping();
    await Promise.all([alice.ping(), alice.ping(), alice.ping()]);
    assert.equal(alice.handshakes, 1);
    assert.equal(aliceTraffic.calls[0], 'GET /.well-known/kms');
    assert.equal(aliceTraffic.calls.filter((c) => c.startsWith('GET')).length, 1, 'discovery is done once');
    assert.match(aliceTraffic.channels()[0]!, new RegExp(`^kms://${AUTHORITY}/ecdhe/`));
  });

  test('createKeys: 256-bit oct JWKs with absolute URIs, owned by the user and the client', TEST, async () => {
    const [one, ...none] = await alice.createKeys();
    assert.equal(none.length, 0);
    const three = await alice.createKeys(3);
    assert.equal(three.length, 3);
    for (const key of [one!, ...three]) {
      assert.match(key.uri, new RegExp(`^kms://${AUTHORITY}/keys/`));
      assert.match(idOf(key.uri), UUID);
      assert.equal(key.jwk.kty, 'oct');
      assert.equal(key.jwk.kid, idOf(key.uri));
      assert.equal(Buffer.from(key.jwk.k, 'base64url').length, 32);
      assert.equal(key.userId, 'alice@a.example');
      assert.equal(key.clientId, 'alice-laptop');
      assert.equal(key.resourceUri, undefined);
      assert.equal(key.bindDate, undefined);
      assert.ok(Date.parse(key.expirationDate) > Date.parse(key.createDate));
    }
    assert.equal(new Set([one!, ...three].map((k) => k.uri)).size, 4);
    await rejectsWith(alice.createKeys(101), 413, 'TOO_LARGE');
    await rejectsWith(alice.createKeys(0), 400, 'INVALID_FIELD', /count/);
  });

  test('retrieveKey: an unbound key only for its creator on the same client', TEST, async () => {
    const [key] = await alice.createKeys(1);
    assert.deepEqual(await alice.retrieveKey(key!.uri), key);
    // The relative form means this KMS; the answer is absolute.
    assert.equal((await alice.retrieveKey(`/keys/${idOf(key!.uri)}`)).uri, key!.uri);
    await rejectsWith(bob.retrieveKey(key!.uri), 403, 'NOT_AUTHORIZED');
    const aliceElsewhere = clients.make(await kms.token('alice@a.example'), { clientId: 'alice-tablet' });
    await rejectsWith(aliceElsewhere.retrieveKey(key!.uri), 403, 'NOT_AUTHORIZED');
    await rejectsWith(alice.retrieveKey(`kms://${AUTHORITY}/keys/${randomUUID()}`), 404, 'NOT_FOUND');
  });

  test('bindKey: binds once (409 after), only by its creator, and opens the key to the resource', TEST, async () => {
    const [key] = await alice.createKeys(1);
    const { resource } = await alice.createResource({ authIds: ['bob@a.example'] });
    await rejectsWith(bob.bindKey(key!.uri, resource.uri), 403, 'NOT_AUTHORIZED');
    await rejectsWith(bob.retrieveKey(key!.uri), 403, 'NOT_AUTHORIZED');
    const bound = await alice.bindKey(key!.uri, resource.uri);
    assert.equal(bound.uri, key!.uri);
    assert.equal(bound.jwk.k, key!.jwk.k);
    assert.equal(bound.resourceUri, resource.uri);
    assert.equal(bound.bindDate, new Date(clock.now()).toISOString());
    assert.equal(Date.parse(bound.expirationDate) - Date.parse(bound.bindDate!), 365 * DAY);
    const again = await rejectsWith(alice.bindKey(key!.uri, resource.uri), 409, 'KEY_ALREADY_BOUND');
    assert.ok(again.requestId !== undefined);
    assert.deepEqual(await bob.retrieveKey(key!.uri), bound);
    await rejectsWith(carol.retrieveKey(key!.uri), 403, 'NOT_AUTHORIZED');
    assert.deepEqual((await alice.retrieveResource(resource.uri)).keyUris, [key!.uri]);
  });

  test('createResource: authIds, keyUris, anonymous bearers in `authorizations`, ttl', TEST, async () => {
    const keys = await alice.createKeys(2);
    const made = await alice.createResource({ authIds: ['bob@a.example', 'carol'], keyUris: keys.map((k) => k.uri), anonymous: 2 });
    const { resource, authorizations } = made;
    assert.match(resource.uri, new RegExp(`^kms://${AUTHORITY}/resources/`));
    assert.deepEqual([...resource.keyUris].sort(), keys.map((k) => k.uri).sort());
    assert.equal(resource.expirationDate, undefined);
    // creator + bob + carol (no @ = the first domain) + 2 anonymous
    assert.equal(resource.authorizationUris.length, 5);
    assert.deepEqual(authorizations.map((a) => a.uri).sort(), [...resource.authorizationUris].sort());
    assert.deepEqual(
      authorizations.flatMap((a) => (a.authId ? [a.authId] : [])).sort(),
      ['alice@a.example', 'bob@a.example', 'carol@a.example'],
    );
    const anonymous = authorizations.filter((a) => a.bearer);
    assert.equal(anonymous.length, 2);
    for (const a of anonymous) {
      assert.equal(a.authId, undefined);
      assert.equal(a.resourceUri, resource.uri);
      const claims = b64urlJson(a.bearer!.split('.')[1]!) as { iss: string; sub: string; resourceUri: string };
      assert.equal(claims.iss, `kms://${AUTHORITY}`);
      assert.equal(claims.sub, a.uri);
      assert.equal(claims.resourceUri, resource.uri);
    }
    // The keys were bound by the creation.
    for (const k of keys) assert.equal((await carol.retrieveKey(k.uri)).resourceUri, resource.uri);
    // Without anonymous authorizations there is nothing to hand back.
    assert.deepEqual((await alice.createResource()).authorizations, []);

    // ttl: gone for everyone (404) once past its expirationDate.
    const [k] = await alice.createKeys(1);
    const short = await alice.createResource({ ttl: 60, keyUris: [k!.uri], authIds: ['bob@a.example'] });
    assert.equal(Date.parse(short.resource.expirationDate!) - clock.now(), 60_000);
    assert.equal((await bob.retrieveResource(short.resource.uri)).uri, short.resource.uri);
    clock.advance(61_000);
    await rejectsWith(alice.retrieveResource(short.resource.uri), 404, 'NOT_FOUND');
    await rejectsWith(bob.retrieveKey(k!.uri), 404, 'NOT_FOUND');
    await rejectsWith(alice.createResource({ keyUris: ['/keys/not-a-uuid'] }), 400, 'INVALID_FIELD', /keyUris/);
  });

  test('retrieveResource: authorized principals only', TEST, async () => {
    const { resource } = await alice.createResource({ authIds: ['bob@a.example'] });
    const seen = await bob.retrieveResource(resource.uri);
    assert.equal(seen.uri, resource.uri);
    assert.equal(seen.authorizationUris.length, 2);
    assert.deepEqual(seen.keyUris, []);
    await rejectsWith(carol.retrieveResource(resource.uri), 403, 'NOT_AUTHORIZED');
    await rejectsWith(alice.retrieveResource(`kms://${AUTHORITY}/resources/${randomUUID()}`), 404, 'NOT_FOUND');
  });

  test('retrieveResourceKeys: newest bindDate first, boundAfter/boundBefore/count as Date or string', TEST, async () => {
    const { resource } = await alice.createResource({ authIds: ['bob@a.example'] });
    const keys = await alice.createKeys(4);
    const t: number[] = [];
    for (const key of keys) {
      clock.advance(1000);
      t.push(clock.now());
      await alice.bindKey(key.uri, resource.uri);
    }
    const uris = (list: KeyRep[]) => list.map((k) => k.uri);
    const [k1, k2, k3, k4] = keys.map((k) => k.uri);
    const all = await bob.retrieveResourceKeys(resource.uri);
    assert.deepEqual(uris(all), [k4, k3, k2, k1]);
    assert.deepEqual(all.map((k) => k.bindDate), t.map((ms) => new Date(ms).toISOString()).reverse());
    assert.deepEqual(uris(await bob.retrieveResourceKeys(resource.uri, { count: 2 })), [k4, k3]);

    const mid = (i: number) => t[i]! + 500; // between the binds i and i+1
    for (const form of [(ms: number) => new Date(ms), (ms: number) => new Date(ms).toISOString()]) {
      assert.deepEqual(uris(await bob.retrieveResourceKeys(resource.uri, { boundAfter: form(mid(1)) })), [k4, k3]);
      assert.deepEqual(uris(await bob.retrieveResourceKeys(resource.uri, { boundBefore: form(mid(1)) })), [k2, k1]);
      assert.deepEqual(uris(await bob.retrieveResourceKeys(resource.uri, { boundAfter: form(mid(0)), boundBefore: form(mid(2)) })), [k3, k2]);
      assert.deepEqual(uris(await bob.retrieveResourceKeys(resource.uri, { boundAfter: form(mid(0)), boundBefore: form(mid(2)), count: 1 })), [k3]);
      assert.deepEqual(uris(await bob.retrieveResourceKeys(resource.uri, { boundAfter: form(mid(3)) })), []);
    }
    await rejectsWith(bob.retrieveResourceKeys(resource.uri, { boundAfter: 'yesterday' }), 400, 'INVALID_FIELD', /boundAfter/);
    await rejectsWith(bob.retrieveResourceKeys(resource.uri, { count: 0 }), 400, 'INVALID_FIELD', /count/);
    await rejectsWith(carol.retrieveResourceKeys(resource.uri), 403, 'NOT_AUTHORIZED');
  });

  test('authorize (users and anonymous), listAuthorizations (all and by authId)', TEST, async () => {
    const [key] = await alice.createKeys(1);
    const { resource } = await alice.createResource({ keyUris: [key!.uri] });
    await rejectsWith(bob.authorize(resource.uri, ['bob@a.example']), 403, 'NOT_AUTHORIZED');
    const added = await alice.authorize(resource.uri, ['bob@a.example', 'carol@a.example']);
    assert.deepEqual(added.map((a) => a.authId).sort(), ['bob@a.example', 'carol@a.example']);
    for (const a of added) {
      assert.equal(a.resourceUri, resource.uri);
      assert.match(a.uri, new RegExp(`^kms://${AUTHORITY}/authorizations/`));
      assert.equal(a.bearer, undefined);
    }
    // Viral: an authorized user may authorize others.
    const [dave] = await bob.authorize(resource.uri, ['dave@a.example'], { roleUri: 'urn:role:reader' });
    assert.equal(dave!.roleUri, 'urn:role:reader');
    const [anon, ...more] = await carol.authorize(resource.uri, [], { anonymous: 1 });
    assert.equal(more.length, 0);
    assert.equal(anon!.authId, undefined);
    assert.ok(anon!.bearer);
    assert.equal((await carol.retrieveKey(key!.uri)).uri, key!.uri);

    const list = await alice.listAuthorizations(resource.uri);
    assert.equal(list.length, 5);
    assert.deepEqual(list.flatMap((a) => (a.authId ? [a.authId] : [])).sort(), ['alice@a.example', 'bob@a.example', 'carol@a.example', 'dave@a.example']);
    assert.ok(list.every((a) => a.bearer === undefined), 'a bearer is shown once, at creation');
    const bobs = await carol.listAuthorizations(resource.uri, 'bob@a.example');
    assert.equal(bobs.length, 1);
    assert.equal(bobs[0]!.authId, 'bob@a.example');
    assert.deepEqual(await alice.listAuthorizations(resource.uri, 'zoe@a.example'), []);
    // An authId that must be URL-encoded in the query.
    assert.deepEqual(await alice.listAuthorizations(resource.uri, 'a+b&c@a.example'), []);
    await rejectsWith(alice.authorize(resource.uri, []), 400, 'INVALID_FIELD', /authIds/);
    await rejectsWith(alice.authorize(resource.uri, ['not a user@@']), 400, 'INVALID_FIELD', /authIds/);
    const stranger = clients.make(await kms.token('erin@a.example'));
    await rejectsWith(stranger.listAuthorizations(resource.uri), 403, 'NOT_AUTHORIZED');
  });

  test('deauthorize, deleteAuthorization, deauthorizeMany', TEST, async () => {
    const [key] = await alice.createKeys(1);
    const { resource } = await alice.createResource({ keyUris: [key!.uri], authIds: ['bob@a.example', 'carol@a.example', 'dave@a.example', 'erin@a.example'] });
    assert.equal((await bob.retrieveKey(key!.uri)).uri, key!.uri);

    const removed = await alice.deauthorize(resource.uri, 'bob@a.example');
    assert.equal(removed.authId, 'bob@a.example');
    assert.equal(removed.resourceUri, resource.uri);
    await rejectsWith(bob.retrieveKey(key!.uri), 403, 'NOT_AUTHORIZED');
    await rejectsWith(alice.deauthorize(resource.uri, 'bob@a.example'), 404, 'NOT_FOUND');

    const [carols] = await alice.listAuthorizations(resource.uri, 'carol@a.example');
    const deleted = await alice.deleteAuthorization(carols!.uri);
    assert.equal(deleted.uri, carols!.uri);
    assert.equal(deleted.authId, 'carol@a.example');
    await rejectsWith(carol.retrieveKey(key!.uri), 403, 'NOT_AUTHORIZED');
    await rejectsWith(alice.deleteAuthorization(carols!.uri), 404, 'NOT_FOUND');

    const many = await alice.deauthorizeMany(resource.uri, ['dave@a.example', 'erin@a.example', 'nobody@a.example']);
    assert.deepEqual(many.map((a) => a.authId).sort(), ['dave@a.example', 'erin@a.example']);
    assert.deepEqual((await alice.listAuthorizations(resource.uri)).map((a) => a.authId), ['alice@a.example']);
  });

  test('ping, and deleteChannel: the channel dies at the KMS and the next call re-handshakes', TEST, async () => {
    const client = clients.make(await kms.token('alice@a.example'));
    await client.deleteChannel(); // no channel yet: nothing to do
    assert.equal(client.handshakes, 0);
    await client.ping();
    assert.equal(client.handshakes, 1);
    const recorder = traffic();
    const watched = clients.make(await kms.token('alice@a.example'), { fetch: recorder.fetch });
    await watched.ping();
    const [first] = recorder.channels();
    assert.ok(await kms.kms.channels.get(idOf(first!)));
    await watched.deleteChannel();
    assert.equal(await kms.kms.channels.get(idOf(first!)), undefined, 'deleted at the KMS');
    const [key] = await watched.createKeys(1);
    assert.ok(key);
    assert.equal(watched.handshakes, 2);
    assert.equal(recorder.resets(), 0, 'no reset: the client knew its channel was gone');
    assert.equal(recorder.channels().length, 2);
    assert.notEqual(recorder.channels()[1], first);
  });

  test('CMKs: createCmk, updateCmk, listCmks with a kmsAdmin token; refused without it', TEST, async () => {
    const admin = clients.make(await kms.token('root@a.example', { roles: ['kmsAdmin'] }));
    const before = await admin.listCmks();
    assert.ok(before.length >= 1);
    const global = await admin.createCmk();
    assert.match(global.uri, new RegExp(`^kms://${AUTHORITY}/cmk/`));
    assert.equal(global.state, 'active');
    assert.equal(global.assignedOrgId, null);
    const listed = await admin.listCmks();
    assert.equal(listed.length, before.length + 1);
    assert.equal(listed.filter((c) => c.state === 'active' && c.assignedOrgId === null).length, 1);
    assert.equal(listed.find((c) => c.uri === global.uri)?.state, 'active');
    // The global active CMK is retired by creating a new one, not by a state change.
    await rejectsWith(admin.updateCmk(global.uri, 'inactive'), 400, 'INVALID_FIELD', /state/);

    const org = await admin.createCmk('org-1');
    assert.equal(org.assignedOrgId, 'org-1');
    assert.equal(org.state, 'active');
    assert.deepEqual((await admin.listCmks('org-1')).map((c) => c.uri), [org.uri]);
    const retired = await admin.updateCmk(org.uri, 'inactive');
    assert.equal(retired.uri, org.uri);
    assert.equal(retired.state, 'inactive');
    assert.equal((await admin.listCmks('org-1'))[0]!.state, 'inactive');
    assert.equal((await admin.updateCmk(org.uri, 'active')).state, 'active');
    await rejectsWith(admin.updateCmk(`kms://${AUTHORITY}/cmk/${randomUUID()}`, 'active'), 404, 'NOT_FOUND');

    await rejectsWith(alice.createCmk(), 403, 'NOT_AUTHORIZED');
    await rejectsWith(alice.listCmks(), 403, 'NOT_AUTHORIZED');
    await rejectsWith(alice.updateCmk(org.uri, 'inactive'), 403, 'NOT_AUTHORIZED');
    // Keys made before and after the rotation stay readable.
    const [key] = await alice.createKeys(1);
    assert.equal((await alice.retrieveKey(key!.uri)).jwk.k, key!.jwk.k);
  });

  test('encrypt/decrypt: Alice encrypts, authorized Bob decrypts, Carol gets a 403 KmsError', TEST, async () => {
    const [key] = await alice.createKeys(1);
    await alice.createResource({ keyUris: [key!.uri], authIds: ['bob@a.example'] });
    const jwe = await alice.encrypt(key!, 'meet at noon ✓');
    assert.equal(jwe.split('.').length, 5);
    assert.equal(Buffer.from(await bob.decrypt(jwe)).toString('utf8'), 'meet at noon ✓');
    const bytes = new Uint8Array([0, 1, 2, 254, 255]);
    assert.deepEqual(await bob.decrypt(await alice.encrypt(key!, bytes)), bytes);
    const err = await rejectsWith(carol.decrypt(jwe), 403, 'NOT_AUTHORIZED');
    assert.ok(err.reason.length > 0);
    assert.equal(typeof err.requestId, 'string');
    assert.match(String(err.requestId), UUID);
    assert.equal(err.name, 'KmsError');
    assert.ok(err instanceof Error);
    await rejectsWith(bob.decrypt('not a jwe'), 400, 'CONTENT_INVALID');
  });

  test('errors are KmsError instances with status, reason and requestId', TEST, async () => {
    const missing = await rejectsWith(alice.retrieveKey(`kms://${AUTHORITY}/keys/${randomUUID()}`), 404, 'NOT_FOUND');
    assert.ok(missing.reason);
    assert.match(String(missing.requestId), UUID);
    assert.equal(missing.message, `404 ${missing.reason}`);
    await rejectsWith(alice.request({ method: 'frobnicate', uri: '/keys' }), 400, 'INVALID_FIELD');
    await rejectsWith(alice.request({ method: 'retrieve', uri: '/nothing/here' }), 400, 'INVALID_FIELD', /uri/);
    // A bad credential is refused at the handshake (the ECDHE failure is signed, not encrypted).
    const forged = clients.make('not-a-token');
    const bad = await rejectsWith(forged.ping(), 401, 'CREDENTIAL_INVALID');
    assert.match(String(bad.requestId), UUID);
    // A user of a domain this KMS does not serve.
    const outsider = clients.make(await kms.token('eve@b.example'));
    await rejectsWith(outsider.ping(), 403, 'NOT_AUTHORIZED');
    // A token provider function is asked again for every request.
    let asked = 0;
    const fresh = clients.make(async () => {
      asked++;
      return kms.token('alice@a.example');
    });
    await fresh.ping();
    await fresh.ping();
    assert.equal(asked, 3, 'one token for the handshake, one per request');
  });

  test('a token function that fails, or gives no token, is INVALID_ARGUMENT with its error as cause; nothing is sent for it', TEST, async () => {
    const wire = traffic();
    const idpDown = new Error('identity provider unreachable');
    const failing = clients.make(
      async () => {
        throw idpDown;
      },
      { fetch: wire.fetch },
    );
    const err = await rejectsWith(failing.ping(), 400, 'INVALID_ARGUMENT', /^options\.token failed: identity provider unreachable$/);
    assert.equal(err.cause, idpDown);
    await rejectsWith(clients.make(() => '', { fetch: wire.fetch }).ping(), 400, 'INVALID_ARGUMENT', /gave no token/);
    assert.equal(wire.posts(), 0, 'no handshake without a token');
  });

  test('a closed client refuses every later call with CLIENT_CLOSED and opens nothing new (HTTP and WebSocket)', TEST, async () => {
    const wire = traffic();
    const { WebSocket: Ws, sockets } = trackedWebSocket();
    for (const transport of ['http', 'websocket'] as const) {
      const client = clients.make(await kms.token('alice@a.example'), { fetch: wire.fetch, transport, WebSocket: Ws });
      await client.ping();
      await client.close();
      const [posts, opened] = [wire.posts(), sockets.length];
      await rejectsWith(client.ping(), 503, 'CLIENT_CLOSED');
      await rejectsWith(client.createKeys(1), 503, 'CLIENT_CLOSED');
      assert.equal(wire.posts(), posts, `no POST after close (${transport})`);
      assert.equal(sockets.length, opened, `no socket after close (${transport})`);
    }
  });

  test('an anonymous bearer used as the token reads its resource keys and nothing else', TEST, async () => {
    const keys = await alice.createKeys(2);
    const { resource, authorizations } = await alice.createResource({ keyUris: keys.map((k) => k.uri), anonymous: 1 });
    const other = await alice.createKeys(1);
    const otherResource = await alice.createResource({ keyUris: [other[0]!.uri] });
    const bearer = authorizations.find((a) => a.bearer)!;
    const guest = clients.make(bearer.bearer!);

    await guest.ping();
    assert.deepEqual((await guest.retrieveResourceKeys(resource.uri)).map((k) => k.uri).sort(), keys.map((k) => k.uri).sort());
    assert.equal((await guest.retrieveKey(keys[0]!.uri)).jwk.k, keys[0]!.jwk.k);
    const jwe = await alice.encrypt(keys[1]!, 'for the guest');
    assert.equal(Buffer.from(await guest.decrypt(jwe)).toString(), 'for the guest');

    await rejectsWith(guest.retrieveKey(other[0]!.uri), 403, 'NOT_AUTHORIZED');
    await rejectsWith(guest.retrieveResourceKeys(otherResource.resource.uri), 403, 'NOT_AUTHORIZED');
    await rejectsWith(guest.retrieveResource(resource.uri), 403, 'NOT_AUTHORIZED');
    await rejectsWith(guest.listAuthorizations(resource.uri), 403, 'NOT_AUTHORIZED');
    await rejectsWith(guest.authorize(resource.uri, ['mallory@a.example']), 403, 'NOT_AUTHORIZED');
    await rejectsWith(guest.createKeys(1), 403, 'NOT_AUTHORIZED');
    await rejectsWith(guest.createResource(), 403, 'NOT_AUTHORIZED');
    await rejectsWith(guest.deauthorize(resource.uri, 'alice@a.example'), 403, 'NOT_AUTHORIZED');
    await rejectsWith(guest.listCmks(), 403, 'NOT_AUTHORIZED');

    // Deleting the authorization revokes the bearer.
    await alice.deleteAuthorization(bearer.uri);
    await rejectsWith(guest.retrieveResourceKeys(resource.uri), 401, 'CREDENTIAL_INVALID');
  });
});

// ---- channel lifetime, with the clock injected on both sides ---------------------------------

describe('channel renewal and resets', () => {
  const running: DevKms[] = [];
  const clientsOf: Clients[] = [];
  const lifetimeMs = 600_000;
  async function kmsWith(now: () => number): Promise<{ kms: DevKms; clients: Clients }> {
    const kms = await startDevKms({ now, config: { lifetimes: { channel: lifetimeMs / 1000 } } });
    running.push(kms);
    const clients = new Clients(() => kms);
    clientsOf.push(clients);
    return { kms, clients };
  }
  after(async () => {
    await Promise.all(clientsOf.map((c) => c.closeAll()));
    await Promise.all(running.map((k) => k.close()));
  });

  test('re-handshakes before expiry: after expirationDate - renewBeforeMs the next call renews', TEST, async () => {
    const clock = manualClock();
    const { kms, clients } = await kmsWith(clock.now);
    const wire = traffic();
    const client = clients.make(await kms.token('alice@a.example', { ttlSeconds: 86_400 }), { now: clock.now, renewBeforeMs: 30_000, fetch: wire.fetch });
    await client.ping();
    assert.equal(client.handshakes, 1);
    clock.advance(lifetimeMs - 30_000 - 1); // still outside the renewal window
    await client.ping();
    assert.equal(client.handshakes, 1);
    clock.advance(2); // inside it: renewed before the KMS would refuse the channel
    const [key] = await client.createKeys(1);
    assert.equal(client.handshakes, 2);
    assert.equal((await client.retrieveKey(key!.uri)).uri, key!.uri);
    assert.equal(client.handshakes, 2);
    assert.equal(wire.resets(), 0, 'renewed in time: the KMS never had to reset');
    const [c1, c2] = wire.channels();
    assert.ok(c1 && c2 && c1 !== c2);
  });

  test('a channel the KMS expired (client clock lagging) → 499 → re-handshake → the call succeeds', TEST, async () => {
    const serverClock = manualClock();
    const clientClock = manualClock(serverClock.now());
    const { kms, clients } = await kmsWith(serverClock.now);
    const wire = traffic();
    const token = await kms.token('alice@a.example', { ttlSeconds: 86_400 });
    const client = clients.make(token, { now: clientClock.now, fetch: wire.fetch });
    const [key] = await client.createKeys(1);
    assert.equal(client.handshakes, 1);
    serverClock.advance(lifetimeMs + 1000); // the client's clock stays behind: it thinks the channel is fine
    const again = await client.retrieveKey(key!.uri);
    assert.equal(again.jwk.k, key!.jwk.k);
    assert.equal(client.handshakes, 2);
    assert.equal(wire.resets(), 1);
    // The failed attempt, the handshake, the retry.
    assert.equal(wire.posts(), 2 + 3);
  });

  test('a channel deleted behind the client\'s back → 499 → re-handshake → the call succeeds', TEST, async () => {
    const { kms, clients } = await kmsWith(Date.now);
    const wire = traffic();
    const client = clients.make(await kms.token('alice@a.example'), { fetch: wire.fetch });
    await client.ping();
    const [channel] = wire.channels();
    assert.equal(await kms.kms.channels.delete(idOf(channel!)), true);
    const keys = await client.createKeys(2);
    assert.equal(keys.length, 2);
    assert.equal(client.handshakes, 2);
    assert.equal(wire.resets(), 1);
    // Concurrent calls on a dead channel share one re-handshake.
    await kms.kms.channels.delete(idOf(wire.channels()[1]!));
    const got = await Promise.all(keys.map((k) => client.retrieveKey(k.uri)));
    assert.deepEqual(got, keys);
    assert.equal(client.handshakes, 3);
  });

  test('a reset on the retry is not retried again: the call fails with 499', TEST, async () => {
    const serverClock = manualClock();
    const clientClock = manualClock(serverClock.now());
    const { kms, clients } = await kmsWith(serverClock.now);
    // A slow network: by the time each handshake answer arrives, the KMS's clock has moved past
    // the new channel's lifetime, so the retry on it is reset too.
    let slow = false;
    const wire = traffic((_path, body) => {
      const messages = (body as { kmsMessages?: string[] }).kmsMessages;
      if (slow && messages?.some((m) => m.split('.').length === 3)) serverClock.advance(lifetimeMs + 1000);
      return body;
    });
    const client = clients.make(await kms.token('alice@a.example', { ttlSeconds: 86_400 }), { now: clientClock.now, fetch: wire.fetch });
    await client.ping();
    serverClock.advance(lifetimeMs + 1000);
    slow = true;
    const err = await rejectsWith(client.ping(), 499, 'CHANNEL_RESET');
    assert.ok(err.requestId !== undefined);
    assert.equal(wire.resets(), 2, 'the first attempt and the single retry');
    assert.equal(client.handshakes, 2);
    slow = false;
    await client.ping();
    assert.equal(client.handshakes, 3);
  });
});

// ---- batching ---------------------------------------------------------------------------------

describe('HTTP batching', () => {
  let kms: DevKms;
  const clients = new Clients(() => kms);
  before(async () => {
    kms = await startDevKms();
  });
  after(async () => {
    await clients.closeAll();
    await kms?.close();
  });

  test('1,000 concurrent retrieveKey calls travel in a few HTTP requests and all agree', TEST, async (t) => {
    const wire = traffic();
    const client = clients.make(await kms.token('alice@a.example'), { fetch: wire.fetch, maxBatch: 50 });
    const [key] = await client.createKeys(1);
    const before = client.httpRequests;
    assert.equal(before, wire.posts());
    const results = await Promise.all(Array.from({ length: 1000 }, () => client.retrieveKey(key!.uri)));
    const requests = client.httpRequests - before;
    t.diagnostic(`1,000 retrieveKey calls took ${requests} HTTP requests (maxBatch 50)`);
    assert.ok(requests >= 20, `at least 1000/50 requests, got ${requests}`);
    assert.ok(requests <= 30, `coalesced into few requests, got ${requests}`);
    assert.equal(wire.posts() - before, requests, 'the counting fetch agrees');
    assert.equal(results.length, 1000);
    for (const r of results) assert.deepEqual(r, key);
    assert.equal(client.handshakes, 1);
  });

  test('more messages than the KMS takes in one batch: HTTP 413 fails every request of the batch', TEST, async () => {
    const client = clients.make(await kms.token('alice@a.example'), { maxBatch: 101, debounceMs: 250 });
    // All 101 wait for the one handshake, then fill a batch of 101 at once.
    const results = await Promise.allSettled(Array.from({ length: 101 }, () => client.ping()));
    assert.equal(client.handshakes, 1);
    assert.equal(client.httpRequests, 2, 'the handshake, then one batch of 101');
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      const err = (r as PromiseRejectedResult).reason as unknown;
      assert.ok(err instanceof KmsError);
      assert.equal(err.status, 413);
      assert.equal(err.code, 'TOO_LARGE');
      assert.match(err.reason, /100 messages/);
    }
    await client.ping(); // a batch of one is fine again
  });

  test('per-request timeout over HTTP (a KMS endpoint that never answers) → 504; unreachable → 503', TEST, async () => {
    const held: import('node:http').ServerResponse[] = [];
    const hanging = createServer((req, res) => {
      if (req.method === 'POST') return void held.push(res);
      void fetch(kms.url + (req.url ?? '/')).then(async (r) => res.writeHead(r.status, { 'content-type': 'application/json' }).end(await r.text()));
    });
    hanging.listen(0, '127.0.0.1');
    await once(hanging, 'listening');
    try {
      const port = (hanging.address() as { port: number }).port;
      const client = clients.make(await kms.token('alice@a.example'), { url: `http://127.0.0.1:${port}`, timeoutMs: 150 });
      await rejectsWith(client.ping(), 504, 'KMS_TIMEOUT');
      assert.equal(held.length, 1);
    } finally {
      hanging.closeAllConnections();
      await new Promise<void>((resolve) => hanging.close(() => resolve()));
    }
    const refusedConnection = new Error('connection refused');
    const down = clients.make(await kms.token('alice@a.example'), {
      fetch: async (input, init) => {
        if (init.method === 'POST') throw refusedConnection;
        return fetch(input, init);
      },
    });
    const unreachable = await rejectsWith(down.ping(), 503, 'KMS_UNREACHABLE', /unreachable/);
    assert.equal(unreachable.cause, refusedConnection, 'the fetch error is kept as the cause');
    assert.match(unreachable.reason, /POST http:\/\/127\.0\.0\.1:\d+\/kms\/messages: connection refused$/);
  });

  test('nobody listening: KMS_UNREACHABLE naming the request and ECONNREFUSED, the socket error under its cause (HTTP, WebSocket, discovery)', TEST, async () => {
    const port = await closedPort();
    const nowhere = `http://127.0.0.1:${port}`;
    // The discovery document comes from the real KMS; the messages go where nobody listens.
    const discoveryFromKms: FetchLike = (input, init) => fetch(new URL(input).pathname === '/.well-known/kms' ? kms.url + '/.well-known/kms' : input, init);
    const token = await kms.token('alice@a.example');
    const overHttp = await rejectsWith(clients.make(token, { url: nowhere, fetch: discoveryFromKms }).ping(), 503, 'KMS_UNREACHABLE');
    assert.match(overHttp.reason, new RegExp(`^KMS unreachable: POST ${nowhere}/kms/messages: connect ECONNREFUSED 127\\.0\\.0\\.1:${port}$`));
    assert.ok(overHttp.cause instanceof TypeError, `the fetch error: ${String(overHttp.cause)}`);
    assert.equal(errorCode(overHttp.cause), 'ECONNREFUSED');
    assert.match(String(overHttp.requestId), UUID, 'the handshake that was not sent');
    const overWs = await rejectsWith(clients.make(token, { url: nowhere, fetch: discoveryFromKms, transport: 'websocket', WebSocket }).ping(), 503, 'KMS_UNREACHABLE');
    assert.match(overWs.reason, new RegExp(`^KMS unreachable: WebSocket ws://127\\.0\\.0\\.1:${port}/kms/ws: connect ECONNREFUSED`));
    assert.equal(errorCode(overWs.cause), 'ECONNREFUSED');
    const discovery = await rejectsWith(clients.make(token, { url: nowhere }).ping(), 503, 'KMS_UNREACHABLE', /well-known/);
    assert.match(discovery.reason, new RegExp(`^KMS unreachable: GET ${nowhere}/\\.well-known/kms: connect ECONNREFUSED`));
    assert.equal(errorCode(discovery.cause), 'ECONNREFUSED');
  });
});

// ---- WebSocket transport ----------------------------------------------------------------------

/**
 * A WebSocket relay in front of the real KMS (it also relays /.well-known/kms), which can stop
 * forwarding (a KMS that never answers), hold answers and deliver each batch in reverse order,
 * or close its client sockets.
 */
type RelayMode = 'forward' | 'silent' | 'reverse' | 'hold';
async function relay(upstream: string): Promise<{
  url: string;
  mode: RelayMode;
  /** Frames received from clients. */
  framesIn: number;
  reversedBatches: number;
  /** Channel URIs of the handshake answers relayed (a JWS payload is readable by any relay). */
  channels: string[];
  dropClients(): void;
  /** Sends a close frame to every client but never reads the reply: the clients stay CLOSING. */
  stallClose(): void;
  /** Cuts the TCP connections stalled by stallClose. */
  cutStalled(): void;
  /** Delivers the answers held in 'hold' mode, in order. */
  release(): void;
  close(): Promise<void>;
}> {
  const server: Server = createServer((req, res) => {
    void fetch(upstream + (req.url ?? '/')).then(async (r) => {
      res.writeHead(r.status, { 'content-type': 'application/json' });
      res.end(await r.text());
    });
  });
  const wss = new WebSocketServer({ server, path: '/kms/ws' });
  const held: { to: WebSocket; frame: string }[] = [];
  const raw = new Map<WebSocket, Socket>();
  const stalled: Socket[] = [];
  let lastRaw: Socket | undefined;
  server.prependListener('upgrade', (_req, socket: Socket) => (lastRaw = socket));
  const deliver = (batch: typeof held) => {
    for (const { to, frame } of batch) if (to.readyState === WebSocket.OPEN) to.send(frame);
  };
  const state = {
    url: '',
    mode: 'forward' as RelayMode,
    framesIn: 0,
    reversedBatches: 0,
    channels: [] as string[],
    dropClients() {
      for (const c of wss.clients) c.close(1001, 'going away');
    },
    stallClose() {
      for (const c of wss.clients) {
        const socket = raw.get(c)!;
        socket.pause();
        stalled.push(socket);
        c.close(1001, 'going away');
      }
    },
    cutStalled() {
      for (const socket of stalled.splice(0)) socket.destroy();
    },
    release() {
      deliver(held.splice(0));
    },
    async close() {
      clearInterval(flusher);
      state.cutStalled();
      for (const c of wss.clients) c.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const flusher = setInterval(() => {
    if (state.mode !== 'reverse') return;
    const batch = held.splice(0);
    if (batch.length > 1) state.reversedBatches++;
    deliver(batch.reverse());
  }, 25);
  wss.on('connection', (down) => {
    raw.set(down, lastRaw!);
    const up = new WebSocket(`${upstream.replace(/^http/, 'ws')}/kms/ws`);
    const early: string[] = [];
    up.on('open', () => early.splice(0).forEach((f) => up.send(f)));
    up.on('message', (data) => {
      const frame = String(data);
      const parts = frame.split('.');
      if (parts.length === 3) {
        const payload = b64urlJson(parts[1]!) as Traffic['signed'][number];
        if (payload.status === 201 && payload.key?.uri) state.channels.push(payload.key.uri);
      }
      if (state.mode === 'reverse' || state.mode === 'hold') held.push({ to: down, frame });
      else if (down.readyState === WebSocket.OPEN) down.send(frame);
    });
    up.on('close', () => down.close());
    up.on('error', () => down.terminate());
    down.on('message', (data) => {
      state.framesIn++;
      if (state.mode === 'silent') return;
      const frame = String(data);
      if (up.readyState === WebSocket.OPEN) up.send(frame);
      else early.push(frame);
    });
    down.on('close', () => up.close());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const addr = server.address();
  state.url = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  return state;
}

describe('WebSocket transport', () => {
  let kms: DevKms;
  const clients = new Clients(() => kms);
  const relays: { close(): Promise<void> }[] = [];
  const wsOptions = (WebSocketImpl: WebSocketConstructor = WebSocket): Partial<KmsClientOptions> => ({
    transport: 'websocket',
    WebSocket: WebSocketImpl,
  });
  before(async () => {
    kms = await startDevKms();
  });
  after(async () => {
    await clients.closeAll();
    await Promise.all(relays.map((r) => r.close()));
    await kms?.close();
  });

  test('every operation works over the WebSocket', TEST, async () => {
    const { WebSocket: Ws, sockets } = trackedWebSocket();
    const wire = traffic();
    const alice = clients.make(await kms.token('alice@a.example'), { ...wsOptions(Ws), fetch: wire.fetch });
    const bob = clients.make(await kms.token('bob@a.example'), wsOptions());
    const admin = clients.make(await kms.token('root@a.example', { roles: ['kmsAdmin'] }), wsOptions());

    await alice.ping();
    const keys = await alice.createKeys(3);
    assert.deepEqual(await alice.retrieveKey(keys[0]!.uri), keys[0]);
    const made = await alice.createResource({ authIds: ['bob@a.example'], keyUris: [keys[0]!.uri], anonymous: 1, ttl: 3600 });
    assert.ok(made.resource.expirationDate);
    assert.equal(made.authorizations.filter((a) => a.bearer).length, 1);
    const bound = await alice.bindKey(keys[1]!.uri, made.resource.uri);
    assert.equal(bound.resourceUri, made.resource.uri);
    assert.equal((await bob.retrieveResource(made.resource.uri)).keyUris.length, 2);
    assert.equal((await bob.retrieveResourceKeys(made.resource.uri, { count: 1 })).length, 1);
    assert.equal((await bob.retrieveResourceKeys(made.resource.uri, { boundAfter: new Date(0), boundBefore: new Date(Date.now() + DAY).toISOString() })).length, 2);
    assert.equal((await alice.authorize(made.resource.uri, ['carol@a.example', 'dave@a.example'])).length, 2);
    assert.equal((await alice.authorize(made.resource.uri, [], { anonymous: 1 }))[0]!.bearer !== undefined, true);
    assert.equal((await bob.listAuthorizations(made.resource.uri)).length, 6);
    assert.equal((await bob.listAuthorizations(made.resource.uri, 'carol@a.example')).length, 1);
    assert.equal((await alice.deauthorize(made.resource.uri, 'carol@a.example')).authId, 'carol@a.example');
    const [daves] = await alice.listAuthorizations(made.resource.uri, 'dave@a.example');
    assert.equal((await alice.deleteAuthorization(daves!.uri)).uri, daves!.uri);
    assert.deepEqual((await alice.deauthorizeMany(made.resource.uri, ['bob@a.example'])).map((a) => a.authId), ['bob@a.example']);
    await rejectsWith(bob.retrieveKey(keys[0]!.uri), 403, 'NOT_AUTHORIZED');
    const jwe = await alice.encrypt(keys[0]!, 'over ws');
    assert.equal(Buffer.from(await alice.decrypt(jwe)).toString(), 'over ws');
    await rejectsWith(bob.decrypt(jwe), 403, 'NOT_AUTHORIZED');
    const cmk = await admin.createCmk('org-ws');
    assert.equal((await admin.updateCmk(cmk.uri, 'inactive')).state, 'inactive');
    assert.ok((await admin.listCmks('org-ws')).some((c) => c.uri === cmk.uri));
    await alice.deleteChannel();
    await alice.ping();
    assert.equal(alice.handshakes, 2);

    const guest = clients.make(made.authorizations.find((a) => a.bearer)!.bearer!, wsOptions());
    assert.equal((await guest.retrieveResourceKeys(made.resource.uri)).length, 2);
    await rejectsWith(guest.createKeys(1), 403, 'NOT_AUTHORIZED');

    assert.equal(sockets.length, 1, 'one socket carried all of Alice\'s traffic');
    assert.deepEqual(wire.calls, ['GET /.well-known/kms'], 'fetch is only used for discovery');
    assert.equal(alice.httpRequests, 0);
  });

  test('200 concurrent calls, answers delivered out of order, each matched by requestId', TEST, async () => {
    const r = await relay(kms.url);
    relays.push(r);
    const alice = clients.make(await kms.token('alice@a.example'), { ...wsOptions(), url: r.url });
    const keys = [...(await alice.createKeys(100)), ...(await alice.createKeys(50))];
    const resources = await Promise.all(keys.slice(100).map((k) => alice.createResource({ keyUris: [k.uri] })));
    r.mode = 'reverse';
    const calls: Promise<void>[] = [];
    for (let i = 0; i < 100; i++) {
      calls.push(alice.retrieveKey(keys[i]!.uri).then((got) => assert.deepEqual(got, keys[i])));
    }
    for (let i = 0; i < 50; i++) {
      const res = resources[i]!.resource;
      calls.push(alice.retrieveResource(res.uri).then((got) => assert.deepEqual(got.keyUris, [keys[100 + i]!.uri])));
      calls.push(alice.retrieveResourceKeys(res.uri).then((got) => assert.deepEqual(got.map((k) => k.uri), [keys[100 + i]!.uri])));
    }
    await Promise.all(calls);
    r.mode = 'forward';
    r.release();
    assert.equal(calls.length, 200);
    assert.ok(r.reversedBatches > 0, 'the relay did deliver answers out of order');
  });

  test('per-request timeout against a WebSocket server that never answers → KmsError 504', TEST, async () => {
    const r = await relay(kms.url);
    relays.push(r);
    const client = clients.make(await kms.token('alice@a.example'), { ...wsOptions(), url: r.url, timeoutMs: 150 });
    r.mode = 'silent';
    await rejectsWith(client.ping(), 504, 'KMS_TIMEOUT'); // the handshake itself gets no answer
    assert.equal(client.handshakes, 0);
    r.mode = 'forward';
    await client.ping();
    assert.equal(client.handshakes, 1);
    r.mode = 'silent';
    const timedOut = await rejectsWith(client.retrieveKey(`kms://${AUTHORITY}/keys/${randomUUID()}`), 504, 'KMS_TIMEOUT');
    assert.ok(timedOut.requestId !== undefined);
    r.mode = 'forward';
    await client.ping(); // the channel is still good: no new handshake
    assert.equal(client.handshakes, 1);
  });

  test('reconnects after the KMS drops the socket; the channel survives', TEST, async () => {
    const upgraded: Socket[] = [];
    const onUpgrade = (_req: unknown, socket: Socket) => upgraded.push(socket);
    kms.transport.server.on('upgrade', onUpgrade);
    try {
      const { WebSocket: Ws, sockets } = trackedWebSocket();
      const client = clients.make(await kms.token('alice@a.example'), wsOptions(Ws));
      const [key] = await client.createKeys(1);
      assert.equal(sockets.length, 1);
      const closed = once(sockets[0]!, 'close');
      for (const s of upgraded) s.destroy();
      await closed;
      assert.deepEqual(await client.retrieveKey(key!.uri), key);
      assert.equal(sockets.length, 2, 'a new socket');
      assert.equal(client.handshakes, 1, 'the KMS channel outlives the socket');
    } finally {
      kms.transport.server.off('upgrade', onUpgrade);
    }
  });

  test('reconnects when the server closes the socket with a close frame', TEST, async () => {
    const r = await relay(kms.url);
    relays.push(r);
    const { WebSocket: Ws, sockets } = trackedWebSocket();
    const client = clients.make(await kms.token('alice@a.example'), { ...wsOptions(Ws), url: r.url });
    await client.ping();
    r.dropClients();
    // As soon as the client has seen the close frame (the socket may still be closing).
    await waitFor(() => sockets[0]!.readyState !== WebSocket.OPEN, 'the close frame');
    await client.ping();
    await Promise.all([client.ping(), client.ping()]);
    assert.equal(sockets.length, 2);
    assert.equal(client.handshakes, 1);
  });

  test('a call made while the socket is still closing goes out on a new one, which the old one\'s close does not disturb', TEST, async () => {
    const r = await relay(kms.url);
    relays.push(r);
    const { WebSocket: Ws, sockets } = trackedWebSocket();
    const client = clients.make(await kms.token('alice@a.example'), { ...wsOptions(Ws), url: r.url });
    await client.ping();
    r.stallClose();
    await waitFor(() => sockets[0]!.readyState === WebSocket.CLOSING, 'the client socket to be closing');
    r.mode = 'hold';
    const framesBefore = r.framesIn;
    let failed: unknown;
    const pinged = client.ping().catch((err: unknown) => (failed = err));
    // Wait until the request is on the wire of the new socket, then let the old one finish closing.
    await waitFor(() => r.framesIn > framesBefore || failed !== undefined, 'the ping to be sent');
    assert.equal(failed, undefined, `the ping failed: ${String(failed)}`);
    assert.equal(sockets.length, 2);
    const oldClosed = once(sockets[0]!, 'close');
    r.cutStalled();
    await oldClosed;
    r.mode = 'forward';
    r.release();
    await pinged;
    assert.equal(failed, undefined, `the ping failed: ${String(failed)}`);
    assert.equal(client.handshakes, 1);
  });

  test('a reset the KMS cannot attribute (channel deleted) → re-handshake → the call succeeds', TEST, async () => {
    const r = await relay(kms.url);
    relays.push(r);
    const client = clients.make(await kms.token('alice@a.example'), { ...wsOptions(), url: r.url, timeoutMs: 5000 });
    const [key] = await client.createKeys(1);
    assert.equal(r.channels.length, 1);
    assert.equal(await kms.kms.channels.delete(idOf(r.channels[0]!)), true);
    // The KMS cannot decrypt the request, so its reset carries a fresh requestId: the client must
    // still tie it to the request waiting on that channel instead of letting it time out.
    assert.deepEqual(await client.retrieveKey(key!.uri), key);
    assert.equal(client.handshakes, 2);
    // Several requests in flight on a dead channel: one re-handshake, every call succeeds.
    assert.equal(await kms.kms.channels.delete(idOf(r.channels[1]!)), true);
    const got = await Promise.all([client.retrieveKey(key!.uri), client.retrieveKey(key!.uri), client.createKeys(2), client.ping()]);
    assert.deepEqual(got[0], key);
    assert.deepEqual(got[1], key);
    assert.equal(got[2].length, 2);
    assert.equal(client.handshakes, 3);
  });

  test('a channel the KMS expired (client clock lagging) over WebSocket → re-handshake → success', TEST, async () => {
    const serverClock = manualClock();
    const lagging = await startDevKms({ now: serverClock.now, config: { lifetimes: { channel: 600 } } });
    try {
      const client = new KmsClient({
        url: lagging.url,
        token: await lagging.token('alice@a.example', { ttlSeconds: 86_400 }),
        trustAnchors: caOf(lagging),
        transport: 'websocket',
        WebSocket,
        now: manualClock(serverClock.now()).now,
        timeoutMs: 5000,
      });
      try {
        const [key] = await client.createKeys(1);
        serverClock.advance(601_000);
        assert.deepEqual(await client.retrieveKey(key!.uri), key);
        assert.equal(client.handshakes, 2);
      } finally {
        await client.close();
      }
    } finally {
      await lagging.close();
    }
  });
});

// ---- certificate validation -------------------------------------------------------------------

/** A self-signed CA with the same subject as `like`, but another key. */
async function impostorCa(like: string): Promise<string> {
  const x509 = await loadX509();
  const real = new x509.X509Certificate(like);
  const alg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 };
  const keys = (await crypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '0102030405',
    name: real.subject,
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + 365 * DAY),
    keys,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ],
  });
  return cert.toString('pem');
}

describe('certificate validation refuses to connect before any message is sent', () => {
  let kms: DevKms;
  let token: string;
  const clients = new Clients(() => kms);
  before(async () => {
    kms = await startDevKms();
    token = await kms.token('alice@a.example');
  });
  after(async () => {
    await clients.closeAll();
    await kms?.close();
  });

  type Doc = { kmsCluster: string; rsaPublicKey: { kid: string; n: string; x5c: string[] } };
  async function refused(options: Partial<KmsClientOptions>, code: 'CERTIFICATE_REFUSED' | 'DISCOVERY_INVALID', reason: RegExp, rewrite?: (doc: Doc) => Doc): Promise<void> {
    for (const transport of ['http', 'websocket'] as const) {
      const wire = traffic(rewrite && ((path, body) => (path === '/.well-known/kms' ? rewrite(body as Doc) : body)));
      const { WebSocket: Ws, sockets } = trackedWebSocket();
      const client = clients.make(token, { fetch: wire.fetch, transport, WebSocket: Ws, ...options });
      const err = await rejectsWith(client.createKeys(1), 502, code, reason);
      assert.doesNotMatch(err.reason, /-----BEGIN|"n"|"d"/, 'the reason carries no key material');
      // A certificate that was checked and refused: the check's own error is the cause.
      if (code === 'CERTIFICATE_REFUSED' && options.trustAnchors?.length !== 0) assert.ok(err.cause instanceof CertificateError, `cause of: ${err.message}`);
      // Every later call is refused the same way, and nothing but discovery ever left.
      await rejectsWith(client.ping(), 502, code, reason);
      await rejectsWith(client.authority(), 502, code, reason);
      assert.equal(wire.posts(), 0, `no POST /kms/messages (${transport})`);
      assert.ok(wire.calls.every((c) => c === 'GET /.well-known/kms'));
      assert.equal(sockets.length, 0, `no WebSocket opened (${transport})`);
      assert.equal(client.handshakes, 0);
    }
  }

  test('the genuine configuration connects (control); the authority compares case-insensitively', TEST, async () => {
    const wire = traffic();
    const client = clients.make(token, { fetch: wire.fetch, authority: 'KMS.A.Example' });
    await client.ping();
    assert.equal(wire.posts(), 2, 'the handshake, then the ping');
  });

  test('wrong CA (same subject name, another key)', TEST, async () => {
    await refused({ trustAnchors: [await impostorCa(caOf(kms)[0]!)] }, 'CERTIFICATE_REFUSED', /certificate refused/);
  });

  test('no trust anchors at all', TEST, async () => {
    await refused({ trustAnchors: [] }, 'CERTIFICATE_REFUSED', /trust anchor/);
  });

  test('wrong name: the client expects kms.b.example', TEST, async () => {
    await refused({ authority: 'kms.b.example' }, 'DISCOVERY_INVALID', /kms\.b\.example/);
  });

  test('wrong name: the KMS claims kms.b.example but its certificate names kms.a.example', TEST, async () => {
    await refused({ authority: undefined }, 'CERTIFICATE_REFUSED', /certificate refused/, (doc) => ({
      ...doc,
      kmsCluster: 'kms://kms.b.example',
      rsaPublicKey: { ...doc.rsaPublicKey, kid: 'kms://kms.b.example' },
    }));
  });

  test('key mismatch: the published n is another RSA key\'s', TEST, async () => {
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ format: 'jwk' });
    await refused({}, 'CERTIFICATE_REFUSED', /certificate refused/, (doc) => ({ ...doc, rsaPublicKey: { ...doc.rsaPublicKey, n: other.n! } }));
  });

  test('a static key without its x5c chain', TEST, async () => {
    await refused({}, 'DISCOVERY_INVALID', /x5c/, (doc) => ({ ...doc, rsaPublicKey: { ...doc.rsaPublicKey, x5c: undefined as unknown as string[] } }));
  });

  test('expired certificate (client clock years ahead) and not yet valid (clock behind)', TEST, async () => {
    await refused({ now: () => Date.now() + 5 * 365 * DAY }, 'CERTIFICATE_REFUSED', /certificate refused/);
    await refused({ now: () => Date.now() - 30 * DAY }, 'CERTIFICATE_REFUSED', /certificate refused/);
  });

  test('an unreachable discovery document is a 503, and a later call tries again', TEST, async () => {
    let down = true;
    const client = clients.make(token, {
      fetch: async (input, init) => {
        if (down) throw new Error('connection refused');
        return fetch(input, init);
      },
    });
    await rejectsWith(client.ping(), 503, 'KMS_UNREACHABLE', /well-known/);
    down = false;
    await client.ping();
    assert.equal(await client.authority(), AUTHORITY);
  });
});
