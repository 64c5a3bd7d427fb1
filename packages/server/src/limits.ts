/**
 * The server's bounds, each in one place with why it is what it is. Limits of the protocol itself
 * (counts, sizes and lengths every implementation enforces) are the protocol package's `Limits`.
 */

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
/** KROs whose last re-fetch or invalidation is remembered in memory. */
export const MAX_TRACKED_KROS = 100_000;
/** A user missing from a fresh copy makes a re-fetch at most this often per KRO (ms). */
export const REFETCH_INTERVAL_MS = 1000;
/** Waits between attempts to push an invalidation to a peer (the staleness bound is the backstop). */
export const PUSH_RETRY_DELAYS_MS: readonly number[] = [200, 1000, 5000];
/** Resource URIs in one invalidation push. */
export const MAX_INVALIDATIONS_PER_PUSH = 100;

/** Channels kept unsealed in memory; past it the oldest are read from storage again. */
export const MAX_CACHED_CHANNELS = 100_000;
/** WebSocket frames one socket may have under way at once. */
export const MAX_IN_FLIGHT_PER_SOCKET = 256;
