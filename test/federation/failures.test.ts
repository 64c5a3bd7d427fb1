/**
 * A peer down or hanging: B answers 502 or 504 in bounded time, serves what is fresh in its
 * copies, and stays healthy.
 *
 * Between REAL KMSs: each is the real server on loopback (real sockets, real SQLite files, real keys
 * and certificates), and every user is the real SDK; each case checks what the user sees at B and
 * what A and B recorded (their audit tables, read straight from the database files).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { KmsError } from '@openkms/client';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { after, before, describe, test } from 'node:test';
import { manualClock, startDevKms } from '@openkms/server/testing';
import { A_AUTH, B_AUTH, caPem, closeClients, exchanges, NOWHERE, peerEntry, statusOf, TEST, userOn, waitFor } from '../support/federation.js';

after(closeClients);

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
    const A = await startDevKms({ authority: A_AUTH, domains: ['a.example'], now: clock.now, config: { peers: [peerEntry(B_AUTH, 'b.example', NOWHERE, caB)] } });
    let aClosed = false;
    closers.push(() => (aClosed ? Promise.resolve() : A.close()));
    const B = await startDevKms({ authority: B_AUTH, domains: ['b.example'], now: clock.now, config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)] } });
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
    const refused = await bob.retrieveKey(k2!.uri).then(() => undefined, (err: unknown) => err);
    assert.ok(refused instanceof KmsError && refused.status === 502 && refused.code === 'PEER_FAILED', String(refused));
    t.diagnostic(`uncached read with A down: 502 after ${(performance.now() - started).toFixed(1)} ms`);
    // Bob learns that A failed, not where A lives or how the connection failed.
    assert.equal(refused.reason, `kms://${A_AUTH} failed: unreachable`);
    assert.ok(B.logs.some((line) => line.includes('federation: peer failed') && line.includes('ECONNREFUSED')), 'the operator finds the detail in the log');
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
    const B = await startDevKms({
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
    // The user's deadline and the channel's own timeout are the same second: the exchange may be
    // audited just after Bob's answer.
    await waitFor(() => exchanges(B, 'bob@b.example').length > 0, 'the audited exchange with A', 3000);
    const ex = exchanges(B, 'bob@b.example');
    assert.deepEqual(ex.map((r) => [r.uri, r.status]), [[keyUri, 504]]);
  });
});
