/**
 * What the stores decide, written once: both backends read the rows a decision needs inside their
 * own transaction (under lock where requests interleave), call these pure functions and write
 * what they return. So SQLite and PostgreSQL accept and refuse exactly the same inputs, and the
 * rules are unit-tested without a database (test/store/rules.test.ts). Atomicity stays with each
 * store: nothing here reads or writes.
 */
import { textProblem } from '@openkms/protocol';
import { CHANGE_RETENTION_MS, INVALIDATION_RETENTION_MS, MAX_KEPT_CHANGES, MAX_KRO_VISITS, MAX_PUSH_OUTBOX_IDS } from '../limits.js';
import type { AnswerClaim, AnswerClaimOutcome, AuditHead, AuditRow, AuthorizationRow, BindOutcome, ChannelRow, CmkRow, CopyRow, KeyBind, KeyFilter, KeyRow, NodeRow, PeerRequest, PeerRequestOutcome, PushRow, PutCopyOutcome, RememberedAnswer, ResourceRow } from '../model.js';

// ---- Binding keys (Store.bindKey, Store.createResource) ----

/** The rows a bind decision reads, as found in the transaction. */
export interface BindState {
  /** Whether the resource the keys go to still exists (a sweep may have destroyed it meanwhile). */
  resource: boolean;
  /** Those of the named keys that exist, by id. */
  keys: ReadonlyMap<string, KeyRow>;
}

/**
 * Whether `binds` may all be bound into one resource: 'bound', or the first refusal in their
 * order ('missing' first if the resource is gone). Per key: missing, then not-owner, then
 * already-bound, then expired. Ownership comes
 * before the bound state so that nobody but the creator learns whether a key is bound; a key
 * named twice is already bound the second time.
 */
export function bindOutcome(binds: readonly KeyBind[], state: BindState): BindOutcome {
  binds.forEach(checkKeyBind);
  if (!state.resource) return 'missing';
  const named = new Set<string>();
  for (const bind of binds) {
    const key = state.keys.get(bind.id);
    if (!key) return 'missing';
    if (key.userId !== bind.userId || key.clientId !== bind.clientId) return 'not-owner';
    if (key.resourceId !== null || named.has(bind.id)) return 'already-bound';
    if (key.expiresAt <= bind.now) return 'expired';
    named.add(bind.id);
  }
  return 'bound';
}

/** The columns one accepted bind writes on its key's row. */
export interface BindWrite {
  id: string;
  resourceId: string;
  bindDate: number;
  bindSeq: number;
  expiresAt: number;
}

/**
 * What accepted binds write. A store reserves `binds.length` bind sequence numbers at once (the
 * counter's new value is `lastSeq`) and the binds take them in their order, so that of two keys
 * bound by one request the one named later counts as bound later.
 */
export function bindWrites(binds: readonly KeyBind[], resourceId: string, lastSeq: number): BindWrite[] {
  const first = lastSeq - binds.length + 1;
  return binds.map((b, i) => ({ id: b.id, resourceId, bindDate: b.bindDate, bindSeq: first + i, expiresAt: b.expiresAt }));
}

/**
 * Thrown inside a store's transaction to roll back what it wrote (the resource a create
 * inserted) and answer a refused bind's outcome instead.
 */
export class BindRefused extends Error {
  constructor(readonly outcome: Exclude<BindOutcome, 'bound'>) {
    super(`bind refused: ${outcome}`);
  }
}

// ---- Adding authorizations (Store.addAuthorizations) ----

/** A resource's authorizations as found in the transaction, before an add. */
export interface AuthorizationState {
  /** How many authorizations the resource holds. */
  count: number;
  /** Those of its authorizations whose authId is among the ones being added, by authId. */
  byAuthId: ReadonlyMap<string, AuthorizationRow>;
}

