/**
 * Retries get the first answer (src/core/retries.ts), on a real SQLite store and a real keyring:
 * an operation that keeps its first answer runs once per (channel, requestId) whatever the number
 * of copies, sequential or concurrent, and on two store instances (two nodes) alike; the answer
 * is stored sealed, never in clear; another request under the same requestId is refused; a copy
 * after the retry window is refused while its channel lives (a replay never runs again); a failed
 * request runs again; a claim whose node died holds retries only for its lease.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { KmsError, operation, type KmsRequest, type KmsResponse, type Operation } from '@openkms/protocol';
import { requestDigest, requestIdKey, canonicalJson, Retries } from '../../src/core/retries.js';
import { Keyring, localRootKey } from '../../src/keyring/keyring.js';
import { silentLogger } from '../../src/logger.js';
import { withRequestDeadline } from '../../src/store/deadline.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { channelOf, rejectsWith, requestOf } from '../support/core.js';

const spec = (name: Parameters<typeof operation>[0]) => operation(name) as Operation;
const LEASE = 5_000;

describe('retries: the first answer', () => {
  const path = join(mkdtempSync(join(tmpdir(), 'kms-retries-')), 'kms.db');
  const rootKey = localRootKey(new Uint8Array(randomBytes(32)), 'a test key');
  let clock = 1_800_000_000_000;
  const now = () => clock;
  let nodeA: { store: SqliteStore; retries: Retries };
  let nodeB: { store: SqliteStore; retries: Retries };

  const node = async () => {
    const store = new SqliteStore(path);
    const keyring = await Keyring.open(rootKey, store, now());
    return { store, retries: new Retries(store, keyring, { windowMs: 600_000, leaseMs: LEASE }, silentLogger, now) };
  };
  before(async () => {
    nodeA = await node();
    nodeB = await node();
  });
  after(async () => {
    await nodeA.store.close();
    await nodeB.store.close();
  });

  /** A handler that makes a secret each time it runs, and counts its runs. */
  const creating = () => {
    const run = { count: 0, secrets: [] as string[] };
    const handler = async (): Promise<KmsResponse> => {
      run.count++;
      const k = randomBytes(32).toString('base64url');
      run.secrets.push(k);
      return { status: 201, keys: [{ uri: `kms://kms.a.example/keys/${randomUUID()}`, jwk: { kty: 'oct', k } }] };
    };
    return { run, handler };
  };

  test('a create retried on the same channel with the same requestId gets the first answer, from either node, and runs once', async () => {
    const channel = channelOf('alice@a.example');
    const request = requestOf('create', '/keys', { count: 1 });
    const { run, handler } = creating();
    const first = await nodeA.retries.once(channel, request, spec('createKeys'), handler);
    // The retry may carry a refreshed token: the credential is not part of the request's identity.
    const retried = { ...request, client: { ...request.client, credential: { bearer: 'refreshed' } } };
    assert.deepEqual(await nodeB.retries.once(channel, retried, spec('createKeys'), handler), first);
    assert.deepEqual(await nodeA.retries.once(channel, request, spec('createKeys'), handler), first);
    assert.equal(run.count, 1);
    // Another requestId, or another channel, is another request.
    await nodeA.retries.once(channel, { ...request, requestId: randomUUID() }, spec('createKeys'), handler);
    await nodeA.retries.once(channelOf('alice@a.example'), request, spec('createKeys'), handler);
    assert.equal(run.count, 3);
    // The number 1 and the string "1" are two requestIds; one with U+0000 is stored like any other.
    for (const requestId of [1, '1', 'a\u0000b', '\ud800']) await nodeA.retries.once(channel, { ...request, requestId }, spec('createKeys'), handler);
    assert.equal(run.count, 7);
    assert.notEqual(requestIdKey(1), requestIdKey('1'));
    assert.notEqual(requestIdKey('\ud800'), requestIdKey('\ud801'));
  });

  test('the remembered answer is sealed: no key material in the database file', async () => {
    const channel = channelOf('alice@a.example');
    const { run, handler } = creating();
    await nodeA.retries.once(channel, requestOf('create', '/keys', { count: 1 }), spec('createKeys'), handler);
    const db = new Database(path, { readonly: true });
    try {
      const rows = db.prepare('SELECT * FROM retry_answers WHERE channel_id = ?').all(channel.id) as { sealed: Buffer; cmk_id: string }[];
      assert.equal(rows.length, 1);
      assert.ok(rows[0]!.cmk_id, 'sealed under a CMK');
      const stored = rows[0]!.sealed.toString('latin1');
      assert.ok(!stored.includes(run.secrets[0]!) && !stored.includes('"keys"'), 'never in clear');
    } finally {
      db.close();
    }
  });

  test('concurrent copies on two nodes: one runs, the others wait for its answer', async () => {
    const channel = channelOf('alice@a.example');
    const request = requestOf('update', `/keys/${randomUUID()}`, { resourceUri: `/resources/${randomUUID()}` });
    let runs = 0;
    const slowBind = async (): Promise<KmsResponse> => {
      runs++;
      await new Promise((r) => setTimeout(r, 150));
      return { status: 200, key: { uri: request.uri, bindDate: new Date(clock).toISOString() } };
    };
    const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? nodeB : nodeA).retries.once(channel, request, spec('bindKey'), slowBind)));
    assert.equal(runs, 1);
    for (const a of answers) assert.deepEqual(a, answers[0]);
  });

  test('a copy that finds the request still running past its own deadline gets a 503 (retry later)', async () => {
    const channel = channelOf('alice@a.example');
    const request = requestOf('create', '/resources');
    let release!: () => void;
    const running = nodeA.retries.once(channel, request, spec('createResource'), () => new Promise<KmsResponse>((r) => (release = () => r({ status: 201, resource: { uri: 'r' } }))));
    await new Promise((r) => setTimeout(r, 20));
    await rejectsWith(
      withRequestDeadline(100, () => nodeB.retries.once(channel, request, spec('createResource'), async () => assert.fail('must not run twice'))),
      'STORAGE_UNAVAILABLE',
      503,
      /still being answered: retry later/,
    );
    release();
    assert.deepEqual(await running, { status: 201, resource: { uri: 'r' } });
    assert.deepEqual(await nodeB.retries.once(channel, request, spec('createResource'), async () => assert.fail('answered already')), { status: 201, resource: { uri: 'r' } });
  });

  test('the same requestId with another request is refused (400 naming requestId), never given the first answer', async () => {
    const channel = channelOf('alice@a.example');
    const request = requestOf('create', '/keys', { count: 1 });
    const { handler } = creating();
    await nodeA.retries.once(channel, request, spec('createKeys'), handler);
    await rejectsWith(nodeB.retries.once(channel, { ...request, count: 2 }, spec('createKeys'), handler), 'INVALID_FIELD', 400, /^invalid field requestId: already used on this channel for a different request$/);
  });

  test('a failed request gives its claim up: its retry runs again', async () => {
    const channel = channelOf('alice@a.example');
    const request = requestOf('create', '/authorizations', { resourceUri: `/resources/${randomUUID()}`, authIds: ['bob@a.example'] });
    let runs = 0;
    const failing = async (): Promise<KmsResponse> => {
      runs++;
      throw new KmsError('STORAGE_UNAVAILABLE', 'storage unavailable: retry later');
    };
    await rejectsWith(nodeA.retries.once(channel, request, spec('createAuthorizations'), failing), 'STORAGE_UNAVAILABLE', 503);
    const ok = await nodeB.retries.once(channel, request, spec('createAuthorizations'), async () => {
      runs++;
      return { status: 201, authorizations: [] };
    });
    assert.deepEqual(ok, { status: 201, authorizations: [] });
    assert.equal(runs, 2);
  });

  test('a copy after the retry window is refused (400 naming requestId) while its channel lives, never run again; forgotten after', async () => {
    const channel = { ...channelOf('alice@a.example'), expiresAt: clock + 3_600_000 };
    const request = requestOf('create', '/authorizations', { resourceUri: 'kms://kms.a.example/resources/r', userIds: ['bob@a.example'] });
    let runs = 0;
    const handler = async (): Promise<KmsResponse> => ({ status: 201, authorizations: [{ run: ++runs }] });
    const first = await nodeA.retries.once(channel, request, spec('createAuthorizations'), handler);
    clock += 599_000;
    assert.deepEqual(await nodeB.retries.once(channel, request, spec('createAuthorizations'), handler), first, 'within the window: the first answer');
    clock += 1_000;
    await rejectsWith(nodeB.retries.once(channel, request, spec('createAuthorizations'), handler), 'INVALID_FIELD', 400, /requestId: already answered on this channel/);
    await nodeA.store.sweep(clock, 0); // destroys the answer, keeps the request
    clock += 2_900_000;
    await rejectsWith(nodeA.retries.once(channel, request, spec('createAuthorizations'), handler), 'INVALID_FIELD', 400, /requestId/);
    assert.equal(runs, 1);
    const db = new Database(path, { readonly: true });
    try {
      const rows = db.prepare('SELECT sealed, answered FROM retry_answers WHERE channel_id = ?').all(channel.id) as { sealed: Buffer | null; answered: number }[];
      assert.deepEqual(rows.map((r) => [r.sealed, r.answered]), [[null, 1]], 'the answer destroyed after its window, the request remembered');
    } finally {
      db.close();
    }
    // Past the channel's end nothing can open a copy; the row goes at the next sweep.
    clock = channel.expiresAt;
    await nodeA.store.sweep(clock, 0);
    const left = new Database(path, { readonly: true });
    try {
      assert.equal((left.prepare('SELECT count(*) AS n FROM retry_answers WHERE channel_id = ?').get(channel.id) as { n: number }).n, 0);
    } finally {
      left.close();
    }
  });

  test('a node that died after claiming holds the retries only until its lease ends', async () => {
    const channel = channelOf('alice@a.example');
    const request = requestOf('create', '/keys', { count: 1 });
    // The dead node's claim, as it left it: claimed, never answered.
    const claim = { channelId: channel.id, requestId: requestIdKey(request.requestId), digest: requestDigest(request)!, claimant: randomUUID(), now: clock, leaseUntil: clock + LEASE, answerUntil: clock + 600_000, expiresAt: clock + 600_000 };
    assert.deepEqual(await nodeA.store.claimAnswer(claim), { state: 'claimed' });
    const { run, handler } = creating();
    await rejectsWith(withRequestDeadline(60, () => nodeB.retries.once(channel, request, spec('createKeys'), handler)), 'STORAGE_UNAVAILABLE', 503);
    clock += LEASE;
    const answer = await nodeB.retries.once(channel, request, spec('createKeys'), handler);
    assert.equal(run.count, 1);
    assert.deepEqual(await nodeA.retries.once(channel, request, spec('createKeys'), handler), answer);
  });

  test('operations that repeat (reads, ping), and requests under the static key, run every time', async () => {
    let runs = 0;
    const handler = async (): Promise<KmsResponse> => ({ status: 200, n: ++runs });
    const channel = channelOf('alice@a.example');
    const read = requestOf('retrieve', `/keys/${randomUUID()}`);
    await nodeA.retries.once(channel, read, spec('retrieveKey'), handler);
    await nodeA.retries.once(channel, read, spec('retrieveKey'), handler);
    const handshake = requestOf('create', '/ecdhe');
    await nodeA.retries.once(undefined, handshake, spec('createEphemeralKey'), handler);
    await nodeA.retries.once(undefined, handshake, spec('createEphemeralKey'), handler);
    assert.equal(runs, 4);
  });
});

