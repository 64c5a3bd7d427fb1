/**
 * The metrics an operator watches (docs/metrics.md) move when their event happens, on real parts:
 * a SQLite database locked by another connection (storage timeouts and an audit write that fails),
 * a PostgreSQL that goes away behind a proxy (storage unavailable), a closed store (other), a peer
 * KMS that is down, an identity provider whose JWKS cannot be fetched, sweeps that succeed and one
 * that fails, and the certificate gauge against the certificate's own notAfter.
 */
import assert from 'node:assert/strict';
import { X509Certificate, generateKeyPairSync, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { SignJWT } from 'jose';
import pg from 'pg';
import { KmsClient } from '@openkms/client';
import { manualClock, startDevKms } from '@openkms/server/testing';
import { Metrics } from '../packages/server/dist/src/metrics.js';
import { peerOutcomeOf } from '../packages/server/dist/src/federation/peer-channels.js';
import { withDeadline } from '../packages/server/dist/src/store/deadline.js';
import { instrumented, methodsOf } from '../packages/server/dist/src/store/instrumented.js';
import { PostgresStore } from '../packages/server/dist/src/store/postgres.js';
import { SqliteStore } from '../packages/server/dist/src/store/sqlite.js';
import { KmsError } from '@openkms/protocol';
import { A_AUTH, B_AUTH, NOWHERE, caPem, clients, closeClients, peerEntry, statusOf, userOn } from './support/federation.js';

const TEST = { timeout: 60_000 };
const PG = process.env.KMS_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
after(closeClients);

/** Every series of `name` in Prometheus text: its labels and its value. */
function* series(text: string, name: string): Generator<{ labels: Record<string, string>; value: number }> {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1]!, l[2]!]));
    yield { labels, value: Number(m[3]) };
  }
}

const has = (labels: Record<string, string>, wanted: Record<string, string>) => Object.entries(wanted).every(([k, v]) => labels[k] === v);

/** The value of the first series of `name` whose labels include `labels`; undefined if none. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const s of series(text, name)) if (has(s.labels, labels)) return s.value;
  return undefined;
}

/** The sum of every series of `name` whose labels include `labels`. */
function total(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const s of series(text, name)) if (has(s.labels, labels)) sum += s.value;
  return sum;
}

const scrape = async (url: string) => (await fetch(`${url}/metrics`)).text();

