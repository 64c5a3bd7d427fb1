/**
 * What the federation tests (test/federation/*.test.ts) share: users on the real SDK, the audit and
 * copy tables read straight from a KMS's database file, and the pair of KMSs most of them run
 * against. Each test file starts its own KMSs, so a file runs alone.
 */
import assert from 'node:assert/strict';
import { type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, before } from 'node:test';
import Database from 'better-sqlite3';
import { CompactSign } from 'jose';
import { KmsClient, KmsError, type KeyRep } from '@openkms/client';
import type { Logger } from '@openkms/server';
import { kmsFolder, manualClock, startDevKms, type DevKms } from '@openkms/server/testing';
import { reservablePort } from './ports.js';

export const A_AUTH = 'kms.a.example';
export const B_AUTH = 'kms.b.example';
export const C_AUTH = 'kms.c.example';
export const VIA_B = `kms://${B_AUTH}`;
export const VIA_A = `kms://${A_AUTH}`;
export const TEST = { timeout: 30_000 };
/** An endpoint nobody listens on: where A cannot deliver invalidations, the staleness bound is the backstop. */
export const NOWHERE = 'http://127.0.0.1:9';
export const INVALIDATIONS_AT_B = `kms://${B_AUTH}/federation/invalidations`;

export type Clock = ReturnType<typeof manualClock>;

export async function caPem(authority: string, domain: string): Promise<string> {
  return readFileSync(join(await kmsFolder(authority, [domain]), 'ca.pem'), 'utf8');
}

export function peerEntry(authority: string, domain: string, endpoint: string, ca: string) {
  return { authority, domains: [domain], endpoint, trustAnchors: [ca] };
}

/** Every SDK client the tests made (`userOn`, or pushed by a test), closed by `closeClients`. */
export const clients: KmsClient[] = [];

/** A user's SDK on `kms`, with a fresh token for every request. */
export function userOn(kms: DevKms, user: string, ca: string, clock?: Clock): KmsClient {
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
export async function statusOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    if (err instanceof KmsError) return err.status;
    throw err;
  }
  assert.fail('expected a KMS error');
}

export interface AuditRow {
  seq: number;
  principal: string | null;
  client_id: string | null;
  method: string | null;
  uri: string | null;
  status: number;
  peer: string | null;
}

/** The audit table of a KMS, read from its database file (read-only, a second connection). */
export function audit(dbPath: string, afterSeq = 0): AuditRow[] {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT seq, principal, client_id, method, uri, status, peer FROM audit WHERE seq > ? ORDER BY seq').all(afterSeq) as AuditRow[];
  } finally {
    db.close();
  }
}

export function lastSeq(dbPath: string): number {
  const rows = audit(dbPath);
  return rows.length === 0 ? 0 : rows[rows.length - 1]!.seq;
}

/** Rows A recorded for a B user acting through B's peer channel. */
export function onBehalfOf(a: { dbPath: string }, user: string, via = VIA_B): AuditRow[] {
  return audit(a.dbPath).filter((r) => r.principal === user && r.peer === via);
}

/** Rows B recorded for its own exchanges with A (client_id "federation", peer kms://<A>). */
export function exchanges(b: { dbPath: string }, user: string, via = VIA_A): AuditRow[] {
  return audit(b.dbPath).filter((r) => r.principal === user && r.peer === via);
}

