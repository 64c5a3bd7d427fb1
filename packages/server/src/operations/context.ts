/** What every operation receives: the validated request, who sent it, and the KMS's parts. */
import type { KeyObject } from 'node:crypto';
import type { KmsRequest, KmsResponse } from '@openkms/protocol';
import type { Channel, Channels } from '../channels.js';
import type { KmsConfig } from '../config.js';
import type { AnonymousBearers } from '../identity/anonymous.js';
import type { PeerPrincipal, Principal } from '../identity/principal.js';
import type { PeerRegistry } from '../federation/peers.js';
import type { Federation } from '../federation/federation.js';
import type { Keyring } from '../keyring/keyring.js';
import type { Store } from '../store/store.js';

export interface Deps {
  authority: string;
  config: KmsConfig;
  store: Store;
  keyring: Keyring;
  channels: Channels;
  anonymous: AnonymousBearers;
  staticKey: { privateKey: KeyObject; kid: string };
  peers: PeerRegistry;
  federation: Federation;
  now: () => number;
}

export interface Context {
  request: KmsRequest;
  /** Who the request acts for (a peer's user, for a federated request). */
  principal: Principal;
  /** The peer KMS the request came through, if any. */
  peer?: PeerPrincipal;
  /** The authority the request's URI names: this KMS, or a peer's (served through federation). */
  authority: string;
  /** The `{id}` of the route's pattern, when it has one. */
  id: string;
  query: Map<string, string>;
  /** The channel the request came on. */
  channel: Channel;
}

/** An operation answers with its status and members; the core adds requestId and wraps it. */
export type Operation = (ctx: Context, deps: Deps) => Promise<KmsResponse>;
