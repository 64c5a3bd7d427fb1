/**
 * The server's bounds, each in one place with why it is what it is. Limits of the protocol itself
 * (counts, sizes and lengths every implementation enforces) are the protocol package's `Limits`;
 * what an operator may set is in the configuration's defaults.
 */
import { Limits } from '@openkms/protocol';

/** How deep KRO authIds are followed (PROTOCOL.md §1). */
export const MAX_KRO_DEPTH = 8;
/**
 * How many resources one walk of the authorization graph may visit. Past it an authorization
 * check answers "not authorized" (fail closed).
 */
export const MAX_KRO_VISITS = 256;

/** Keys in one answer to retrieve /resources/<id>/keys; older ones are read with boundBefore. */
export const MAX_KEYS_PER_ANSWER = 1000;
/** Without a configured maximum, a resource TTL still has to be a date: at most 100 years (s). */
export const MAX_TTL_SECONDS = 100 * 365 * 24 * 3600;

/** Keys in one federated answer; more come with `next` (a boundBefore value). */
export const MAX_RELEASED_KEYS = 500;
/** Pages of a federated answer followed at most (MAX_RELEASED_KEYS keys each). */
export const MAX_FEDERATED_PAGES = 20;
/** KROs whose last re-fetch is remembered in memory (per node; invalidations are in the database). */
export const MAX_TRACKED_KROS = 100_000;
/**
 * Archived versions of one KRO a compliance read looks through (newest first) for one that shows
 * the user; the export reads them all, page by page.
 */
export const MAX_ARCHIVED_VERSIONS_READ = 1000;
/** A user missing from a fresh copy makes a re-fetch at most this often per KRO (ms). */
export const REFETCH_INTERVAL_MS = 1000;
/** Waits between attempts to push an invalidation to a peer (the staleness bound is the backstop). */
export const PUSH_RETRY_DELAYS_MS: readonly number[] = [200, 1000, 5000];
/** Resource URIs in one invalidation push. */
export const MAX_INVALIDATIONS_PER_PUSH = 100;
/**
 * Rows the push outbox holds at most. A change arriving when it is full is not queued (logged at
 * warn): its peers see it at their staleness bound, as if every push had failed. Rows leave the
 * table when delivered or after the last retry, so it fills only when peers are down under a burst.
 */
export const MAX_PUSH_OUTBOX_ROWS = 10_000;
/** Resource ids in one outbox row; a larger change (a sweep) is queued as several rows. */
export const MAX_PUSH_OUTBOX_IDS = 1000;
/** Outbox rows the leader delivers at once. */
export const MAX_PUSHES_IN_FLIGHT = 32;
/** How often the leader looks for outbox rows other nodes wrote or whose retry is due (ms). */
export const PUSH_OUTBOX_POLL_MS = 500;

// Several processes on one database: one leads the background work (nodes/leader.ts).
/**
 * SQLite: how long the leader lease lasts without renewal (ms). A leader that dies is replaced at
 * most this long (plus one claim interval) later. PostgreSQL holds a session advisory lock instead,
 * released when the leader's connection drops.
 */
export const LEADER_LEASE_MS = 5000;
/** How often each node claims (the leader: renews) leadership (ms). */
export const LEADER_CLAIM_INTERVAL_MS = 1000;
/** How often each node records itself in the nodes table (ms). */
export const NODE_HEARTBEAT_MS = 3000;
/** A node seen within this long is shown by kms status as up (ms). */
export const NODE_RECENT_MS = 15_000;
/** A node unseen for this long is removed from the nodes table (ms). */
export const NODE_FORGET_MS = 10 * 60_000;

/** Channels kept unsealed in memory; past it the oldest are read from storage again. */
export const MAX_CACHED_CHANNELS = 100_000;
/** Federated copies kept unsealed in memory (federation/copies.ts), and their sealed bytes at most. */
export const MAX_CACHED_COPIES = 1_000;
export const MAX_CACHED_COPY_BYTES = 64 * 1024 * 1024;
/**
 * Rows kept in memory for the checks of a retrieve (cached-rows.ts): key rows, resource rows, and
 * authorization rows (counted one by one, in their resources' sets); past a bound the oldest are
 * read from storage again. At about 0.5 KiB a row, some 80 MB at most.
 */