describe('the request digest', () => {
  const base: KmsRequest = { requestId: 'r1', client: { clientId: 'c1', credential: { bearer: 'one' } }, method: 'create', uri: '/resources', authIds: ['a', 'b'], ttl: 60 };

  test('ignores the requestId, the credential, member order and a peer\'s iat; sees everything else', () => {
    const d = requestDigest(base)!;
    assert.match(d, /^[0-9a-f]{64}$/);
    assert.equal(requestDigest({ ttl: 60, authIds: ['a', 'b'], uri: '/resources', method: 'create', client: { credential: { bearer: 'two' }, clientId: 'c1' }, requestId: 'r2' }), d);
    assert.equal(requestDigest({ ...base, iat: 123 }), d);
    for (const other of [{ ttl: 61 }, { authIds: ['b', 'a'] }, { uri: '/keys' }, { client: { clientId: 'c2', credential: { bearer: 'one' } } }, { onBehalfOf: 'x@b.example' }]) {
      assert.notEqual(requestDigest({ ...base, ...other } as KmsRequest), d, JSON.stringify(other));
    }
  });

  test('canonical JSON sorts members at every depth and keeps arrays in order', () => {
    assert.equal(canonicalJson({ b: 1, a: { d: [2, { f: 1, e: 0 }], c: null } }), '{"a":{"c":null,"d":[2,{"e":0,"f":1}]},"b":1}');
    assert.equal(canonicalJson({ a: undefined, b: 'x' }), '{"b":"x"}');
  });

  test('a request nested deeper than any valid one has no digest (it runs, and its operation refuses it); no recursion its depth', () => {
    const deep = JSON.parse('['.repeat(50_000) + ']'.repeat(50_000)) as unknown;
    assert.equal(requestDigest({ ...base, authIds: deep }), undefined);
    assert.equal(canonicalJson([[1]], 1), undefined);
    assert.equal(canonicalJson([[1]], 2), '[[1]]');
  });
});
