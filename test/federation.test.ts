/**
 * KMS-to-KMS federation (PROTOCOL.md §6, draft 3.3 steps 1–10) between REAL KMSs: every KMS here
 * is the real server on loopback (real sockets, real SQLite files, real keys and certificates), and
 * every user is the real SDK. Nothing of a KMS is mocked; the only stand-ins are a TCP server that
 * accepts and never answers (a hanging peer) and, for the impostor who holds the real B's
 * certificate but not its key, a handshake JWS built by hand and given to the real PeerVerifier.
 *
 * Each case checks what the user sees at B (the status) and what A and B recorded (their audit
 * tables, read straight from the database files).
 */
import assert from 'node:assert/strict';
import { createPrivateKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { CompactSign } from 'jose';
import { KmsClient, KmsError, type KeyRep } from '@openkms/client';
import { devIssuerOf, initKmsDir, loadConfig, parseConfig, startKms, type Logger, type RunningKms } from '@openkms/server';
import { kmsFolder, manualClock, startTestKms, type TestKms } from '@openkms/server/testing';
// Not part of the package's public API; the impostor-with-the-real-certificate case needs them.
import { PeerVerifier } from '../packages/server/dist/src/federation/peer-proof.js';
import { PeerRegistry } from '../packages/server/dist/src/federation/peers.js';

const A_AUTH = 'kms.a.example';
const B_AUTH = 'kms.b.example';
const C_AUTH = 'kms.c.example';
const VIA_B = `kms://${B_AUTH}`;
const VIA_A = `kms://${A_AUTH}`;
const TEST = { timeout: 30_000 };
/** An endpoint nobody listens on: where A cannot deliver invalidations, the staleness bound is the backstop. */
const NOWHERE = 'http://127.0.0.1:9';
const INVALIDATIONS_AT_B = `kms://${B_AUTH}/federation/invalidations`;

// ---- helpers ---------------------------------------------------------------------------------

type Clock = ReturnType<typeof manualClock>;

async function caPem(authority: string, domain: string): Promise<string> {
  return readFileSync(join(await kmsFolder(authority, [domain]), 'ca.pem'), 'utf8');
}

function peerEntry(authority: string, domain: string, endpoint: string, ca: string) {
  return { authority, domains: [domain], endpoint, trustAnchors: [ca] };
}

const clients: KmsClient[] = [];

/** A user's SDK on `kms`, with a fresh token for every request. */
function userOn(kms: TestKms, user: string, ca: string, clock?: Clock): KmsClient {
  const client = new KmsClient({
    url: kms.url,
    authority: kms.config.authority,
    trustAnchors: [ca],
    token: () => kms.token(user),
    debounceMs: 1,
    now: clock?.now,
  });
  clients.push(client);
  return client;
}

/** The status of a KmsError the promise must reject with. */
async function statusOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    if (err instanceof KmsError) return err.status;
    throw err;
  }
  assert.fail('expected a KMS error');
}

interface AuditRow {
  seq: number;
  principal: string | null;
  client_id: string | null;
  method: string | null;
  uri: string | null;
  status: number;
  peer: string | null;
}

/** The audit table of a KMS, read from its database file (read-only, a second connection). */
function audit(dbPath: string, afterSeq = 0): AuditRow[] {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT seq, principal, client_id, method, uri, status, peer FROM audit WHERE seq > ? ORDER BY seq').all(afterSeq) as AuditRow[];
  } finally {
    db.close();
  }
}

function lastSeq(dbPath: string): number {
  const rows = audit(dbPath);
  return rows.length === 0 ? 0 : rows[rows.length - 1]!.seq;
}

/** Rows A recorded for a B user acting through B's peer channel. */
function onBehalfOf(a: { dbPath: string }, user: string, via = VIA_B): AuditRow[] {
  return audit(a.dbPath).filter((r) => r.principal === user && r.peer === via);
}

/** Rows B recorded for its own exchanges with A (client_id "federation", peer kms://<A>). */
function exchanges(b: { dbPath: string }, user: string, via = VIA_A): AuditRow[] {
  return audit(b.dbPath).filter((r) => r.principal === user && r.peer === via);
}

function copies(dbPath: string): { resource_uri: string; authority: string; fetched_at: number }[] {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT resource_uri, authority, fetched_at FROM federated_copies ORDER BY resource_uri').all() as {
      resource_uri: string;
      authority: string;
      fetched_at: number;
    }[];
  } finally {
    db.close();
  }
}

async function wellKnownJwk(url: string): Promise<Record<string, unknown>> {
  const doc = (await (await fetch(`${url}/.well-known/kms`)).json()) as { rsaPublicKey: Record<string, unknown> };
  return doc.rsaPublicKey;
}

/** A free loopback port, so that A's peer entry can name B's endpoint before B starts. */
async function freePort(): Promise<number> {
  const server = createTcpServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Waits (real time, bounded) until `cond` holds; returns how long it took in ms. */
async function waitFor(cond: () => boolean, what: string, ms = 8000): Promise<number> {
  const started = performance.now();
  while (!cond()) {
    if (performance.now() - started > ms) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return performance.now() - started;
}

/** Invalidations B accepted from A (its audit: `update …/federation/invalidations` by kms://<A>, 204). */
function invalidationsAt(b: { dbPath: string }): number {
  return audit(b.dbPath).filter((r) => r.uri === INVALIDATIONS_AT_B && r.principal === VIA_A && r.status === 204).length;
}

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

const enc = new TextEncoder();

function signJws(payload: Record<string, unknown>, key: KeyObject, kid: string): Promise<string> {
  return new CompactSign(enc.encode(JSON.stringify(payload))).setProtectedHeader({ alg: 'PS256', kid }).sign(key);
}

/** A keyRep as B serves it from a copy: A never reveals who created the key or from which client. */
function assertReleased(key: KeyRep, expected: KeyRep, resourceUri: string): void {
  assert.equal(key.uri, expected.uri);
  assert.equal(key.jwk.k, expected.jwk.k);
  assert.equal(key.resourceUri, resourceUri);
  assert.equal((key as unknown as Record<string, unknown>).userId, undefined, 'no userId of A');
  assert.equal((key as unknown as Record<string, unknown>).clientId, undefined, 'no clientId of A');
}

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
});

