/**
 * What the operation tests (test/operations/*.test.ts) share: the shapes they read, requests by
 * name, status checks that say what was sent, and the KMS most of them run against. Each test file
 * starts its own KMS, so a file runs alone and no family's data can change another's outcome.
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import type { KeyRep, ResourceRep } from '@openkms/protocol';
import { TestClient } from './client.js';
import { startDevKms, type manualClock, type DevKms } from '../../src/testing/harness.js';

export const AUTHORITY = 'kms.a.example';
const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
export const uriRe = (collection: string) => new RegExp(`^kms://kms\\.a\\.example/${collection}/${UUID}$`);
/** RFC 3339 UTC with millisecond precision (PROTOCOL.md §4). */
export const DATE_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
export const SECOND = 1000;
export const HOUR = 3600 * SECOND;
export const DAY = 24 * HOUR;
export const iso = (ms: number) => new Date(ms).toISOString();
export const idOf = (uri: string) => uri.slice(uri.lastIndexOf('/') + 1);
export const unknownUri = (collection: string) => `kms://${AUTHORITY}/${collection}/${randomUUID()}`;

export type Answer = { status: number; reason?: string; requestId?: unknown; _signed?: boolean; [member: string]: any };

export function expectStatus(answer: Answer, status: number, what = ''): void {
  assert.equal(answer.status, status, `${what ? what + ': ' : ''}expected ${status}, got ${answer.status} (${answer.reason ?? 'no reason'})`);
}

export async function send(client: TestClient, body: Record<string, unknown>): Promise<Answer> {
  return (await client.request(body)) as Answer;
}

export async function expectOk(client: TestClient, body: Record<string, unknown>, status = 200): Promise<Answer> {
  const answer = await send(client, body);
  expectStatus(answer, status, `${String(body.method)} ${String(body.uri)}`);
  return answer;
}

export async function connect(kms: DevKms, user: string, opts: { roles?: string[]; clientId?: string; ttlSeconds?: number } = {}): Promise<TestClient> {
  return TestClient.connect(kms.url, await kms.token(user, { roles: opts.roles, ttlSeconds: opts.ttlSeconds }), opts.clientId);
}

/** A fresh token and a fresh channel for an existing client (same clientId), after moving a clock. */
export async function refresh(kms: DevKms, client: TestClient, user: string): Promise<void> {
  client.bearer = await kms.token(user);
  expectStatus((await client.handshake()) as Answer, 201, 'handshake');
}

export const ping = { method: 'update', uri: '/ping' };

export async function newKeys(client: TestClient, count = 1): Promise<KeyRep[]> {
  return (await expectOk(client, { method: 'create', uri: '/keys', count }, 201)).keys as KeyRep[];
}

export async function newResource(client: TestClient, body: Record<string, unknown> = {}): Promise<ResourceRep> {
  return (await expectOk(client, { method: 'create', uri: '/resources', ...body }, 201)).resource as ResourceRep;
}

export const bind = (client: TestClient, keyUri: string, resourceUri: string) => send(client, { method: 'update', uri: keyUri, resourceUri });
export const getKey = (client: TestClient, keyUri: string) => send(client, { method: 'retrieve', uri: keyUri });
export const getResource = (client: TestClient, resourceUri: string) => send(client, { method: 'retrieve', uri: resourceUri });
export const resourceKeys = (client: TestClient, resourceUri: string, filter: Record<string, unknown> = {}) =>
  send(client, { method: 'retrieve', uri: `${resourceUri}/keys`, ...filter });
export const listAuthorizations = (client: TestClient, resourceUri: string, authId?: string) =>
  send(client, { method: 'retrieve', uri: `${resourceUri}/authorizations${authId === undefined ? '' : `?authId=${encodeURIComponent(authId)}`}` });
export const addAuthorizations = (client: TestClient, resourceUri: string, authIds: string[]) =>
  send(client, { method: 'create', uri: '/authorizations', resourceUri, authIds });

/** Reads one number from the KMS's database through a second, read-only connection. */
export function count(kms: DevKms, sql: string, ...args: unknown[]): number {
  const db = new Database(kms.dbPath, { readonly: true, fileMustExist: true });
  try {
    return Number((db.prepare(sql).get(...args) as { n: number }).n);
  } finally {
    db.close();
  }
}

export function assertKeyRep(key: KeyRep, user: string, clientId: string): void {
  assert.match(key.uri, uriRe('keys'));
  assert.deepEqual(Object.keys(key.jwk).sort(), ['k', 'kid', 'kty']);
  assert.equal(key.jwk.kty, 'oct');
  assert.equal(key.jwk.kid, idOf(key.uri), 'jwk.kid is the key uuid');
  assert.match(key.jwk.k, /^[A-Za-z0-9_-]+$/, 'k is base64url without padding');
  assert.equal(Buffer.from(key.jwk.k, 'base64url').length, 32, '256-bit key');
  assert.equal(key.userId, user);
  assert.equal(key.clientId, clientId);
  assert.match(key.createDate, DATE_RE);
  assert.match(key.expirationDate, DATE_RE);
}

// ---------------------------------------------------------------------------------------------
// The main KMS

/** The KMS a test file shares (its clock only moves by seconds) and four users connected to it. */
export interface MainKms {
  main: DevKms;
  alice: TestClient;
  bob: TestClient;
  carol: TestClient;
  dave: TestClient;
}

/**
 * Starts the file's shared KMS on `clock` before its tests and closes it after them; `receive`
 * gets the KMS and its users once they are up, so the tests can read them as plain variables.
 */
export function useMainKms(clock: ReturnType<typeof manualClock>, receive: (shared: MainKms) => void): void {
  let main: DevKms | undefined;
  before(async () => {
    main = await startDevKms({ now: clock.now });
    const [alice, bob, carol, dave] = await Promise.all([
      connect(main, 'alice@a.example'),
      connect(main, 'bob@a.example'),
      connect(main, 'carol@a.example'),
      connect(main, 'dave@a.example'),
    ]);
    receive({ main, alice, bob, carol, dave });
  });
  after(async () => {
    await main?.close();
  });
}
