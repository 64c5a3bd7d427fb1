/**
 * The storage contract. Every method is atomic on its own: anything concurrency-sensitive (bind
 * races, all-or-nothing creates) is one transaction with the right constraint inside the
 * implementation, never a read-then-write in the caller. What a method decides (may this key be
 * bound, which authorizations are new, what a sweep destroys, which inputs are refused) is
 * decided by the shared rules (rules.ts), so both backends answer alike; the rows themselves are
 * the plain types of model.ts. Times are epoch milliseconds; sealed columns hold key material
 * encrypted by the keyring, never plaintext.
 */
import type { AnswerClaim, AnswerClaimKey, AnswerClaimOutcome, AuditHead, AuditRow, AuthorizationRow, BindOutcome, ChannelRow, CmkRow, CopyRow, KeyBind, KeyFilter, KeyRow, PeerRequest, PeerRequestOutcome, RememberedAnswer, ResourceRow, SweepResult } from '../model.js';

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
  deleteChannel(id: string): Promise<boolean>;

  /** Inserts a CMK; when it is active, the previously active CMK of the same scope turns inactive. */
  insertCmk(row: CmkRow): Promise<void>;
  listCmks(assignedOrgId?: string | null): Promise<CmkRow[]>;
  getCmk(id: string): Promise<CmkRow | undefined>;
  setCmkState(id: string, state: CmkRow['state']): Promise<void>;

  /** Federation, answering side: remember that a peer fetched a KRO (to send it invalidations). */
  recordPeerFetch(resourceId: string, peer: string, at: number): Promise<void>;
  peersThatFetched(resourceId: string): Promise<string[]>;

  /** Federation, asking side: the copy of a peer's KRO and the key URIs it holds, replaced whole. */
  putCopy(row: CopyRow, keyUris: string[]): Promise<void>;
  getCopy(resourceUri: string): Promise<CopyRow | undefined>;
  copyOfKey(keyUri: string): Promise<string | undefined>;
  /** Marks copies stale (they stay, for the archive); only those under `authority`. Returns how many, each once. */
  invalidateCopies(authority: string, resourceUris: string[]): Promise<number>;

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
   * keys more than `unboundGraceMs` past expiry, expired channels, and remembered peer requests
   * (with their counts) whose window ended, and remembered answers past their retry window.
   */
  sweep(now: number, unboundGraceMs: number): Promise<SweepResult>;

  /** Throws when storage is not reachable (readiness). */
  ping(): Promise<void>;
  close(): Promise<void>;
}