export function copies(dbPath: string): { resource_uri: string; authority: string; fetched_at: number }[] {
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

export async function wellKnownJwk(url: string): Promise<Record<string, unknown>> {
  const doc = (await (await fetch(`${url}/.well-known/kms`)).json()) as { rsaPublicKey: Record<string, unknown> };
  return doc.rsaPublicKey;
}

/** A free loopback port, so that A's peer entry can name B's endpoint before B starts. */
export const freePort = reservablePort;

/** Waits (real time, bounded) until `cond` holds; returns how long it took in ms. */
export async function waitFor(cond: () => boolean, what: string, ms = 8000): Promise<number> {
  const started = performance.now();
  while (!cond()) {
    if (performance.now() - started > ms) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return performance.now() - started;
}

/** Invalidations B accepted from A (its audit: `update …/federation/invalidations` by kms://<A>, 204). */
export function invalidationsAt(b: { dbPath: string }): number {
  return audit(b.dbPath).filter((r) => r.uri === INVALIDATIONS_AT_B && r.principal === VIA_A && r.status === 204).length;
}

export const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

const enc = new TextEncoder();

export function signJws(payload: Record<string, unknown>, key: KeyObject, kid: string): Promise<string> {
  return new CompactSign(enc.encode(JSON.stringify(payload))).setProtectedHeader({ alg: 'PS256', kid }).sign(key);
}

/** A keyRep as B serves it from a copy: A never reveals who created the key or from which client. */
export function assertReleased(key: KeyRep, expected: KeyRep, resourceUri: string): void {
  assert.equal(key.uri, expected.uri);
  assert.equal(key.jwk.k, expected.jwk.k);
  assert.equal(key.resourceUri, resourceUri);
  assert.equal((key as unknown as Record<string, unknown>).userId, undefined, 'no userId of A');
  assert.equal((key as unknown as Record<string, unknown>).clientId, undefined, 'no clientId of A');
}

/** Closes every SDK client `userOn` made; each test file runs it after its tests. */
export async function closeClients(): Promise<void> {
  await Promise.all(clients.map((c) => c.close()));
}

/** A and B, federated both ways, and Alice's KRO on A that authorizes Bob of B (steps 1–4). */
export interface FederatedPair {
  caA: string;
  caB: string;
  A: DevKms;
  B: DevKms;
  alice: KmsClient;
  bob: KmsClient;
  /** Alice's KRO, authorizing bob@b.example. */
  R: string;
  /** R's three keys as Alice reads them, oldest bind first, each bound at its own time. */
  keys: KeyRep[];
  message: string;
  /** `message` encrypted by Alice under keys[0]. */
  content: string;
}

/**
 * Starts A and B on `clock` before the describe's tests and gives them to `receive`; closes them
 * after. Returns the describe's closers (run newest first after its tests): a test that starts
 * another KMS pushes its close there.
 */
export function useFederatedPair(clock: Clock, receive: (pair: FederatedPair) => void): (() => Promise<unknown>)[] {
  const closers: (() => Promise<unknown>)[] = [];
  before(async () => {
    const [caA, caB] = await Promise.all([caPem(A_AUTH, 'a.example'), caPem(B_AUTH, 'b.example')]);
    // B's endpoint is known before B starts, so that A can push invalidations to it.
    const portB = await freePort();
    const A = await startDevKms({ authority: A_AUTH, domains: ['a.example'], now: clock.now, config: { peers: [peerEntry(B_AUTH, 'b.example', `http://127.0.0.1:${portB}`, caB)] } });
    closers.push(() => A.close());
    const B = await startDevKms({ authority: B_AUTH, domains: ['b.example'], now: clock.now, port: portB, config: { peers: [peerEntry(A_AUTH, 'a.example', A.url, caA)] } });
    closers.push(() => B.close());
    const alice = userOn(A, 'alice@a.example', caA, clock);
    const bob = userOn(B, 'bob@b.example', caB, clock);

    // Steps 1–4: Alice takes keys, encrypts the file with one, makes a KRO authorizing Bob with
    // that key bound; two more keys are bound later (distinct bindDates for the filters).
    const message = 'the shared file: quarterly numbers';
    const created = await alice.createKeys(3);
    const content = await alice.encrypt(created[0]!, message);
    const R = (await alice.createResource({ authIds: ['bob@b.example'], keyUris: [created[0]!.uri] })).resource.uri;
    clock.advance(10);
    await alice.bindKey(created[1]!.uri, R);
    clock.advance(10);
    await alice.bindKey(created[2]!.uri, R);
    // Alice's view, newest first, with the bindDates A gave them.
    const keys = (await alice.retrieveResourceKeys(R)).reverse();
    assert.deepEqual(keys.map((k) => k.uri), created.map((k) => k.uri));
    receive({ caA, caB, A, B, alice, bob, R, keys, message, content });
  });
  after(async () => {
    for (const close of closers.reverse()) await close();
  });
  return closers;
}
