/**
 * The storage contract. Every method is atomic on its own: anything concurrency-sensitive (bind
 * races, all-or-nothing creates) is one transaction with the right constraint inside the
 * implementation, never a read-then-write in the caller. What a method decides (may this key be
 * bound, which authorizations are new, what a sweep destroys, which inputs are refused) is
 * decided by the shared rules (rules.ts), so both backends answer alike; the rows themselves are
 * the plain types of model.ts. Times are epoch milliseconds; sealed columns hold key material
 * encrypted by the keyring, never plaintext.
 */
import type { ChangeSignal } from './change-signal.js';
import type { Leadership } from './leadership.js';
import type { AnswerClaim, AnswerClaimKey, AnswerClaimOutcome, AuditHead, AuditRow, AuthorizationRow, BindOutcome, ChangeRow, ChannelRow, CmkRow, ArchivedCopy, CopyRow, KeyBind, KeyFilter, KeyRow, NodeRow, PeerRequest, PeerRequestOutcome, PushRow, PutCopyOutcome, RememberedAnswer, ResourceRow, SweepResult } from '../model.js';

export interface Store {
  readonly kind: 'sqlite' | 'postgres';

  insertKeys(rows: KeyRow[]): Promise<void>;
  getKey(id: string): Promise<KeyRow | undefined>;
  /**
   * Binds one key (rules.ts bindOutcome decides); exactly one of concurrent binds of the same key
   * wins. A resource that no longer exists (swept since the caller looked) is 'missing'.
   */
  bindKey(bind: KeyBind & { resourceId: string }): Promise<BindOutcome>;
  /** The resource's keys, newest bindDate first (ties: latest bind first). A malformed filter is a RangeError. */
  listResourceKeys(resourceId: string, filter?: KeyFilter): Promise<KeyRow[]>;
  /** The keys `userId` created (bound or not), in id order after `afterId`, at most `limit`. */
  keysCreatedBy(userId: string, afterId: string, limit: number): Promise<KeyRow[]>;

  /**
   * Creates a resource with its authorizations and binds the given keys, all or nothing.
   * Returns the first failed bind's outcome, or 'bound' when everything was written.
   */
  createResource(resource: ResourceRow, authorizations: AuthorizationRow[], binds: KeyBind[]): Promise<BindOutcome>;
  getResource(id: string): Promise<ResourceRow | undefined>;

  /**
   * Adds authorizations to a resource, all or nothing. An authId already present on the resource
   * is not duplicated: the existing row is returned in its place. When the rows actually added
   * would take the resource over `limit` authorizations, nothing is written: 'over-limit'.
   */
  addAuthorizations(resourceId: string, rows: AuthorizationRow[], limit: number): Promise<AuthorizationRow[] | 'over-limit'>;
  listAuthorizations(resourceId: string): Promise<AuthorizationRow[]>;
  /** Resources with an authorization whose authId is exactly `authId` (e.g. a KRO URI), in id order. */
  resourcesWithAuthId(authId: string): Promise<string[]>;
  getAuthorization(id: string): Promise<AuthorizationRow | undefined>;
  /** Deletes the given authorizations of one resource; returns those that existed. */
  deleteAuthorizations(resourceId: string, ids: string[]): Promise<AuthorizationRow[]>;

  insertChannel(row: ChannelRow): Promise<void>;
  getChannel(id: string): Promise<ChannelRow | undefined>;
  /** Deletes a channel; when it existed, records a `channel` change in the same transaction. */
  deleteChannel(id: string): Promise<boolean>;

  /**
   * Inserts a CMK; when it is active, the previously active CMK of the same scope turns inactive.
   * Records a `cmk` change in the same transaction (as does setCmkState when the CMK exists).
   */
  insertCmk(row: CmkRow): Promise<void>;
  listCmks(assignedOrgId?: string | null): Promise<CmkRow[]>;
  getCmk(id: string): Promise<CmkRow | undefined>;
  setCmkState(id: string, state: CmkRow['state']): Promise<void>;

  /** Federation, answering side: remember that a peer fetched a KRO (to send it invalidations). */
  recordPeerFetch(resourceId: string, peer: string, at: number): Promise<void>;
  peersThatFetched(resourceId: string): Promise<string[]>;

  /**
   * Federation, asking side: the copy of a peer's KRO and the key URIs it holds, replaced whole,
   * unless an invalidation of that KRO was received, by any process on this database, after
   * `fetchStartedAt` (the invalidationMark() read when the fetch began): then nothing is written
   * and the answer is 'invalidated' (rules.ts putCopyOutcome). Decided atomically with the
   * invalidations: one that commits while the copy is written still marks it stale.
   */
  putCopy(row: CopyRow, keyUris: string[], fetchStartedAt: number, archive?: boolean): Promise<PutCopyOutcome>;
  getCopy(resourceUri: string): Promise<CopyRow | undefined>;
  /**
   * The archive (legal discovery): with `archive`, a stored copy is also kept there, in the same
   * transaction, as the KRO's next version (1, 2, …). Never replaced or removed by the KMS. The
   * versions of one KRO, newest first, at most `limit`.
   */
  archivedCopies(resourceUri: string, limit: number): Promise<ArchivedCopy[]>;
  /** Every archived version in (resourceUri, version) order after `after`, at most `limit`: paged reads. */
  archivePage(after: { resourceUri: string; version: number } | undefined, limit: number): Promise<ArchivedCopy[]>;
  copyOfKey(keyUri: string): Promise<string | undefined>;
  /**
   * Marks copies stale (they stay, for the archive); only those under `authority`. Returns how
   * many, each once. Every named URI is remembered as invalidated at the next invalidation mark,
   * for every process on this database, whether or not a copy exists yet (one may be being fetched).
   */
  invalidateCopies(authority: string, resourceUris: string[]): Promise<number>;
  /** The invalidation mark: how many invalidations were committed so far (a fetch notes it when it begins). */
  invalidationMark(): Promise<number>;

