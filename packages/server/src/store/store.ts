/**
 * The storage contract. Every method is atomic on its own: anything concurrency-sensitive (bind
 * races, all-or-nothing creates) is one transaction with the right constraint inside the
 * implementation, never a read-then-write in the caller. Times are epoch milliseconds; sealed
 * columns hold key material encrypted by the keyring, never plaintext.
 */
export interface KeyRow {
  id: string;
  userId: string;
  clientId: string;
  createdAt: number;
  expiresAt: number;
  resourceId: string | null;
  bindDate: number | null;
  /** Monotonic bind order, breaking ties between equal bindDates. */
  bindSeq: number | null;
  cmkId: string;
  sealed: Uint8Array;
}

export interface ResourceRow {
  id: string;
  creator: string;
  createdAt: number;
  expiresAt: number | null;
}

export interface AuthorizationRow {
  id: string;
  resourceId: string;
  /** A user id, or an absolute KRO URI; null for an anonymous authorization. */
  authId: string | null;
  roleUri: string | null;
  createdAt: number;
}

export interface ChannelRow {
  id: string;
  /** principalId() of the principal that created it. */
  owner: string;
  clientId: string;
  createdAt: number;
  expiresAt: number;
  cmkId: string;
  sealed: Uint8Array;
}

export interface CmkRow {
  id: string;
  state: 'active' | 'inactive';
  assignedOrgId: string | null;
  createdAt: number;
  /** The CMK sealed under the root key. */
  sealed: Uint8Array;
}

/** One audited request: who, from which client, what, how it ended. Never a secret. */
export interface AuditEntry {
  time: number;
  principal: string | null;
  clientId: string | null;
  method: string | null;
  uri: string | null;
  status: number;
  peer: string | null;
  requestId: string | null;
}

export interface AuditRow extends AuditEntry {
  seq: number;
  prevHash: string;
  hash: string;
}

/** A copy of another KMS's KRO, as released to this KMS (sealed: it holds key material). */
export interface CopyRow {
  resourceUri: string;
  authority: string;
  /** When it was received; 0 once invalidated (kept for the archive, re-fetched before use). */
  fetchedAt: number;
  cmkId: string;
  sealed: Uint8Array;
}

export interface KeyBind {
  id: string;
  userId: string;
  clientId: string;
  bindDate: number;
  expiresAt: number;
  /** The bind must fail if the unbound key expired before this instant. */
  now: number;
}

export type BindOutcome = 'bound' | 'missing' | 'already-bound' | 'expired' | 'not-owner';

export interface KeyFilter {
  boundAfter?: number;
  boundBefore?: number;
  limit?: number;
}

export interface SweepResult {
  resources: number;
  /** The expired resources destroyed (their peers are told). */
  resourceIds: string[];
  keys: number;
  channels: number;
}

export interface Store {
  readonly kind: 'sqlite' | 'postgres';

  insertKeys(rows: KeyRow[]): Promise<void>;
  getKey(id: string): Promise<KeyRow | undefined>;
  /** Binds one key; exactly one of concurrent binds of the same key wins. */
  bindKey(bind: KeyBind & { resourceId: string }): Promise<BindOutcome>;
  /** The resource's keys, newest bindDate first (ties: latest bind first). */
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
  /** Resources with an authorization whose authId is exactly `authId` (e.g. a KRO URI). */
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
  /** Marks copies stale (they stay, for the archive); only those under `authority`. */
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
