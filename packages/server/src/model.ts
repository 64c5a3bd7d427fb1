/**
 * The KMS's data as plain objects: what the store keeps (rows), what is asked of it (binds,
 * filters) and what it answers (outcomes). No code depends on where these come from, so policy,
 * operations and federation read them without importing any storage code; the Store contract
 * (store/store.ts) says how they are kept.
 *
 * Units, everywhere below: every time is epoch milliseconds (UTC); an `id` is a UUID given by this
 * KMS, and the object's URI is `kms://<authority>/<kind>/<id>`. A `sealed` field holds key
 * material encrypted by the keyring under the CMK named beside it (never plaintext), with an AAD
 * naming the object, so that a sealed value cannot be moved to another row.
 */

/** A key (PROTOCOL.md "keys"): created unbound, bound once to one resource, never unbound. */
export interface KeyRow {
  id: string;
  /** The user who created it: the only one who may read it unbound or bind it. */
  userId: string;
  /** The `client.clientId` of the request that created it; a bind must come from the same client. */
  clientId: string;
  createdAt: number;
  /**
   * Unbound: the last instant it may be bound (the sweeper destroys it `lifetimes.unboundGrace`
   * later). Bound: bindDate + the bound-key lifetime, its `expirationDate` on the wire.
   */
  expiresAt: number;
  /** The resource it is bound to; null while unbound. */
  resourceId: string | null;
  /** When it was bound; null while unbound. */
  bindDate: number | null;
  /** Monotonic bind order across the store, breaking ties between equal bindDates; null while unbound. */
  bindSeq: number | null;
  cmkId: string;
  /** The key material (32 bytes), sealed with AAD `key:<id>`. */
  sealed: Uint8Array;
}

/** A resource (KRO): the keys bound to it are released to the principals authorized on it. */
export interface ResourceRow {
  id: string;
  /** The user who created it (always authorized on it, draft 4.7.3). */
  creator: string;
  createdAt: number;
  /** Its TTL's end: past it the resource and its keys are gone for everyone (404). Null: no TTL. */
  expiresAt: number | null;
}

/** One authorization of a resource: who may read its keys. */
export interface AuthorizationRow {
  id: string;
  resourceId: string;
  /**
   * A user id, or the absolute URI of a KRO (`kms://<authority>/resources/<id>`, whose authorized
   * principals are then authorized here too); null for an anonymous authorization, held by
   * whoever has its bearer token. At most one row per non-null authId on a resource.
   */
  authId: string | null;
  /** The authorization's `roleUri`, kept and answered as it was given; null: none given. */
  roleUri: string | null;
  createdAt: number;
}

/** An ephemeral key (a channel) agreed by ECDHE, kept so that channels survive a restart. */
export interface ChannelRow {
  id: string;
  /** principalId() of the principal that created it (a user, or a peer KMS): only it may use it. */
  owner: string;
  /** The `client.clientId` of the request that created it. */
  clientId: string;
  createdAt: number;
  /** Never accepted at or after this instant (the sweeper destroys it then). */
  expiresAt: number;
  cmkId: string;
  /** The channel key, sealed with AAD `ecdhe:<id>`. */
  sealed: Uint8Array;
}

/** A customer master key: what the keyring seals every other key under. */
export interface CmkRow {
  id: string;
  /** At most one CMK is active per scope (assignedOrgId); new keys are sealed under it. */
  state: 'active' | 'inactive';
  /** The organisation it serves; null: the KMS-wide default scope. */
  assignedOrgId: string | null;
  createdAt: number;
  /** The CMK sealed under the root key. */
  sealed: Uint8Array;
}

/** One audited request: who, from which client, what, how it ended. Never a secret. */
export interface AuditEntry {
  time: number;
  /** principalId() of the authenticated principal; null when authentication did not get that far. */
  principal: string | null;
  /** The user a compliance officer (the principal) read as, with `credential.onBehalfOf`; absent: null. */
  onBehalfOf?: string | null;
  clientId: string | null;
  /** The request's draft method (`create`, `retrieve`, …); null when it could not be read. */
  method: string | null;
  uri: string | null;
  /** The status answered (HTTP semantics: 200, 403, …). */
  status: number;
  /** principalId() of the peer KMS the request came from (as claimed, when refused); null: none. */
  peer: string | null;
  requestId: string | null;
}