/** What an add answers (one row per row asked for, in order) and what it writes. */
export interface AuthorizationPlan {
  answer: AuthorizationRow[];
  inserts: AuthorizationRow[];
}

/** The non-null authIds among `rows`, once each: those whose rows an add must read first. */
export function authIdsOf(rows: readonly AuthorizationRow[]): string[] {
  return [...new Set(rows.flatMap((r) => (r.authId === null ? [] : [r.authId])))];
}

/**
 * Plans an add of authorizations to `resourceId`: a row whose authId the resource already holds
 * (or that an earlier row of the same add brings) is answered by that row and not written
 * again; anonymous rows (authId null) are never merged. When the rows to write would take the
 * resource over `limit`, nothing is written: 'over-limit'.
 */
export function planAuthorizations(
  resourceId: string,
  rows: readonly AuthorizationRow[],
  state: AuthorizationState,
  limit: number,
): AuthorizationPlan | 'over-limit' {
  checkCount('limit', limit);
  rows.forEach(checkAuthorizationRow);
  const held = new Map(state.byAuthId);
  const inserts: AuthorizationRow[] = [];
  const answer = rows.map((asked) => {
    const there = asked.authId === null ? undefined : held.get(asked.authId);
    if (there) return there;
    const row = { ...asked, resourceId };
    inserts.push(row);
    if (row.authId !== null) held.set(row.authId, row);
    return row;
  });
  return state.count + inserts.length > limit ? 'over-limit' : { answer, inserts };
}

// ---- Sweeping (Store.sweep) ----

/** Up to which instant (inclusive: expiresAt <= cutoff) a sweep destroys each kind of row. */
export interface SweepCutoffs {
  /** Resources whose TTL ended, with their keys and authorizations. */
  resources: number;
  /** Unbound keys, kept `unboundGraceMs` past their expiry (their creator may still read them). */
  unboundKeys: number;
  channels: number;
  /** Remembered peer requests (and their counts) whose window ended. */
  peerRequests: number;
}

export function sweepCutoffs(now: number, unboundGraceMs: number): SweepCutoffs {
  checkInstant('now', now);
  checkCount('unboundGraceMs', unboundGraceMs);
  return { resources: now, unboundKeys: now - unboundGraceMs, channels: now, peerRequests: now };
}

/**
 * What a sweep keeps of the change feed and of federation invalidations: entries are dropped once
 * older than their retention on the wall clock (`wallNow`: the feed is the processes' own
 * mechanism, not protocol time), and feed entries beyond the newest MAX_KEPT_CHANGES.
 */
export function feedCutoffs(wallNow: number, lastChange: number): { changesAt: number; changesSeq: number; invalidationsAt: number } {
  checkInstant('wallNow', wallNow);
  return { changesAt: wallNow - CHANGE_RETENTION_MS, changesSeq: lastChange - MAX_KEPT_CHANGES, invalidationsAt: wallNow - INVALIDATION_RETENTION_MS };
}

// ---- The change feed (Store.changesAfter) and federation invalidations (Store.putCopy) ----

/** A read of the feed: after a seq (0: from the start) and how many at most (1 or more). */
export function checkChangesRead(afterSeq: number, limit: number): void {
  checkCount('afterSeq', afterSeq);
  checkCount('limit', limit);
  if (limit < 1) throw new RangeError(`limit must be at least 1, got ${limit}`);
}

/**
 * A copy fetched from mark `fetchStartedAt` (Store.invalidationMark when the fetch began) is
 * refused when the KRO's last invalidation, on any node, came after that mark: the answer it holds
 * may predate the change the invalidation announced.
 */
export function putCopyOutcome(lastInvalidation: number | undefined, fetchStartedAt: number): PutCopyOutcome {
  checkCount('fetchStartedAt', fetchStartedAt);
  return lastInvalidation !== undefined && lastInvalidation > fetchStartedAt ? 'invalidated' : 'stored';
}

// ---- Extending the audit chain (Store.appendAudit) ----

