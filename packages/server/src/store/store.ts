/**
 * The storage contract. Every method is atomic on its own: anything concurrency-sensitive (bind
 * races, all-or-nothing creates) is one transaction with the right constraint inside the
 * implementation, never a read-then-write in the caller. What a method decides (may this key be
 * bound, which authorizations are new, what a sweep destroys, which inputs are refused) is
 * decided by the shared rules (rules.ts), so both backends answer alike; the rows themselves are
 * the plain types of model.ts. Times are epoch milliseconds; sealed columns hold key material
 * encrypted by the keyring, never plaintext.
 */
import type { AuditRow, AuthorizationRow, BindOutcome, ChannelRow, CmkRow, CopyRow, KeyBind, KeyFilter, KeyRow, ResourceRow, SweepResult } from '../model.js';

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

  /** Appends audit records after the current head; each carries its own prevHash/hash. */
  appendAudit(rows: AuditRow[]): Promise<void>;
  auditHead(): Promise<{ seq: number; hash: string } | undefined>;
  readAudit(afterSeq: number, limit: number): Promise<AuditRow[]>;

  /**
   * Destroys what expired: resources past their TTL with their keys and authorizations, unbound
   * keys more than `unboundGraceMs` past expiry, and expired channels.
   */
  sweep(now: number, unboundGraceMs: number): Promise<SweepResult>;

  /** Throws when storage is not reachable (readiness). */
  ping(): Promise<void>;
  close(): Promise<void>;
}