describe('storage', () => {
  test('every call is timed by method; a database locked by another connection is a timeout, and the audit record it kept from being written a write failure', TEST, async () => {
    const ca = await caPem(A_AUTH, 'a.example');
    const A = await startDevKms({ config: { storage: { timeoutSeconds: 1 } } });
    try {
      const alice = userOn(A, 'alice@a.example', ca);
      await alice.createKeys(1);
      let text = await scrape(A.url);
      assert.ok(sample(text, 'kms_storage_call_duration_seconds_count', { method: 'insertKeys' })! >= 1, 'insertKeys was timed');
      assert.equal(sample(text, 'kms_storage_call_duration_seconds_count', { method: 'bindKey' }), 0, 'a method not called yet has its series, at zero');
      assert.equal(total(text, 'kms_storage_errors_total'), 0);
      assert.equal(sample(text, 'kms_audit_write_failures_total'), 0);

      const other = new Database(A.dbPath);
      other.exec('BEGIN IMMEDIATE');
      try {
        assert.equal(await statusOf(alice.createKeys(1)), 503);
        // The request's one deadline ran out in its write; the group-committed audit append that
        // its record waited for has a deadline of its own and times out a moment after the 503,
        // while the lock is still held.
        const until = Date.now() + 10_000;
        for (;;) {
          // SQLite waits for a lock synchronously, so the server may drop an idle connection meanwhile.
          text = await scrape(A.url).catch(() => '');
          if (sample(text, 'kms_storage_errors_total', { method: 'appendAudit', kind: 'timeout' })! >= 1 || Date.now() > until) break;
          await new Promise((r) => setTimeout(r, 100));
        }
      } finally {
        other.exec('ROLLBACK');
        other.close();
      }
      assert.ok(total(text, 'kms_storage_errors_total', { kind: 'timeout' }) >= 2, 'the write and the audit append timed out');
      assert.ok(sample(text, 'kms_storage_errors_total', { method: 'appendAudit', kind: 'timeout' })! >= 1, text.split('\n').filter((l) => /^kms_(storage_errors_total|audit_write|storage_call_duration_seconds_count.method=.appendAudit|requests_total)/.test(l) && !l.endsWith(' 0')).join('\n'));
      assert.equal(total(text, 'kms_storage_errors_total', { kind: 'unavailable' }), 0);
      assert.ok(sample(text, 'kms_audit_write_failures_total')! >= 1, 'the audit write failure is counted');
      // Storage is back: calls succeed again and the counters stay where they are.
      await alice.createKeys(1);
    } finally {
      await A.close();
    }
  });

  test('a PostgreSQL that goes away is unavailable; a call into a closed store is other', TEST, async () => {
    const schema = `metrics_${randomUUID().replaceAll('-', '')}`;
    const target = new URL(PG);
    const sockets = new Set<Socket>();
    const proxy = createServer((inbound) => {
      const outbound = createConnection(Number(target.port || 5432), target.hostname);
      for (const s of [inbound, outbound]) {
        sockets.add(s);
        s.on('error', () => undefined).on('close', () => sockets.delete(s));
      }
      inbound.pipe(outbound).pipe(inbound);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const via = new URL(PG);
    via.port = String((proxy.address() as AddressInfo).port);
    via.searchParams.set('schema', schema);
    const metrics = new Metrics();
    const raw = await PostgresStore.open(via.toString(), { connectionTimeoutMillis: 2000, statementTimeoutMillis: 2000 });
    const bounded = withDeadline(raw, 2000);
    metrics.storageMethods(methodsOf(bounded));
    const store = instrumented(bounded, metrics.storageCall);
    const dir = mkdtempSync(join(tmpdir(), 'kms-metrics-'));
    try {
      await store.ping();
      await new Promise<void>((resolve) => {
        proxy.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      await assert.rejects(store.ping(), (err: unknown) => err instanceof KmsError && err.code === 'STORAGE_UNAVAILABLE');
      let text = await metrics.registry.metrics();
      assert.equal(sample(text, 'kms_storage_errors_total', { method: 'ping', kind: 'unavailable' }), 1);
      assert.equal(sample(text, 'kms_storage_call_duration_seconds_count', { method: 'ping' }), 2);

      const closed = new SqliteStore(join(dir, 'kms.db'));
      await closed.close();
      const measured = instrumented(closed, metrics.storageCall);
      await assert.rejects(measured.getKey('k'));
      text = await metrics.registry.metrics();
      assert.equal(sample(text, 'kms_storage_errors_total', { method: 'getKey', kind: 'other' }), 1);
      assert.equal(measured.kind, 'sqlite', 'what is not a method passes through');
    } finally {
      await store.close().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
      const admin = new pg.Client({ connectionString: PG });
      await admin.connect();
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await admin.end();
    }
  });

  test('the measured methods are the store\'s own, close and Object\'s excepted', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kms-metrics-'));
    const store = new SqliteStore(join(dir, 'kms.db'));
    try {
      const methods = methodsOf(withDeadline(store, 1000));
      for (const m of ['insertKeys', 'getKey', 'appendAudit', 'sweep', 'ping']) assert.ok(methods.includes(m), m);
      for (const m of ['close', 'constructor', 'toString', 'hasOwnProperty']) assert.ok(!methods.includes(m), m);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('federation', () => {
  test('a call to a peer that is down counts as unreachable, by peer, with its duration', TEST, async () => {
    const [caA, caB] = await Promise.all([caPem(A_AUTH, 'a.example'), caPem(B_AUTH, 'b.example')]);
    const A = await startDevKms({ config: { peers: [peerEntry(B_AUTH, 'b.example', NOWHERE, caB)] } });
    try {
      const alice = userOn(A, 'alice@a.example', caA);
      const [key] = await alice.createKeys(1);
      const atB = key!.uri.replace(A_AUTH, B_AUTH);
      assert.equal(await statusOf(alice.retrieveKey(atB)), 502);
      const text = await scrape(A.url);
      assert.equal(sample(text, 'kms_federation_calls_total', { peer: B_AUTH, outcome: 'unreachable' }), 1);
      assert.equal(sample(text, 'kms_federation_call_duration_seconds_count', { peer: B_AUTH }), 1);
      assert.equal(total(text, 'kms_federation_calls_total', { outcome: 'ok' }), 0);
    } finally {
      await A.close();
    }
  });

  test('a peer that answers counts as ok, one that refuses as its status class', TEST, async () => {
    const [caA, caB] = await Promise.all([caPem(A_AUTH, 'a.example'), caPem(B_AUTH, 'b.example')]);
    const A = await startDevKms({ authority: A_AUTH, domains: ['a.example'], config: { peers: [peerEntry(B_AUTH, 'b.example', NOWHERE, caB)] } });
    try {
      const B = await startDevKms({ authority: B_AUTH, domains: ['b.example'], config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)] } });
      try {
        const alice = userOn(A, 'alice@a.example', caA);
        const bob = userOn(B, 'bob@b.example', caB);
        const [shared, kept] = await alice.createKeys(2);
        await alice.createResource({ authIds: ['bob@b.example'], keyUris: [shared!.uri] });
        await alice.createResource({ keyUris: [kept!.uri] });
        assert.equal((await bob.retrieveKey(shared!.uri)).jwk.k, shared!.jwk.k);
        assert.equal(await statusOf(bob.retrieveKey(kept!.uri)), 403);
        const text = await scrape(B.url);
        assert.ok(sample(text, 'kms_federation_calls_total', { peer: A_AUTH, outcome: 'ok' })! >= 1, 'the granted read');
        assert.equal(sample(text, 'kms_federation_calls_total', { peer: A_AUTH, outcome: '4xx' }), 1, 'the refused read');
        assert.equal(total(text, 'kms_federation_calls_total', { outcome: 'unreachable' }), 0);
      } finally {
        await B.close();
      }
    } finally {
      await A.close();
    }
  });

  test('outcomes come from the error code, a closed set', () => {
    const cases: [unknown, string][] = [
      [new KmsError('KMS_UNREACHABLE', 'x'), 'unreachable'],
      [new KmsError('CLIENT_CLOSED', 'x'), 'unreachable'],
      [new KmsError('KMS_TIMEOUT', 'x'), 'timeout'],
      [new KmsError('CERTIFICATE_REFUSED', 'x'), 'invalid'],
      [new KmsError('ANSWER_INVALID', 'x'), 'invalid'],
      [new KmsError('NOT_AUTHORIZED', 'x'), '4xx'],
      [new KmsError('STORAGE_UNAVAILABLE', 'x'), '5xx'],
      [new TypeError('x'), 'error'],
    ];
    for (const [err, outcome] of cases) assert.equal(peerOutcomeOf(err), outcome, String(err));
  });
});

describe('identity provider', () => {
  test('a JWKS that cannot be fetched counts as a jwks failure; the token is refused 401', TEST, async () => {
    const issuer = 'https://idp.a.example';
    const ca = await caPem(A_AUTH, 'a.example');
    const A = await startDevKms({ config: { identity: { issuer, jwksUri: `${NOWHERE}/jwks`, audience: `kms://${A_AUTH}` } } });
    try {
      const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
      const jwt = await new SignJWT({ sub: 'alice@a.example' })
        .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
        .setIssuer(issuer)
        .setAudience(`kms://${A_AUTH}`)
        .setExpirationTime('5m')
        .sign(privateKey);
      const client = new KmsClient({ url: A.url, authority: A_AUTH, trustAnchors: [ca], token: () => jwt, debounceMs: 1 });
      clients.push(client);
      assert.equal(await statusOf(client.createKeys(1)), 401);
      const text = await scrape(A.url);
      assert.equal(sample(text, 'kms_identity_provider_failures_total', { kind: 'jwks' }), 1);
      assert.equal(sample(text, 'kms_identity_provider_failures_total', { kind: 'introspection' }), 0);
    } finally {
      await A.close();
    }
  });
});

describe('identity provider: discovery and introspection', () => {
  test('an IdP whose discovery document and introspection endpoint cannot be reached counts each by its kind', TEST, async () => {
    const issuer = NOWHERE;
    const ca = await caPem(A_AUTH, 'a.example');
    const A = await startDevKms({
      config: { identity: { issuer, discovery: true, audience: `kms://${A_AUTH}`, introspection: { endpoint: `${NOWHERE}/introspect`, clientId: 'kms', clientSecret: 'not-a-real-secret' } } },
    });
    try {
      const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
      const jwt = await new SignJWT({ sub: 'alice@a.example' }).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).setIssuer(issuer).setAudience(`kms://${A_AUTH}`).setExpirationTime('5m').sign(privateKey);
      for (const token of [jwt, 'an-opaque-token-for-introspection']) {
        const client = new KmsClient({ url: A.url, authority: A_AUTH, trustAnchors: [ca], token: () => token, debounceMs: 1 });
        clients.push(client);
        assert.equal(await statusOf(client.createKeys(1)), 401);
      }
      const text = await scrape(A.url);
      assert.equal(sample(text, 'kms_identity_provider_failures_total', { kind: 'discovery' }), 1);
      assert.equal(sample(text, 'kms_identity_provider_failures_total', { kind: 'introspection' }), 1);
      assert.equal(sample(text, 'kms_identity_provider_failures_total', { kind: 'jwks' }), 0);
    } finally {
      await A.close();
    }
  });
});

describe('sweeper and certificates', () => {
  test('sweeps count by outcome, what they destroyed by kind, the last success time; the certificate gauge is notAfter − now', TEST, async () => {
    const clock = manualClock();
    const ca = await caPem(A_AUTH, 'a.example');
    const A = await startDevKms({ now: clock.now });
    let closed = false;
    try {
      const alice = userOn(A, 'alice@a.example', ca, clock);
      await alice.createKeys(1);
      await A.kms.sweep();
      let text = await scrape(A.url);
      assert.equal(sample(text, 'kms_sweeper_runs_total', { outcome: 'ok' }), 1);
      assert.equal(sample(text, 'kms_sweeper_last_success_timestamp_seconds'), clock.now() / 1000);
      assert.equal(sample(text, 'kms_sweeper_destroyed_total', { kind: 'channel' }), 0);

      const notAfter = Date.parse(new X509Certificate(readFileSync(join(A.dir, 'static-cert.pem'))).validTo);
      assert.ok(Math.abs(sample(text, 'kms_certificate_expires_in_seconds', { certificate: 'static' })! - (notAfter - clock.now()) / 1000) < 1e-6);
      assert.equal(sample(text, 'kms_certificate_expires_in_seconds', { certificate: 'tls' }), undefined, 'no TLS, no TLS gauge');

      // Past every channel's lifetime (and the unbound key's grace): the sweep destroys them.
      clock.advance(2 * 86_400_000);
      await A.kms.sweep();
      text = await scrape(A.url);
      assert.equal(sample(text, 'kms_sweeper_runs_total', { outcome: 'ok' }), 2);
      assert.ok(sample(text, 'kms_sweeper_destroyed_total', { kind: 'channel' })! >= 1, 'the expired channel was counted');
      assert.equal(sample(text, 'kms_sweeper_last_success_timestamp_seconds'), clock.now() / 1000);
      assert.ok(Math.abs(sample(text, 'kms_certificate_expires_in_seconds', { certificate: 'static' })! - (notAfter - clock.now()) / 1000) < 1e-6, 'the gauge follows the clock');

      const succeededAt = clock.now();
      clock.advance(1000);
      await A.close();
      closed = true;
      await assert.rejects(A.kms.sweep());
      text = await A.metrics.registry.metrics();
      assert.equal(sample(text, 'kms_sweeper_runs_total', { outcome: 'failed' }), 1);
      assert.equal(sample(text, 'kms_sweeper_last_success_timestamp_seconds'), succeededAt / 1000, 'a failed sweep leaves the last success');
    } finally {
      if (!closed) await A.close();
    }
  });
});

describe('gauges of the parts', () => {
  test('a part registers a gauge read at each scrape; a name outside kms_… is refused', async () => {
    const metrics = new Metrics();
    let leading = false;
    metrics.gauge('kms_test_leader', 'whether this node leads', () => leading);
    assert.equal(sample(await metrics.registry.metrics(), 'kms_test_leader'), 0);
    leading = true;
    assert.equal(sample(await metrics.registry.metrics(), 'kms_test_leader'), 1);
    assert.throws(() => metrics.gauge('leader', 'x', () => 1), RangeError);
  });
});