// ---- A and B, federated both ways; C, an impostor, and peer-channel abuse --------------------

describe('federation between kms.a.example and kms.b.example', () => {
  const clock = manualClock();
  let caA: string;
  let caB: string;
  let A: TestKms;
  let B: TestKms;
  let alice: KmsClient;
  let bob: KmsClient;
  let R: string;
  let keys: KeyRep[];
  const message = 'the shared file: quarterly numbers';
  let content: string;
  const closers: (() => Promise<unknown>)[] = [];

  before(async () => {
    [caA, caB] = await Promise.all([caPem(A_AUTH, 'a.example'), caPem(B_AUTH, 'b.example')]);
    // B's endpoint is known before B starts, so that A can push invalidations to it.
    const portB = await freePort();
    A = await startTestKms({ authority: A_AUTH, domains: ['a.example'], now: clock.now, config: { peers: [peerEntry(B_AUTH, 'b.example', `http://127.0.0.1:${portB}`, caB)] } });
    closers.push(() => A.close());
    B = await startTestKms({ authority: B_AUTH, domains: ['b.example'], now: clock.now, port: portB, config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)] } });
    closers.push(() => B.close());
    alice = userOn(A, 'alice@a.example', caA, clock);
    bob = userOn(B, 'bob@b.example', caB, clock);

    // Steps 1–4: Alice takes keys, encrypts the file with one, makes a KRO authorizing Bob with
    // that key bound; two more keys are bound later (distinct bindDates for the filters).
    keys = await alice.createKeys(3);
    content = await alice.encrypt(keys[0]!, message);
    R = (await alice.createResource({ authIds: ['bob@b.example'], keyUris: [keys[0]!.uri] })).resource.uri;
    clock.advance(10);
    await alice.bindKey(keys[1]!.uri, R);
    clock.advance(10);
    await alice.bindKey(keys[2]!.uri, R);
    // Alice's view, newest first, with the bindDates A gave them.
    const created = keys.map((k) => k.uri);
    keys = (await alice.retrieveResourceKeys(R)).reverse();
    assert.deepEqual(keys.map((k) => k.uri), created);
  });

  after(async () => {
    for (const close of closers.reverse()) await close();
  });

  test('happy path (steps 5–10): Bob decrypts through B; resource keys filtered by B; the second read is the copy', TEST, async (t) => {
    const [k1, k2, k3] = keys as [KeyRep, KeyRep, KeyRep];
    assert.equal(onBehalfOf(A, 'bob@b.example').length, 0);

    // Steps 6–9: Bob asks B for an A key; B fetches the KRO from A and serves him.
    let started = performance.now();
    const got = await bob.retrieveKey(k1.uri);
    const cold = performance.now() - started;
    assertReleased(got, k1, R);

    // A recorded exactly one request on behalf of Bob through B's channel, and B's handshake.
    let fromB = onBehalfOf(A, 'bob@b.example');
    assert.equal(fromB.length, 1, JSON.stringify(fromB));
    assert.deepEqual({ method: fromB[0]!.method, uri: fromB[0]!.uri, status: fromB[0]!.status }, { method: 'retrieve', uri: k1.uri, status: 200 });
    const handshakes = audit(A.dbPath).filter((r) => r.principal === VIA_B && r.peer === VIA_B && r.status === 201);
    assert.equal(handshakes.length, 1, 'one peer channel opened by B');
    // B recorded the federated exchange (peer = A) and Bob's own request.
    const ex = exchanges(B, 'bob@b.example');
    assert.equal(ex.length, 1);
    assert.deepEqual({ client: ex[0]!.client_id, uri: ex[0]!.uri, status: ex[0]!.status }, { client: 'federation', uri: k1.uri, status: 200 });
    assert.ok(audit(B.dbPath).some((r) => r.principal === 'bob@b.example' && r.peer === null && r.uri === k1.uri && r.status === 200));

    // Step 10: Bob decrypts (another read of the key, from the copy).
    assert.equal(Buffer.from(await bob.decrypt(content)).toString('utf8'), message);
    started = performance.now();
    assertReleased(await bob.retrieveKey(k1.uri), k1, R);
    const warm = performance.now() - started;
    t.diagnostic(`Bob's key read through B: cold (fetch from A) ${cold.toFixed(1)} ms, warm (copy) ${warm.toFixed(1)} ms`);

    // retrieve /resources/<R>/keys through B: newest first, filters applied by B on the copy.
    const uris = (list: KeyRep[]) => list.map((k) => k.uri);
    const all = await bob.retrieveResourceKeys(R);
    assert.deepEqual(uris(all), [k3.uri, k2.uri, k1.uri]);
    all.forEach((k) => assertReleased(k, keys.find((x) => x.uri === k.uri)!, R));
    assert.deepEqual(uris(await bob.retrieveResourceKeys(R, { boundAfter: k2.bindDate! })), [k3.uri, k2.uri]);
    assert.deepEqual(uris(await bob.retrieveResourceKeys(R, { boundBefore: k3.bindDate! })), [k2.uri, k1.uri]);
    assert.deepEqual(uris(await bob.retrieveResourceKeys(R, { count: 2 })), [k3.uri, k2.uri]);
    assert.deepEqual(uris(await bob.retrieveResourceKeys(R, { boundAfter: k1.bindDate!, boundBefore: k3.bindDate!, count: 1 })), [k2.uri]);
    assert.deepEqual(uris(await bob.retrieveResourceKeys(R, { boundAfter: new Date(clock.now() + 60_000) })), []);
    // A key through B too (a key URI maps to the copy of its KRO).
    assertReleased(await bob.retrieveKey(k3.uri), k3, R);

    // All of that was served from the copy: A saw Bob once, B exchanged with A once.
    fromB = onBehalfOf(A, 'bob@b.example');
    assert.equal(fromB.length, 1, 'served from the copy, not from A');
    assert.equal(exchanges(B, 'bob@b.example').length, 1);
  });

  test('carol@b.example, not authorized on the KRO: 403 at B, refused by A', TEST, async () => {
    const carol = userOn(B, 'carol@b.example', caB, clock);
    clock.advance(1100); // past the 1 s re-fetch interval of whatever came before
    assert.equal(await statusOf(carol.retrieveKey(keys[0]!.uri)), 403);
    const atA = onBehalfOf(A, 'carol@b.example');
    assert.equal(atA.length, 1);
    assert.equal(atA[0]!.status, 403);
    const atB = exchanges(B, 'carol@b.example');
    assert.equal(atB.length, 1);
    assert.equal(atB[0]!.status, 403);
    assert.ok(audit(B.dbPath).some((r) => r.principal === 'carol@b.example' && r.peer === null && r.status === 403));
    // Again at once: still 403, and B does not ask A more than once a second per KRO.
    assert.equal(await statusOf(carol.retrieveResourceKeys(R)), 403);
    assert.equal(onBehalfOf(A, 'carol@b.example').length, 1);
    // Bob is still served.
    assertReleased(await bob.retrieveKey(keys[0]!.uri), keys[0]!, R);
  });

  test('a KRO with no B-domain principal: A refuses (403) and Bob sees 403; nothing is cached', TEST, async () => {
    const [k4, unbound] = await alice.createKeys(2);
    const R2 = (await alice.createResource({ authIds: ['dave@a.example'], keyUris: [k4!.uri] })).resource.uri;
    const before = onBehalfOf(A, 'bob@b.example').length;
    assert.equal(await statusOf(bob.retrieveKey(k4!.uri)), 403);
    assert.equal(await statusOf(bob.retrieveResourceKeys(R2)), 403);
    const atA = onBehalfOf(A, 'bob@b.example').slice(before);
    assert.deepEqual(
      atA.map((r) => [r.uri, r.status]),
      [
        [k4!.uri, 403],
        [`${R2}/keys`, 403],
      ],
    );
    assert.ok(!copies(B.dbPath).some((c) => c.resource_uri === R2), 'a refusal is never cached');
    // An unbound key is never released (403); a key A does not have is 404.
    assert.equal(await statusOf(bob.retrieveKey(unbound!.uri)), 403);
    assert.equal(await statusOf(bob.retrieveKey(`kms://${A_AUTH}/keys/${randomUUID()}`)), 404);
    // A KMS that is neither B nor a peer of B: 404 (§6 "Peers").
    assert.equal(await statusOf(bob.retrieveKey(`kms://kms.z.example/keys/${randomUUID()}`)), 404);
  });

  test('a KMS that A does not list (kms.c.example): its user gets 502, A records the refusal', TEST, async (t) => {
    const C = await startTestKms({ authority: C_AUTH, domains: ['c.example'], now: clock.now, config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)] } });
    closers.push(() => C.close());
    const caC = await caPem(C_AUTH, 'c.example');
    const dan = userOn(C, 'dan@c.example', caC, clock);
    const seq = lastSeq(A.dbPath);
    const err = await dan.retrieveKey(keys[0]!.uri).then(
      () => assert.fail('C must not obtain the key'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof KmsError);
    assert.equal(err.status, 502, err.message);
    const atA = audit(A.dbPath, seq);
    assert.ok(atA.length >= 1, 'A recorded the refused handshake');
    assert.ok(atA.every((r) => r.status === 403), JSON.stringify(atA));
    t.diagnostic(`A's audit of the refused channel: ${JSON.stringify(atA.map(({ principal, peer, method, uri, status }) => ({ principal, peer, method, uri, status })))}`);
    assert.ok(!atA.some((r) => r.principal === 'dan@c.example'), 'no request of dan reached A');
    const atC = exchanges(C, 'dan@c.example');
    assert.equal(atC.length, 1);
    assert.equal(atC[0]!.status, 502);
    assert.equal(copies(C.dbPath).length, 0);
  });

  describe('impostors of kms.b.example', () => {
    let impostorDir: string;
    let impostor: RunningKms;
    let impostorIssue: (user: string) => Promise<string>;

    before(async () => {
      impostorDir = mkdtempSync(join(tmpdir(), 'kms-impostor-'));
      // Same authority and domain as the real B, but a CA of its own (no --ca-cert/--ca-key).
      await initKmsDir({ dir: impostorDir, authority: B_AUTH, domains: ['b.example'] });
      const { baseDir, ...raw } = loadConfig(join(impostorDir, 'kms.json'));
      const config = parseConfig({ ...raw, peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)] }, baseDir);
      impostor = await startKms(config, { db: `sqlite:${join(impostorDir, 'kms.db')}`, port: 0, host: '127.0.0.1', now: clock.now, logger: silent, sweeper: false });
      const issuer = devIssuerOf(config)!;
      impostorIssue = (user) => issuer.issue(user, { now: clock.now() });
    });

    after(async () => {
      await impostor?.close();
      rmSync(impostorDir, { recursive: true, force: true });
    });

    test('a KMS with the authority kms.b.example but another CA: its user gets 502, A refuses the channel (401)', TEST, async (t) => {
      const fakeBob = new KmsClient({
        url: impostor.url,
        authority: B_AUTH,
        trustAnchors: [readFileSync(join(impostorDir, 'ca.pem'), 'utf8')],
        token: () => impostorIssue('bob@b.example'),
        debounceMs: 1,
        now: clock.now,
      });
      clients.push(fakeBob);
      const seq = lastSeq(A.dbPath);
      const bobAtA = onBehalfOf(A, 'bob@b.example').length;
      assert.equal(await statusOf(fakeBob.retrieveKey(keys[0]!.uri)), 502);
      const atA = audit(A.dbPath, seq);
      assert.ok(atA.length >= 1, 'A recorded the refused handshake');
      assert.ok(atA.every((r) => r.status === 401), JSON.stringify(atA));
      t.diagnostic(`A's audit of the impostor's channel: ${JSON.stringify(atA.map(({ principal, peer, method, uri, status }) => ({ principal, peer, method, uri, status })))}`);
      assert.equal(onBehalfOf(A, 'bob@b.example').length, bobAtA, 'nothing was asked for Bob');
      const db = new Database(join(impostorDir, 'kms.db'), { readonly: true });
      try {
        assert.equal((db.prepare('SELECT count(*) AS n FROM federated_copies').get() as { n: number }).n, 0);
      } finally {
        db.close();
      }
    });

    test("the real B's certificate chain with another key, wrong aud, stale iat, unknown kid: PeerVerifier refuses", TEST, async () => {
      const realJwk = await wellKnownJwk(B.url);
      const realKey = createPrivateKey(readFileSync(join(B.dir, 'static-key.pem')));
      const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
      const registry = new PeerRegistry({ authority: A_AUTH, domains: ['a.example'], peers: [peerEntry(B_AUTH, 'b.example', NOWHERE, caB)] });
      const verifier = new PeerVerifier(A_AUTH, registry, Date.now);
      const ephemeral = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' });
      const handshake = (over: Record<string, unknown> = {}) => ({
        requestId: randomUUID(),
        method: 'create',
        uri: `kms://${A_AUTH}/ecdhe`,
        jwk: ephemeral,
        client: { clientId: VIA_B, credential: { jwk: realJwk } },
        aud: `kms://${A_AUTH}`,
        iat: Math.floor(Date.now() / 1000),
        ...over,
      });
      const refusedWith = (status: number) => (err: unknown) => {
        assert.ok(err instanceof KmsError, String(err));
        assert.equal(err.status, status, err.reason);
        return true;
      };

      // Control: the real B's key and certificate pass.
      const signedOnce = await signJws(handshake(), realKey, VIA_B);
      const ok = await verifier.verifyHandshake(signedOnce, 3_600_000);
      // The same signed message again (a replay within the iat window) is refused.
      await assert.rejects(verifier.verifyHandshake(signedOnce, 3_600_000), (err: unknown) => err instanceof KmsError && err.status === 401 && /replayed/.test(err.reason));
      assert.equal(ok.principal.authority, B_AUTH);
      assert.deepEqual(ok.principal.domains, ['b.example']);
      assert.ok(await verifier.verifyHandshake(await signJws(handshake({ iat: Math.floor(Date.now() / 1000) - 290 }), realKey, VIA_B), 3_600_000));

      // The real B's x5c, signed by another key.
      await assert.rejects(verifier.verifyHandshake(await signJws(handshake(), otherKey, VIA_B), 3_600_000), refusedWith(401));
      // The impostor's own key and chain (its own CA).
      const impostorJwk = await wellKnownJwk(impostor.url);
      const impostorKey = createPrivateKey(readFileSync(join(impostorDir, 'static-key.pem')));
      await assert.rejects(
        verifier.verifyHandshake(await signJws(handshake({ client: { clientId: VIA_B, credential: { jwk: impostorJwk } } }), impostorKey, VIA_B), 3_600_000),
        refusedWith(401),
      );
      // Right key, but addressed to another KMS, or 301 s off either way.
      await assert.rejects(verifier.verifyHandshake(await signJws(handshake({ aud: `kms://${C_AUTH}` }), realKey, VIA_B), 3_600_000), refusedWith(401));
      await assert.rejects(verifier.verifyHandshake(await signJws(handshake({ aud: undefined }), realKey, VIA_B), 3_600_000), refusedWith(401));
      await assert.rejects(verifier.verifyHandshake(await signJws(handshake({ iat: Math.floor(Date.now() / 1000) - 301 }), realKey, VIA_B), 3_600_000), refusedWith(401));
      await assert.rejects(verifier.verifyHandshake(await signJws(handshake({ iat: Math.floor(Date.now() / 1000) + 301 }), realKey, VIA_B), 3_600_000), refusedWith(401));
      // A kid naming an authority that is not a peer.
      await assert.rejects(verifier.verifyHandshake(await signJws(handshake(), realKey, 'kms://kms.z.example'), 3_600_000), refusedWith(403));
      // credential.jwk that is not the signer's (kid differs from the JWS kid).
      await assert.rejects(
        verifier.verifyHandshake(await signJws(handshake({ client: { clientId: VIA_B, credential: { jwk: { ...realJwk, kid: `kms://${C_AUTH}` } } } }), realKey, VIA_B), 3_600_000),
        refusedWith(401),
      );
    });
  });

  test("Bob's B-issued token presented to A directly is refused", TEST, async () => {
    const bobAtA = new KmsClient({ url: A.url, authority: A_AUTH, trustAnchors: [caA], token: () => B.token('bob@b.example'), debounceMs: 1, now: clock.now });
    clients.push(bobAtA);
    const seq = lastSeq(A.dbPath);
    const status = await statusOf(bobAtA.retrieveKey(keys[0]!.uri));
    assert.ok(status === 401 || status === 403, `got ${status}`);
    const atA = audit(A.dbPath, seq);
    assert.ok(atA.length >= 1 && atA.every((r) => r.status === status), JSON.stringify(atA));
    assert.ok(!atA.some((r) => r.principal === 'bob@b.example'));
  });

  test('B authenticates A: a KMS of another authority at A\'s endpoint, or A under untrusted anchors → 502', TEST, async () => {
    const caC = await caPem(C_AUTH, 'c.example');
    const C = await startTestKms({ authority: C_AUTH, domains: ['c.example'], now: clock.now });
    closers.push(() => C.close());
    // B' lists kms.a.example at C's endpoint (C's own CA trusted): kmsCluster is not kms://kms.a.example.
    const wrongEndpoint = await startTestKms({ authority: B_AUTH, domains: ['b.example'], now: clock.now, config: { peers: [peerEntry(A_AUTH, 'a.example', C.url, caC)] } });
    closers.push(() => wrongEndpoint.close());
    // B'' lists A at its real endpoint, but with C's CA as the only anchor: A's certificate does not chain.
    const wrongAnchor = await startTestKms({ authority: B_AUTH, domains: ['b.example'], now: clock.now, config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caC)] } });
    closers.push(() => wrongAnchor.close());
    const before = onBehalfOf(A, 'bob@b.example').length;
    for (const b of [wrongEndpoint, wrongAnchor]) {
      const bobThere = userOn(b, 'bob@b.example', caB, clock);
      const err = await bobThere.retrieveKey(keys[0]!.uri).then(
        () => assert.fail('served from an unauthenticated A'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof KmsError);
      assert.equal(err.status, 502, err.message);
      assert.deepEqual(exchanges(b, 'bob@b.example').map((r) => r.status), [502]);
      assert.equal(copies(b.dbPath).length, 0);
    }
    assert.equal(onBehalfOf(A, 'bob@b.example').length, before, 'no request reached A');
  });

  test(
    'a KRO with more than 500 keys: B gets every key over several pages (§6 "at most 500 per answer with next")',
    TEST,
    async () => {
      // 100 keys bound at t0 (with the KRO), 401 more at t1: 501 in all.
      const first = await alice.createKeys(100);
      const big = (await alice.createResource({ authIds: ['bob@b.example'], keyUris: first.map((k) => k.uri) })).resource.uri;
      clock.advance(5);
      const rest = (await Promise.all([alice.createKeys(100), alice.createKeys(100), alice.createKeys(100), alice.createKeys(100), alice.createKeys(1)])).flat();
      await Promise.all(rest.map((k) => alice.bindKey(k.uri, big)));
      assert.equal((await alice.retrieveResourceKeys(big)).length, 501, 'A itself lists all 501');
      const read = (key: KeyRep) =>
        bob.retrieveKey(key.uri).then(
          (k) => (k.jwk.k === key.jwk.k ? 200 : -1),
          (e: unknown) => (e instanceof KmsError ? e.status : -2),
        );
      // B has no copy yet: the newest key (on A's first page) is fetched by its URI.
      const newKey = await read(rest[rest.length - 1]!);
      const viaB = (await bob.retrieveResourceKeys(big)).length;
      // One of the oldest keys (bound with the KRO).
      const oldKey = await read(first[0]!);
      assert.deepEqual({ keysThroughB: viaB, oldKeyStatus: oldKey, newKeyStatus: newKey }, { keysThroughB: 501, oldKeyStatus: 200, newKeyStatus: 200 });
    },
  );

  test('federated authorization management through B (§6): list (B-domain only), authorize, deauthorize; A decides', TEST, async () => {
    const erin = userOn(B, 'erin@b.example', caB, clock);
    const carol = userOn(B, 'carol@b.example', caB, clock);
    assert.deepEqual((await bob.listAuthorizations(R)).map((a) => a.authId), ['bob@b.example'], 'alice@a.example is not revealed');
    assert.deepEqual((await bob.listAuthorizations(R, 'alice@a.example')).map((a) => a.authId), []);
    const received = invalidationsAt(B);
    const made = await bob.authorize(R, ['erin@b.example']);
    assert.deepEqual(made.map((a) => a.authId), ['erin@b.example']);
    assert.ok(onBehalfOf(A, 'bob@b.example').some((r) => r.method === 'create' && r.status === 201), 'A applied the change for Bob');
    assert.ok(exchanges(B, 'bob@b.example').some((r) => r.method === 'create' && r.status === 201));
    await waitFor(() => invalidationsAt(B) > received, 'the invalidation after the new authorization');
    assertReleased(await erin.retrieveKey(keys[0]!.uri), keys[0]!, R);

    // carol, not authorized, may not authorize herself: A's 403 reaches her.
    assert.equal(await statusOf(carol.authorize(R, ['carol@b.example'])), 403);
    assert.equal(await statusOf(carol.listAuthorizations(R)), 403);

    const before = invalidationsAt(B);
    assert.equal((await bob.deauthorize(R, 'erin@b.example')).authId, 'erin@b.example');
    await waitFor(() => invalidationsAt(B) > before, 'the invalidation after the deauthorization');
    assert.equal(await statusOf(erin.retrieveKey(keys[0]!.uri)), 403);
    assert.deepEqual((await bob.listAuthorizations(R)).map((a) => a.authId), ['bob@b.example']);

    // A bare name means a user of Bob's own domain: B makes it erin@b.example before forwarding,
    // so A never reads it as erin@a.example (another person).
    assert.deepEqual((await bob.authorize(R, ['erin'])).map((a) => a.authId), ['erin@b.example']);
    assert.deepEqual((await bob.listAuthorizations(R, 'erin')).map((a) => a.authId), ['erin@b.example']);
    assert.equal((await bob.deauthorize(R, 'erin')).authId, 'erin@b.example');
  });

  test('invalidations: a revocation and a new key reach B without waiting for the staleness bound', TEST, async (t) => {
    const carol = userOn(B, 'carol@b.example', caB, clock);
    const [v1, v2] = await alice.createKeys(2);
    const V = (await alice.createResource({ authIds: ['bob@b.example', 'carol@b.example'], keyUris: [v1!.uri] })).resource.uri;
    assert.equal((await bob.retrieveKey(v1!.uri)).jwk.k, v1!.jwk.k);
    assert.equal((await carol.retrieveKey(v1!.uri)).jwk.k, v1!.jwk.k);
    const pushedBefore = audit(A.dbPath).filter((r) => r.principal === VIA_A && r.peer === VIA_B && r.method === 'update' && r.status === 204).length;

    // The manual clock does not move: without the invalidation B would serve Carol from its copy.
    let received = invalidationsAt(B);
    let started = performance.now();
    await alice.deauthorize(V, 'carol@b.example');
    const revocation = await waitFor(() => invalidationsAt(B) > received, 'the invalidation after the revocation');
    t.diagnostic(`revocation: Alice's deauthorize → B accepted the invalidation in ${(performance.now() - started).toFixed(0)} ms (waited ${revocation.toFixed(0)} ms)`);
    assert.equal(await statusOf(carol.retrieveKey(v1!.uri)), 403);
    assert.equal((await bob.retrieveKey(v1!.uri)).jwk.k, v1!.jwk.k);

    received = invalidationsAt(B);
    started = performance.now();
    await alice.bindKey(v2!.uri, V);
    await waitFor(() => invalidationsAt(B) > received, 'the invalidation after the bind');
    t.diagnostic(`new key: Alice's bind → B accepted the invalidation in ${(performance.now() - started).toFixed(0)} ms`);
    assert.deepEqual((await bob.retrieveResourceKeys(V)).map((k) => k.uri), [v2!.uri, v1!.uri]);

    const pushes = audit(A.dbPath).filter((r) => r.principal === VIA_A && r.peer === VIA_B && r.method === 'update' && r.status === 204);
    assert.ok(pushes.length >= pushedBefore + 2, 'A recorded its pushes');
    assert.ok(pushes.every((r) => r.uri === INVALIDATIONS_AT_B));
  });

  test(
    'a key of an invalidated KRO that B\'s copy does not hold yet is served (Bob authorized later; a key bound after the copy)',
    TEST,
    async () => {
      // Alice authorizes Bob after making the KRO: A pushes an invalidation to B (Bob's KMS).
      const [w1, w2] = await alice.createKeys(2);
      const W = (await alice.createResource({ keyUris: [w1!.uri] })).resource.uri;
      let received = invalidationsAt(B);
      await alice.authorize(W, ['bob@b.example']);
      await waitFor(() => invalidationsAt(B) > received, 'the invalidation after authorizing Bob');
      const first = await bob.retrieveKey(w1!.uri).then(
        () => 200,
        (e: unknown) => (e instanceof KmsError ? e.status : -1),
      );
      // Bob read the KRO's keys (copy made); Alice binds another key: B learns of it and Bob asks for it.
      await bob.retrieveResourceKeys(W).catch(() => undefined);
      received = invalidationsAt(B);
      await alice.bindKey(w2!.uri, W);
      await waitFor(() => invalidationsAt(B) > received, 'the invalidation after the bind');
      const second = await bob.retrieveKey(w2!.uri).then(
        () => 200,
        (e: unknown) => (e instanceof KmsError ? e.status : -1),
      );
      assert.deepEqual({ authorizedLater: first, boundAfterCopy: second }, { authorizedLater: 200, boundAfterCopy: 200 });
    },
  );

  // A answering with a key of another resource is refused (502): packages/server/test/federation-answer.test.ts.

  test('copies at rest: B holds a sealed copy of the KRO, no key value in its database files or logs', TEST, async () => {
    const rows = copies(B.dbPath);
    const row = rows.find((c) => c.resource_uri === R);
    assert.ok(row, JSON.stringify(rows));
    assert.equal(row.authority, A_AUTH);
    const db = new Database(B.dbPath, { readonly: true });
    try {
      const mapped = db.prepare('SELECT key_uri FROM federated_keys WHERE resource_uri = ? ORDER BY key_uri').all(R) as { key_uri: string }[];
      assert.deepEqual(mapped.map((r) => r.key_uri), keys.map((k) => k.uri).sort());
    } finally {
      db.close();
    }
    const files = [B.dbPath, `${B.dbPath}-wal`].filter(existsSync).map((f) => readFileSync(f));
    assert.ok(files.length >= 1);
    const logs = B.logs.join('');
    for (const k of keys) {
      const raw = Buffer.from(k.jwk.k, 'base64url');
      assert.equal(raw.length, 32);
      for (const file of files) {
        assert.equal(file.indexOf(raw), -1, 'raw key bytes in B database');
        assert.equal(file.indexOf(Buffer.from(k.jwk.k)), -1, 'base64url key in B database');
        assert.equal(file.indexOf(Buffer.from(raw.toString('base64'))), -1, 'base64 key in B database');
        assert.equal(file.indexOf(Buffer.from(raw.toString('hex'))), -1, 'hex key in B database');
      }
      assert.ok(!logs.includes(k.jwk.k), 'key in B logs');
    }
  });

  test('a peer channel may only do §6 things', TEST, async () => {
    const realJwk = await wellKnownJwk(B.url);
    const realKey = createPrivateKey(readFileSync(join(B.dir, 'static-key.pem')));
    const asB = new KmsClient({
      url: A.url,
      authority: A_AUTH,
      trustAnchors: [caA],
      debounceMs: 1,
      now: clock.now,
      peer: { kid: VIA_B, jwk: realJwk, sign: (payload) => new CompactSign(payload).setProtectedHeader({ alg: 'PS256', kid: VIA_B }).sign(realKey) },
    });
    clients.push(asB);
    const seq = lastSeq(A.dbPath);

    // Control: the §6 read for a B user, answered nested and signed by A; only B-domain authorizations.
    const answer = await asB.exchange({ method: 'retrieve', uri: `${R}/keys`, federated: true, onBehalfOf: 'bob@b.example' });
    assert.equal(typeof answer.proof, 'string');
    const released = answer.payload.resource as { uri: string; keys: Record<string, unknown>[]; authorizations: { authId: string }[] };
    assert.equal(released.uri, R);
    assert.deepEqual(released.keys.map((k) => k.uri), keys.map((k) => k.uri).reverse());
    assert.ok(released.keys.every((k) => k.userId === undefined && k.clientId === undefined));
    assert.deepEqual(released.authorizations.map((a) => a.authId), ['bob@b.example'], 'alice@a.example is not revealed');
    await asB.ping();

    const forbidden: Record<string, unknown>[] = [
      { method: 'create', uri: '/keys', count: 1 },
      { method: 'create', uri: '/keys', count: 1, federated: true, onBehalfOf: 'bob@b.example' },
      { method: 'create', uri: '/resources', federated: true, onBehalfOf: 'bob@b.example' },
      { method: 'retrieve', uri: keys[0]!.uri },
      { method: 'retrieve', uri: keys[0]!.uri, federated: true, onBehalfOf: 'alice@a.example' },
      { method: 'retrieve', uri: keys[0]!.uri, federated: true, onBehalfOf: 'dan@c.example' },
      { method: 'retrieve', uri: '/cmk', federated: true, onBehalfOf: 'bob@b.example' },
      { method: 'retrieve', uri: `kms://${B_AUTH}/keys/${randomUUID()}`, federated: true, onBehalfOf: 'bob@b.example' },
    ];
    for (const body of forbidden) {
      assert.equal(await statusOf(asB.request(body as { method: string; uri: string })), 403, JSON.stringify(body));
    }
    const atA = audit(A.dbPath, seq).filter((r) => r.status === 403);
    assert.equal(atA.length, forbidden.length, JSON.stringify(audit(A.dbPath, seq)));
    assert.ok(atA.every((r) => r.peer === VIA_B));
    assert.ok(!atA.some((r) => r.principal === 'alice@a.example'), 'a peer never acts as one of A’s users');
  });
});