/**
 * Refuses a batch that does not follow the head it was built on, record after record: the store
 * writes nothing then. Under the head lock this cannot happen; the check keeps a chain that would
 * not verify from ever being written.
 */
export function checkAuditLink(head: AuditHead, rows: readonly AuditRow[]): void {
  let prev = head;
  for (const row of rows) {
    checkAuditRow(row);
    if (row.seq !== prev.seq + 1 || row.prevHash !== prev.hash) {
      throw new RangeError(`audit record ${row.seq} does not follow record ${prev.seq} (the head it must extend)`);
    }
    prev = row;
  }
}

// ---- The peers' replay window (Store.acceptPeerRequest) ----

/** Width of the time slices a peer's accepted requests are counted in. */
export const PEER_REQUEST_SLICE_MS = 60_000;

/** Where an accepted request is counted, and from which slice on the counts still matter. */
export interface PeerRequestSlices {
  /** The slice `now` falls in. */
  slice: number;
  /** The first slice that can still hold requests remembered at `now`. */
  since: number;
  /** When the count of `slice` may go: its last request's window has ended by then. */
  expiresAt: number;
}

/**
 * A request accepted at t is remembered until t + window (window = expiresAt − now, the same for
 * every request), so what a peer holds at `now` was accepted in the slices `since`…`slice`; their
 * sum bounds it. The first of them may also count requests already expired: a peer is refused at
 * most one slice early, never late.
 */
export function peerRequestSlices(r: PeerRequest): PeerRequestSlices {
  checkPeerRequest(r);
  const window = r.expiresAt - r.now;
  const slice = Math.floor(r.now / PEER_REQUEST_SLICE_MS);
  return { slice, since: Math.floor((r.now - window) / PEER_REQUEST_SLICE_MS), expiresAt: (slice + 1) * PEER_REQUEST_SLICE_MS + window };
}

/** The rows a replay decision reads, under the peer's lock. */
export interface PeerRequestState {
  /** The requestId is remembered and its window has not ended. */
  seen: boolean;
  /** The peer's accepted requests counted in the slices that still matter. */
  accepted: number;
}

/** A replay first (whatever the peer's count), then the bound; 'accepted' is what gets written. */
export function peerRequestOutcome(state: PeerRequestState, limit: number): PeerRequestOutcome {
  checkCount('limit', limit);
  if (state.seen) return 'replayed';
  return state.accepted >= limit ? 'over-limit' : 'accepted';
}

function checkPeerRequest(r: PeerRequest): void {
  checkRow('peer request', r, ['now', 'expiresAt']);
  if (r.expiresAt <= r.now) throw new RangeError(`peer request expiresAt must be after now, got ${r.expiresAt} <= ${r.now}`);
}

// ---- Inputs both backends must read alike ----
// Callers never send these; the checks keep a bug from being stored by one backend and refused
// by the other. A refusal is a RangeError, before anything is written.

/**
 * Refuses a count that is not a non-negative safe integer: SQLite reads `LIMIT -1` as "no limit"
 * where PostgreSQL refuses it, and the two treat fractions differently.
 */
