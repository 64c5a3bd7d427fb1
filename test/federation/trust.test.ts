/**
 * Who is trusted (PROTOCOL.md §6 "Peers"): a KMS A does not list, impostors of B (another CA, or
 * the real certificate without its key), a B token shown to A, B authenticating A, and what a peer
 * channel may do at all.
 *
 * Between REAL KMSs: each is the real server on loopback (real sockets, real SQLite files, real keys
 * and certificates), and every user is the real SDK; each case checks what the user sees at B and
 * what A and B recorded (their audit tables, read straight from the database files).
 */
import assert from 'node:assert/strict';
import { createPrivateKey, generateKeyPairSync, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { CompactSign } from 'jose';
import { KmsClient, KmsError, type KeyRep } from '@openkms/client';
import { devIssuerOf, initKmsDir, loadConfig, parseConfig, startKms, type RunningKms } from '@openkms/server';
import { manualClock, startDevKms, type DevKms } from '@openkms/server/testing';
// Not part of the package's public API; the impostor-with-the-real-certificate case needs them.
import { PeerVerifier } from '../../packages/server/dist/src/federation/peer-proof.js';
import { PeerRegistry } from '../../packages/server/dist/src/federation/peers.js';
import {
  A_AUTH,
  audit,
  B_AUTH,
  C_AUTH,
  caPem,
  clients,
  closeClients,
  copies,
  exchanges,
  lastSeq,
  NOWHERE,
  onBehalfOf,
  peerEntry,
  signJws,
  silent,
  statusOf,
  TEST,
  useFederatedPair,
  userOn,
  VIA_B,
  wellKnownJwk,
} from '../support/federation.js';

after(closeClients);

/** B's handshake payload to A as PeerVerifier reads it: B's static JWK as credential, aud A, iat now. */
function handshakeToA(jwk: Record<string, unknown>, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    requestId: randomUUID(),
    method: 'create',
    uri: `kms://${A_AUTH}/ecdhe`,
    jwk: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' }),
    client: { clientId: VIA_B, credential: { jwk } },
    aud: `kms://${A_AUTH}`,
    iat: Math.floor(Date.now() / 1000),
    ...over,
  };
}

describe('federation between kms.a.example and kms.b.example', () => {
  const clock = manualClock();
  let caA: string;
  let caB: string;
  let A: DevKms;
  let B: DevKms;
  let R: string;
  let keys: KeyRep[];
  const closers = useFederatedPair(clock, (pair) => ({ caA, caB, A, B, R, keys } = pair));

  test('a KMS that A does not list (kms.c.example): its user gets 502, A records the refusal', TEST, async (t) => {
    const C = await startDevKms({ authority: C_AUTH, domains: ['c.example'], now: clock.now, config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)] } });
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
      const verifier = new PeerVerifier(A_AUTH, registry, A.store, Date.now);
      const handshake = (over: Record<string, unknown> = {}) => handshakeToA(realJwk, over);
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

  // Removing a peer is how trust is revoked (PROTOCOL.md §6): SIGHUP replaces the registry the
  // verifier reads, so a channel B opened before is refused at its next request.
  test('a peer removed from the configuration: its open channel and a new handshake are refused', TEST, async () => {
    const realJwk = await wellKnownJwk(B.url);
    const realKey = createPrivateKey(readFileSync(join(B.dir, 'static-key.pem')));
    const registry = new PeerRegistry({ authority: A_AUTH, domains: ['a.example'], peers: [peerEntry(B_AUTH, 'b.example', NOWHERE, caB)] });
    const verifier = new PeerVerifier(A_AUTH, registry, A.store, Date.now);
    const onChannel = () => signJws({ requestId: randomUUID(), method: 'update', uri: '/ping', client: { clientId: VIA_B }, aud: `kms://${A_AUTH}`, iat: Math.floor(Date.now() / 1000) }, realKey, VIA_B);
    const forbidden = (err: unknown) => err instanceof KmsError && err.status === 403;

    // Control: while B is listed, its handshake and a later signed request on that channel pass.
    await verifier.verifyHandshake(await signJws(handshakeToA(realJwk), realKey, VIA_B), 3_600_000);
    assert.equal((await verifier.verify(await onChannel(), B_AUTH)).uri, '/ping');

    registry.replace({ authority: A_AUTH, domains: ['a.example'], peers: [] });
    await assert.rejects(verifier.verify(await onChannel(), B_AUTH), forbidden);
    await assert.rejects(verifier.verifyHandshake(await signJws(handshakeToA(realJwk), realKey, VIA_B), 3_600_000), forbidden);
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
    const C = await startDevKms({ authority: C_AUTH, domains: ['c.example'], now: clock.now });
    closers.push(() => C.close());
    // B' lists kms.a.example at C's endpoint (C's own CA trusted): kmsCluster is not kms://kms.a.example.
    const wrongEndpoint = await startDevKms({ authority: B_AUTH, domains: ['b.example'], now: clock.now, config: { peers: [peerEntry(A_AUTH, 'a.example', C.url, caC)] } });
    closers.push(() => wrongEndpoint.close());
    // B'' lists A at its real endpoint, but with C's CA as the only anchor: A's certificate does not chain.
    const wrongAnchor = await startDevKms({ authority: B_AUTH, domains: ['b.example'], now: clock.now, config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caC)] } });
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

    // For its user, a malformed body is a 400 naming the field (never a 500), and a KRO of another
    // KMS — a third one, or the peer's own — is not A's to act on: federation is one hop (404).
    const forBob = { federated: true, onBehalfOf: 'bob@b.example' };
    for (const authIds of [5, {}, 'bob@b.example']) {
      for (const body of [
        { method: 'create', uri: '/authorizations', resourceUri: R, authIds, ...forBob },
        { method: 'delete', uri: '/authorizations', resourceUri: R, authIds, ...forBob },
      ]) {
        const refused = await asB.request(body).then(() => undefined, (err: unknown) => err);
        assert.ok(refused instanceof KmsError && refused.status === 400 && refused.code === 'INVALID_FIELD' && /authIds/.test(refused.reason), `${JSON.stringify(body)}: ${String(refused)}`);
      }
    }
    for (const elsewhere of [`kms://kms.c.example/resources/${randomUUID()}`, `kms://${B_AUTH}/resources/${randomUUID()}`]) {
      assert.equal(await statusOf(asB.request({ method: 'create', uri: '/authorizations', resourceUri: elsewhere, authIds: ['bob@b.example'], ...forBob })), 404, elsewhere);
    }
  });
});