// ---- A unreachable or hanging ----------------------------------------------------------------

describe('federation when A is down or hangs', () => {
  const clock = manualClock();
  let caA: string;
  let caB: string;
  const closers: (() => Promise<unknown>)[] = [];
  const sockets = new Set<Socket>();
  let hang: TcpServer | undefined;

  before(async () => {
    [caA, caB] = await Promise.all([caPem(A_AUTH, 'a.example'), caPem(B_AUTH, 'b.example')]);
  });

  after(async () => {
    for (const s of sockets) s.destroy();
    if (hang) await new Promise<void>((resolve) => hang!.close(() => resolve()));
    for (const close of closers.reverse()) await close();
  });

  test('A closed: an uncached read gets 502, a fresh copy still serves, none past the bound; B stays healthy', TEST, async (t) => {
    const A = await startTestKms({ authority: A_AUTH, domains: ['a.example'], now: clock.now, config: { peers: [peerEntry(B_AUTH, 'b.example', NOWHERE, caB)] } });
    let aClosed = false;
    closers.push(() => (aClosed ? Promise.resolve() : A.close()));
    const B = await startTestKms({ authority: B_AUTH, domains: ['b.example'], now: clock.now, config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)] } });
    closers.push(() => B.close());
    const alice = userOn(A, 'alice@a.example', caA, clock);
    const bob = userOn(B, 'bob@b.example', caB, clock);
    const [k1, k2] = await alice.createKeys(2);
    await alice.createResource({ authIds: ['bob@b.example'], keyUris: [k1!.uri] });
    await alice.createResource({ authIds: ['bob@b.example'], keyUris: [k2!.uri] });
    assert.equal((await bob.retrieveKey(k1!.uri)).jwk.k, k1!.jwk.k);

    await A.close();
    aClosed = true;
    // Within the staleness bound (default 30 s) the copy serves, A or not.
    assert.equal((await bob.retrieveKey(k1!.uri)).jwk.k, k1!.jwk.k);
    const started = performance.now();
    assert.equal(await statusOf(bob.retrieveKey(k2!.uri)), 502);
    t.diagnostic(`uncached read with A down: 502 after ${(performance.now() - started).toFixed(1)} ms`);
    const health = await fetch(`${B.url}/healthz`);
    assert.equal(health.status, 200);
    // Past the bound, never a grant from the copy.
    clock.advance(31_000);
    assert.equal(await statusOf(bob.retrieveKey(k1!.uri)), 502);
    const ex = exchanges(B, 'bob@b.example');
    assert.deepEqual(
      ex.map((r) => [r.uri, r.status]),
      [
        [k1!.uri, 200],
        [k2!.uri, 502],
        [k1!.uri, 502],
      ],
    );
    assert.equal((await fetch(`${B.url}/healthz`)).status, 200);
  });

  test('A hangs (accepts, never answers): 504 after federation.peerTimeout; B stays healthy', TEST, async (t) => {
    hang = createTcpServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => {});
    });
    await new Promise<void>((resolve) => hang!.listen(0, '127.0.0.1', resolve));
    const port = (hang.address() as { port: number }).port;
    const B = await startTestKms({
      authority: B_AUTH,
      domains: ['b.example'],
      now: clock.now,
      config: { peers: [peerEntry(A_AUTH, 'a.example', `http://127.0.0.1:${port}`, caA)], federation: { peerTimeout: 1 } },
    });
    closers.push(() => B.close());
    const bob = userOn(B, 'bob@b.example', caB, clock);
    const keyUri = `kms://${A_AUTH}/keys/${randomUUID()}`;
    const started = performance.now();
    assert.equal(await statusOf(bob.retrieveKey(keyUri)), 504);
    t.diagnostic(`read with A hanging: 504 after ${(performance.now() - started).toFixed(1)} ms (peerTimeout 1 s)`);
    assert.equal((await fetch(`${B.url}/healthz`)).status, 200);
    const ex = exchanges(B, 'bob@b.example');
    assert.deepEqual(ex.map((r) => [r.uri, r.status]), [[keyUri, 504]]);
  });
});