export function checkCount(name: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${name} must be a non-negative integer, got ${n}`);
}

type IntegerField<T> = { [K in keyof T]-?: T[K] extends number | null | undefined ? K : never }[keyof T];

/**
 * Refuses an integer column (a time in epoch ms, a sequence number, a status) holding anything
 * but a safe integer: both backends declare BIGINT, and PostgreSQL refuses 1.5 or NaN where
 * SQLite would keep them. Null and undefined are the types' business (both store NULL).
 */
function checkIntegers<T extends object>(what: string, row: T, fields: readonly IntegerField<T>[]): void {
  for (const field of fields) {
    const value = row[field] as number | null | undefined;
    if (value !== null && value !== undefined && !Number.isSafeInteger(value)) {
      throw new RangeError(`${what}.${String(field)} must be an integer, got ${value}`);
    }
  }
}

/**
 * Refuses a string that a TEXT column would not keep as it is: a lone UTF-16 surrogate (encoded
 * as U+FFFD, so the row would differ from what was checked and hashed) or U+0000 (PostgreSQL
 * refuses it, SQLite keeps it). Requests are refused with a 400 long before (PROTOCOL.md §4
 * "Strings"); this keeps any other path from storing such a string in one backend only.
 */
export function checkText(name: string, value: string): void {
  const problem = textProblem(value);
  if (problem !== undefined) throw new RangeError(`${name} ${problem}`);
}

/** Every string of a row, and of its lists of strings, as checkText takes them. */
function checkTexts(what: string, row: object): void {
  for (const [field, value] of Object.entries(row)) {
    if (typeof value === 'string') checkText(`${what}.${field}`, value);
    else if (Array.isArray(value)) value.forEach((v, i) => typeof v === 'string' && checkText(`${what}.${field}[${i}]`, v));
  }
}

/** A row's strings (checkTexts) and its integer columns (checkIntegers). */
function checkRow<T extends object>(what: string, row: T, fields: readonly IntegerField<T>[]): void {
  checkTexts(what, row);
  checkIntegers(what, row, fields);
}

export const checkInstant = (name: string, at: number) => checkRow('instant', { [name]: at }, [name]);
/**
 * checkRow for a row type whose columns are listed rather than enumerated (the ones checked for
 * every request, or a hundred times in one). Lists of strings are not among their columns.
 */
function listedCheck<T extends object>(what: string, texts: readonly (keyof T & string)[], integers: readonly IntegerField<T>[]): (row: T) => void {
  return (row) => {
    for (const field of texts) {
      const value = row[field];
      if (typeof value === 'string') checkText(`${what}.${field}`, value);
    }
    checkIntegers(what, row, integers);
  };
}

export const checkKeyRow = listedCheck<KeyRow>('key', ['id', 'userId', 'clientId', 'resourceId', 'cmkId'], ['createdAt', 'expiresAt', 'bindDate', 'bindSeq']);
export const checkResourceRow = (row: ResourceRow) => checkRow('resource', row, ['createdAt', 'expiresAt']);
export const checkAuthorizationRow = listedCheck<AuthorizationRow>('authorization', ['id', 'resourceId', 'authId', 'roleUri'], ['createdAt']);
export const checkChannelRow = listedCheck<ChannelRow>('channel', ['id', 'owner', 'clientId', 'cmkId'], ['createdAt', 'expiresAt']);
export const checkCmkRow = (row: CmkRow) => checkRow('cmk', row, ['createdAt']);
export const checkCopyRow = (row: CopyRow) => checkRow('copy', row, ['fetchedAt']);
export const checkArchiveCursor = (after: { resourceUri: string; version: number } | undefined) => after && checkRow('archive cursor', after, ['version']);
export const checkAuditRow = listedCheck<AuditRow>('audit', ['principal', 'onBehalfOf', 'clientId', 'method', 'uri', 'peer', 'requestId', 'node', 'prevHash', 'hash'], ['seq', 'time', 'status']);
export const checkKeyBind = (bind: KeyBind) => checkRow('bind', bind, ['bindDate', 'expiresAt', 'now']);

export function checkKeyFilter(filter: KeyFilter): void {
  checkRow('filter', filter, ['boundAfter', 'boundBefore']);
  if (filter.limit !== undefined) checkCount('limit', filter.limit);
}

// ---- The push outbox and the nodes (migration 7) ----

/** Ids of one outbox row: 1..MAX_PUSH_OUTBOX_IDS resources, strings of bounded length. */
export function checkPushRow(row: PushRow): void {
  checkRow('push', row, ['createdAt', 'attempts', 'nextAttemptAt']);
  checkCount('push.attempts', row.attempts);
  if (row.resourceIds.length === 0 || row.resourceIds.length > MAX_PUSH_OUTBOX_IDS) {
    throw new RangeError(`push.resourceIds must hold 1 to ${MAX_PUSH_OUTBOX_IDS} ids, got ${row.resourceIds.length}`);
  }
  if (row.userIds.length > MAX_PUSH_OUTBOX_IDS) throw new RangeError(`push.userIds must hold at most ${MAX_PUSH_OUTBOX_IDS} ids, got ${row.userIds.length}`);
  checkPushTargets(row.targets);
}

export function checkPushTargets(targets: Record<string, string[]> | null): void {
  if (targets === null) return;
  const peers = Object.keys(targets);
  if (peers.length > MAX_PUSH_OUTBOX_IDS) throw new RangeError(`push.targets must name at most ${MAX_PUSH_OUTBOX_IDS} peers, got ${peers.length}`);
  for (const peer of peers) {
    const uris = targets[peer]!;
    if (!Array.isArray(uris) || uris.length > MAX_PUSH_OUTBOX_IDS * MAX_KRO_VISITS) throw new RangeError(`push.targets[${peer}] must be a bounded list of URIs`);
  }
}

export function checkNodeRow(row: NodeRow): void {
  checkRow('node', row, ['pid', 'startedAt', 'seenAt']);
  for (const field of ['id', 'host', 'version'] as const) {
    if (row[field].length === 0 || row[field].length > 255) throw new RangeError(`node.${field} must be 1 to 255 characters`);
  }
}

/** The lease taken at `now` for `leaseMs`: until when, refusing a lease that ends before it starts. */
export function leaseUntil(now: number, leaseMs: number): number {
  checkInstant('now', now);
  checkCount('leaseMs', leaseMs);
  return now + leaseMs;
}

// ---- Remembered answers (core/retries.ts) ----

/** What the store holds for a (channel, requestId), as a claim decision needs it. */
export interface AnswerState {
  digest: string;
  leaseUntil: number;
  answerUntil: number;
  expiresAt: number;
  /** Whether a copy ran to its answer (kept in `answer` until answerUntil, then destroyed). */
  answered: boolean;
  answer: RememberedAnswer | undefined;
}

/**
 * What claiming a request does: 'insert' (nothing remembered, or only an expired row), 'take-over'
 * (the running copy's lease ended: its node died or stalled; the row is replaced by this claim),
 * or the outcome told as it is. A different request under the same requestId is a mismatch even
 * once answered: its answer is never given for another request. An answered request never runs
 * again while it is remembered: past answerUntil (or with its answer swept) it is 'spent'.
 */
export function answerClaimDecision(state: AnswerState | undefined, claim: AnswerClaim): 'insert' | 'take-over' | AnswerClaimOutcome {
  checkAnswerClaim(claim);
  if (state === undefined) return 'insert';
  if (state.expiresAt <= claim.now) return 'take-over';
  if (state.digest !== claim.digest) return { state: 'mismatch' };
  if (state.answered) return state.answer && state.answerUntil > claim.now ? { state: 'answered', answer: state.answer } : { state: 'spent' };
  return state.leaseUntil > claim.now ? { state: 'running' } : 'take-over';
}

function checkAnswerClaim(c: AnswerClaim): void {
  checkRow('answer claim', c, ['now', 'leaseUntil', 'answerUntil', 'expiresAt']);
  if (!(c.now < c.leaseUntil && c.leaseUntil <= c.answerUntil && c.answerUntil <= c.expiresAt)) {
    throw new RangeError(`answer claim needs now < leaseUntil <= answerUntil <= expiresAt, got ${c.now}, ${c.leaseUntil}, ${c.answerUntil}, ${c.expiresAt}`);
  }
  if (!/^[0-9a-f]{64}$/.test(c.digest)) throw new RangeError('answer claim digest must be 64 hex digits');
}