export const MAX_CACHED_KEYS = 50_000;
export const MAX_CACHED_RESOURCES = 20_000;
export const MAX_CACHED_AUTHORIZATIONS = 100_000;
/** A cached row is read from storage again after this long (ms), should a word of the change feed be lost. */
export const ROW_CACHE_MS = 5_000;
/** Object keys kept unsealed in memory (keyring/kept-material.ts); past it the oldest are unsealed again. */
export const MAX_KEPT_KEYS = 10_000;
/** How long an unsealed object key is kept at most (ms): material of destroyed keys leaves memory soon. */
export const KEPT_KEY_MS = 60_000;
/** WebSocket frames one socket may have under way at once. */
export const MAX_IN_FLIGHT_PER_SOCKET = 256;

// Identity (bearer tokens, the IdP).
/** Bearers beyond this many UTF-8 bytes are refused before any parsing (a JWT with a few roles is ~1–2 KiB). */
export const MAX_TOKEN_BYTES = Limits.maxBearerChars;
/** Upper bound on how long a verification result is reused, whatever the token's lifetime. */
export const MAX_CACHE_MS = 10 * 60_000;
/** An introspection answer without `exp` is trusted this long, then asked again. */
export const NO_EXP_CACHE_MS = 60_000;
/** Verified tokens remembered at most. */
export const CACHE_MAX_ENTRIES = 10_000;
/** A slow IdP must not hold a KMS request for long; jose's remote JWKS uses the same 5 s. */
export const PROVIDER_TIMEOUT_MS = 5_000;
/** Discovery documents and introspection answers are small; refuse to buffer a runaway body. */
export const MAX_PROVIDER_RESPONSE_BYTES = 256 * 1024;
/** After a failed discovery, wait this long before asking the IdP again (failing fast meanwhile). */
export const DISCOVERY_RETRY_MS = 5_000;
/** `kms token` lifetime unless --ttl says otherwise (s). */
export const DEV_TOKEN_TTL_SECONDS = 3600;
/** Even development tokens should not live for ever: a leaked one stays useful at most this long (s). */
export const DEV_TOKEN_MAX_TTL_SECONDS = 30 * 24 * 3600;

// Peer proofs (PROTOCOL.md §6).
/** Largest accepted clock difference between two KMSs (seconds). */
export const MAX_SKEW_SECONDS = 300;
/**
 * A signed peer request is accepted once: its requestId is remembered in the database (shared by
 * every node) for the window in which its iat passes, 2 × MAX_SKEW_SECONDS after acceptance.
 * Signed requests one peer may have accepted within that window, across all nodes: beyond it
 * the peer is refused (429) until older ones leave the window (counted in 60 s slices, so it
 * may be refused up to a slice early). 600 000 in 600 s is 1000 requests/s from one peer,
 * sustained; the table then holds at most that many live rows per configured peer (~100 MB),
 * plus expired ones until the next sweep (`sweeper.intervalSeconds`).
 */
export const MAX_SEEN_PER_PEER = 600_000;

// Cache coherence between processes on one database (coherence.ts, store/change-signal.ts).
/** SQLite has no NOTIFY: every process reads the change feed this often (an indexed `seq > ?`). */
export const CHANGE_POLL_MS = 200;
/**
 * A cached channel is re-read from storage when it was last checked this long ago: the backstop
 * should a notification of its deletion be lost (the feed itself makes it ~immediate).
 */
export const CHANNEL_RECHECK_MS = 5_000;
/** Change feed entries read at once; more are read in further rounds. */
export const CHANGES_PER_READ = 1_000;
/**
 * Change feed entries are kept this long (wall clock) and at most MAX_KEPT_CHANGES of them; a
 * process that fell further behind finds a gap and flushes its caches instead.
 */
export const CHANGE_RETENTION_MS = 10 * 60_000;
export const MAX_KEPT_CHANGES = 100_000;
/**
 * A federation invalidation is remembered this long (wall clock) against fetches that began before
 * it: far longer than a fetch may take (federation.peerTimeout bounds it, a few seconds).
 */
export const INVALIDATION_RETENTION_MS = 10 * 60_000;
/** Waits before listening again after the listening connection dropped (then the last, repeated). */
export const LISTEN_RETRY_DELAYS_MS: readonly number[] = [250, 500, 1000, 2000, 5000];
/** The listening connection is probed this often, so a silently dead one is noticed. */
export const LISTEN_PROBE_MS = 5_000;