// ---- freshness: the staleness bound and the 1 s re-fetch rule --------------------------------

describe('federation copies and federation.maxStaleness', () => {
  const clock = manualClock();
  let A: TestKms;
  let B: TestKms;
  let caA: string;
  let caB: string;
  let alice: KmsClient;

  before(async () => {
    [caA, caB] = await Promise.all([caPem(A_AUTH, 'a.example'), caPem(B_AUTH, 'b.example')]);
    A = await startTestKms({ authority: A_AUTH, domains: ['a.example'], now: clock.now, config: { peers: [peerEntry(B_AUTH, 'b.example', NOWHERE, caB)] } });
    B = await startTestKms({
      authority: B_AUTH,
      domains: ['b.example'],
      now: clock.now,
      config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)], federation: { maxStaleness: 2 } },
    });
    alice = userOn(A, 'alice@a.example', caA, clock);
  });

  after(async () => {
    await B?.close();
    await A?.close();
  });

  test('A cannot reach B (no invalidation arrives): a deauthorized user is served from the copy until the bound, then refused (403); a refusal is not cached', TEST, async () => {
    const bob = userOn(B, 'bob@b.example', caB, clock);
    const [p1] = await alice.createKeys(1);
    const P = (await alice.createResource({ authIds: ['bob@b.example'], keyUris: [p1!.uri] })).resource.uri;
    assert.equal((await bob.retrieveKey(p1!.uri)).jwk.k, p1!.jwk.k);
    await alice.deauthorize(P, 'bob@b.example');

    // A's invalidation cannot reach B (its endpoint for B is NOWHERE): the copy serves within
    // maxStaleness, the backstop (§6 "within the bound in every case").
    clock.advance(1500);
    assert.equal((await bob.retrieveKey(p1!.uri)).jwk.k, p1!.jwk.k);
    assert.equal(onBehalfOf(A, 'bob@b.example').length, 1);

    clock.advance(600); // 2.1 s after the copy was made
    assert.equal(await statusOf(bob.retrieveKey(p1!.uri)), 403);
    assert.deepEqual(onBehalfOf(A, 'bob@b.example').map((r) => r.status), [200, 403]);
    // The refusal is not cached: the next read asks A again.
    assert.equal(await statusOf(bob.retrieveResourceKeys(P)), 403);
    assert.deepEqual(onBehalfOf(A, 'bob@b.example').map((r) => r.status), [200, 403, 403]);
    // The old copy stays (archive), past its bound.
    assert.ok(copies(B.dbPath).some((c) => c.resource_uri === P));
    // A tried to tell B and recorded the failed push.
    assert.ok(audit(A.dbPath).some((r) => r.principal === VIA_A && r.peer === VIA_B && r.method === 'update' && r.status >= 500));
  });

  test('a newly authorized user is served while the copy is fresh (re-fetch at most once a second per KRO)', TEST, async () => {
    const bob = userOn(B, 'bob@b.example', caB, clock);
    const bob2 = userOn(B, 'bob2@b.example', caB, clock);
    const carol = userOn(B, 'carol@b.example', caB, clock);
    const [q1] = await alice.createKeys(1);
    const Q = (await alice.createResource({ authIds: ['bob@b.example'], keyUris: [q1!.uri] })).resource.uri;
    assert.equal((await bob.retrieveKey(q1!.uri)).jwk.k, q1!.jwk.k);
    await alice.authorize(Q, ['bob2@b.example']);

    // The copy is fresh and lacks bob2: B re-fetches before refusing, and serves him.
    assert.equal((await bob2.retrieveKey(q1!.uri)).jwk.k, q1!.jwk.k);
    assert.deepEqual(onBehalfOf(A, 'bob2@b.example').map((r) => [r.uri, r.status]), [[q1!.uri, 200]]);

    // carol, in the same second: refused from the fresh copy without asking A again.
    assert.equal(await statusOf(carol.retrieveKey(q1!.uri)), 403);
    assert.equal(onBehalfOf(A, 'carol@b.example').length, 0);
    // A second later (the copy still fresh): B asks A once more, which refuses.
    clock.advance(1100);
    assert.equal(await statusOf(carol.retrieveKey(q1!.uri)), 403);
    assert.deepEqual(onBehalfOf(A, 'carol@b.example').map((r) => r.status), [403]);
    // Bob and bob2 are served from the copy throughout.
    assert.equal((await bob.retrieveKey(q1!.uri)).jwk.k, q1!.jwk.k);
    assert.equal((await bob2.retrieveKey(q1!.uri)).jwk.k, q1!.jwk.k);
    assert.equal(onBehalfOf(A, 'bob2@b.example').length, 1);
  });
});