/** An audit record as stored: the entry in its place in the hash chain. */
export interface AuditRow extends AuditEntry {
  /** 1, 2, 3, … with no gap; a second record with the same seq is refused. */
  seq: number;
  /**
   * The KMS process that wrote it (`<hostname>/<pid>/<random>`, chosen when it starts): all the
   * nodes on one database extend one chain. Null for records written before nodes were recorded.
   */
  node: string | null;
  /** The previous record's hash (64 hex digits), or AUDIT_GENESIS for the first. */
  prevHash: string;
  /** HMAC-SHA-256 (hex) over prevHash and this record, keyed from the root key (audit/audit.ts). */
  hash: string;
}

/** The end of the audit chain: the last record's seq and hash, or seq 0 and AUDIT_GENESIS when empty. */
export interface AuditHead {
  seq: number;
  hash: string;
}

/** The prevHash of the first record. */
export const AUDIT_GENESIS = '0'.repeat(64);

/**
 * `CopyRow.fetchedAt` of an invalidated copy: older than any real fetch, so the copy is kept for
 * the archive but never used again without a fresh fetch.
 */
export const COPY_INVALIDATED = 0;

/**
 * One entry of the change feed (Store.changesAfter): something other processes on the database
 * must drop from their caches. `channel`: the channel `subject` was deleted; `cmk`: the CMK
 * `subject` was added or changed state; `key`: the key `subject` was bound; `resource`: the
 * resource `subject` was created or its authorizations changed. `at`: wall-clock ms of the write
 * (for the sweep).
 */
export interface ChangeRow {
  seq: number;
  kind: 'channel' | 'cmk' | 'key' | 'resource';
  subject: string;
  at: number;
}

/** What Store.putCopy did: stored, or refused because an invalidation came after the fetch began. */
export type PutCopyOutcome = 'stored' | 'invalidated';

/** A copy of another KMS's KRO, as released to this KMS (sealed: it holds key material). */
export interface CopyRow {
  /** The KRO's absolute URI at its own KMS. */
  resourceUri: string;
  /** The authority of the KMS that owns the KRO (only it may invalidate the copy). */
  authority: string;
  /** When it was received; COPY_INVALIDATED once invalidated. */
  fetchedAt: number;
  cmkId: string;
  /**
   * The copy's content, sealed with AAD `copy:<resourceUri>`: JSON of the KRO with its keys and
   * the peer's signed answers that prove them.
   */
  sealed: Uint8Array;
}

/** One version of a peer's KRO in the archive: the copy as stored then, numbered 1, 2, … per KRO. */
export interface ArchivedCopy extends CopyRow {
  version: number;
}

/** A request to bind one key: who asks, and what the key becomes once bound. */
export interface KeyBind {
  /** The key's id. */
  id: string;
  /** The user asking: must be the key's creator. */
  userId: string;
  /** The client asking: must be the one that created the key. */
  clientId: string;
  /** The bind's instant, the key's new bindDate. */
  bindDate: number;
  /** The key's new expiresAt (bindDate + the bound-key lifetime). */
  expiresAt: number;
  /** The bind must fail if the unbound key expired at or before this instant. */
  now: number;
}

/**
 * How a bind ended. 'bound': written. 'missing': no such key, or no such resource (it was swept
 * meanwhile). 'not-owner': another user or client than the key's creator asked (this is answered
 * before whether the key is bound, so nobody else learns that). 'already-bound': the key is bound
 * (to this or another resource), or named twice in one request. 'expired': the unbound key's
 * expiresAt has passed.
 */
export type BindOutcome = 'bound' | 'missing' | 'already-bound' | 'expired' | 'not-owner';

/** Which of a resource's keys to list: bindDate in [boundAfter, boundBefore), at most `limit`. */
export interface KeyFilter {
  boundAfter?: number;
  boundBefore?: number;
  /** A non-negative integer; the newest keys are kept. */
  limit?: number;
}