  /**
   * The change feed: what other processes must drop from their caches, after `afterSeq`, in seq
   * order, at most `limit` (rules.ts checkChangesRead). Seqs are gapless and committed in order,
   * so a reader that saw up to N misses nothing by asking for > N; a gap before the first entry
   * returned means entries were swept before it read them.
   */
  changesAfter(afterSeq: number, limit: number): Promise<ChangeRow[]>;
  /** The seq of the last change committed (0 before any). */
  lastChange(): Promise<number>;
  /**
   * Tells one listener when the feed may have moved (store/change-signal.ts): NOTIFY on
   * PostgreSQL, polling on SQLite. A member, not a call: the deadline wrapper passes it through.
   */
  readonly changeSignal: ChangeSignal;

  /**
   * Extends the one audit chain that every process on this database shares, by one batch, in one
   * transaction: reads the head under a lock that other processes' appends wait on, appends the
   * rows `link(head)` builds after it and moves the head to the last of them. Rows that do not
   * follow the head one by one (rules.ts checkAuditLink) are a RangeError and nothing is written.
   * `link` may be called more than once (a transaction retried): it must only compute.
   */
  appendAudit(link: (head: AuditHead) => AuditRow[]): Promise<void>;
  /** The chain's end as the lock holder last left it: seq 0 and AUDIT_GENESIS when empty. */
  auditHead(): Promise<AuditHead>;
  readAudit(afterSeq: number, limit: number): Promise<AuditRow[]>;

  /**
   * The peers' replay window, shared by every process on this database: remembers a signed peer
   * request until `expiresAt` unless it is a replay (remembered and not expired) or the peer
   * already holds `limit` requests within the window (rules.ts peerRequestOutcome decides; the
   * count is kept per slice, rules.ts peerRequestSlices). Concurrent calls for one peer are
   * decided one after the other, so of two equal requests exactly one is accepted.
   */
  acceptPeerRequest(request: PeerRequest, limit: number): Promise<PeerRequestOutcome>;

  /**
   * Retries (core/retries.ts), shared by every process on this database: claims a request before
   * it runs. Nothing remembered (or only an expired row) → the claim is written, 'claimed'; the
   * same request answered → 'answered' with the sealed answer; a copy of it running under a live
   * lease → 'running'; a copy whose lease ended → this claim replaces it, 'claimed'; another
   * request under the same requestId → 'mismatch' (rules.ts answerClaimDecision decides).
   * Concurrent claims of one request are decided one after the other: exactly one is 'claimed'.
   */
  claimAnswer(claim: AnswerClaim): Promise<AnswerClaimOutcome>;
  /** Stores the answer of a claim this claimant still holds; false when it no longer does. */
  rememberAnswer(key: AnswerClaimKey, answer: RememberedAnswer): Promise<boolean>;
  /** Gives up a claim not answered (the request failed: a retry runs it again). */
  releaseAnswer(key: AnswerClaimKey): Promise<void>;

  /**
   * Destroys what expired: resources past their TTL with their keys and authorizations, unbound
   * keys more than `unboundGraceMs` past expiry, expired channels, remembered peer requests
   * (with their counts) whose window ended, change feed entries and remembered federation
   * invalidations past their retention (rules.ts feedCutoffs, on the wall clock), and remembered
   * answers past their retry window.
   */
  sweep(now: number, unboundGraceMs: number): Promise<SweepResult>;

  // ---- Several processes on one database: the elected node, the push outbox, the nodes seen ----

  /**
   * How this process (`holder`: its node id) competes for the leadership of the background work
   * (store/leadership.ts: an advisory lock on PostgreSQL, a lease row on SQLite).
   */
  leadership(holder: string): Promise<Leadership>;
  /**
   * Queues an invalidation push unless the outbox already holds `limit` rows (then false and
   * nothing is written; on PostgreSQL concurrent writers may pass the limit by a few rows).
   */
  enqueuePush(row: PushRow, limit: number): Promise<boolean>;
  /** Up to `limit` queued pushes due at `now` (nextAttemptAt <= now), the earliest first. */
  duePushes(now: number, limit: number): Promise<PushRow[]>;
  /** After a failed attempt: what is left to push, the attempts made, when to try again. */
  reschedulePush(id: string, targets: Record<string, string[]>, attempts: number, nextAttemptAt: number): Promise<void>;
  /** Delivered, or given up. */
  deletePush(id: string): Promise<void>;
  /** How many pushes are queued. */
  countPushes(): Promise<number>;
  /** Records a process as seen (inserted or replaced) and forgets those last seen before `forgetBefore`. */
  heartbeat(node: NodeRow, forgetBefore: number): Promise<void>;
  /** The processes recorded, the most recently seen first. */
  listNodes(): Promise<NodeRow[]>;
  /** A process stopping removes its own row. */
  removeNode(id: string): Promise<void>;

  /** Throws when storage is not reachable (readiness). */
  ping(): Promise<void>;
  close(): Promise<void>;
}
