/**
 * What every operation handler receives: the validated request, who sent it, and the narrow
 * parts of the KMS it may use. The interfaces below are declared here, where they are used, so
 * that operations depend on what they need and not on the classes that provide it (federation,
 * the bearer issuer): the assembly module (server.ts) hands in the implementations.
 */
import type { KmsRequest, KmsResponse } from '@openkms/protocol';
import type { CachedRows } from '../cached-rows.js';
import type { Channel, Channels } from '../channels.js';
import type { KmsConfig } from '../config.js';
import type { AnonymousClaims } from '../identity/anonymous.js';
import type { PeerPrincipal, Principal } from '../identity/principal.js';
import type { Keyring } from '../keyring/keyring.js';
import type { Store } from '../store/store.js';

/**
 * Something changed on these KROs (authorizations, bound keys, expiry): peers holding copies are
 * told. Awaited before answering: when it resolves, the push is durably queued (federation/push.ts).
 */
export interface ChangeNotifier {
  changed(resourceIds: readonly string[], userIds?: readonly string[]): Promise<void>;
}

/** Where a peer's invalidations are recorded (PROTOCOL.md §6): its copies here become stale. */
export interface InvalidationInbox {
  invalidated(authority: string, resourceUris: readonly string[]): Promise<number>;
}

/** Issues the bearers of anonymous authorizations (PROTOCOL.md §5). */
export interface BearerIssuer {
  issue(claims: AnonymousClaims): Promise<string>;
}

export interface Deps {
  authority: string;
  config: KmsConfig;
  store: Store;
  /** The rows of the common reads, cached (cached-rows.ts): only through guards.ts cachedFirst. */
  rows: CachedRows;
  keyring: Keyring;
  channels: Channels;
  bearers: BearerIssuer;
  changes: ChangeNotifier;
  inbox: InvalidationInbox;
  now: () => number;
}

export interface Context {
  request: KmsRequest;
  /** Who the request acts for (a peer's user, for a federated request). */
  principal: Principal;
  /** The peer KMS the request came through, if any. */
  peer?: PeerPrincipal;
  /** The authority of the object the request acts on: this KMS, or a peer's (served through federation). */
  authority: string;
  /** The `{id}` of the operation's path pattern, when it has one. */
  id: string;
  query: Map<string, string>;
  /** The channel the request came on (none for the handshake, which creates one). */
  channel?: Channel;
}

/** A handler answers with its status and members; the core adds requestId and seals it. */
export type Handler<D = Deps> = (ctx: Context, deps: D) => Promise<KmsResponse>;