/** What one sweep destroyed. */
export interface SweepResult {
  /** Expired resources destroyed, with their keys and authorizations. */
  resources: number;
  /** The expired resources destroyed (their peers are told). */
  resourceIds: string[];
  /** Keys destroyed: those of the expired resources and the unbound ones past their grace. */
  keys: number;
  /** Expired channels destroyed. */
  channels: number;
  /** Remembered peer requestIds destroyed, past their replay window. */
  peerRequests: number;
  /** Change feed entries and federation invalidations destroyed, past their retention. */
  changes: number;
  /** Remembered answers destroyed past their retry window, and remembered requests forgotten past their channel's end. */
  answers: number;
}

/**
 * How remembering a signed peer request ended (Store.acceptPeerRequest). 'accepted': first seen
 * (or its earlier sighting expired). 'replayed': seen within its window, by any node.
 * 'over-limit': the peer already holds its limit of requests within the window; nothing written.
 */
export type PeerRequestOutcome = 'accepted' | 'replayed' | 'over-limit';

/** A signed peer request to be accepted once: by whom, which requestId, remembered until when. */
export interface PeerRequest {
  /** The peer's authority. */
  peer: string;
  /** `<typeof requestId>:<requestId>`, so that the string "1" and the number 1 stay apart. */
  requestId: string;
  now: number;
  /** Refused as a replay until this instant (the end of the window in which its iat is accepted). */
  expiresAt: number;
}

/**
 * An invalidation push waiting in the outbox (Store.enqueuePush): what changed, never key
 * material. `targets` is null until the first attempt computes the peers to tell; after a failed
 * attempt it holds, per peer authority, the resource URIs still to push there.
 */
export interface PushRow {
  id: string;
  createdAt: number;
  resourceIds: string[];
  userIds: string[];
  targets: Record<string, string[]> | null;
  /** Attempts made so far. */
  attempts: number;
  /** Not delivered before this instant (epoch ms, wall clock: any node may deliver it). */
  nextAttemptAt: number;
}

/** A KMS process on this database, as it last recorded itself (Store.heartbeat). */
export interface NodeRow {
  /** The id its audit records carry (audit/audit.ts newNodeId). */
  id: string;
  host: string;
  pid: number;
  version: string;
  startedAt: number;
  seenAt: number;
  /** Whether it led the background work when it last recorded itself. */
  leading: boolean;
}

/**
 * A request remembered for its retries (core/retries.ts): which channel and requestId, a digest of
 * what it asked, who runs it until when (the claim's lease), and how long it is remembered.
 */
export interface AnswerClaim {
  channelId: string;
  /** The requestId as core/retries.ts requestIdKey stores it (a digest of its JSON). */
  requestId: string;
  /** SHA-256 (hex) of the request without its requestId and credential. */
  digest: string;
  /** A fresh id of this attempt: only it may remember the answer or give the claim up. */
  claimant: string;
  now: number;
  /** Until then another copy of the request waits for this one's answer; after it, takes over. */
  leaseUntil: number;
  /** Until then a copy gets the first answer (the retry window); the answer is destroyed after it. */
  answerUntil: number;
  /**
   * Until then the request is remembered (its channel's end): from answerUntil on a copy is
   * 'spent', refused, never run again. Forgotten (and swept) from then on.
   */
  expiresAt: number;
}

/** A remembered answer, sealed by the keyring (it may hold key material). */
export interface RememberedAnswer {
  cmkId: string;
  sealed: Uint8Array;
}

/**
 * How claiming a request ended (Store.claimAnswer): 'claimed', run it; 'answered', a copy ran
 * and this is its answer; 'spent', a copy ran and its answer is no longer kept (past answerUntil:
 * a replay, or a retry later than any client sends one); 'running', a copy holds a live lease;
 * 'mismatch', the requestId was used on this channel for a different request.
 */
export type AnswerClaimOutcome = { state: 'claimed' } | { state: 'answered'; answer: RememberedAnswer } | { state: 'spent' } | { state: 'running' } | { state: 'mismatch' };

/** Which claim a remember or a release is about. */
export interface AnswerClaimKey {
  channelId: string;
  requestId: string;
  claimant: string;
}
