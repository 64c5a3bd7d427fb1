/**
 * The invalidation push (PROTOCOL.md §6), answering side: something changed on these KROs (an
 * authorization created or removed, a key bound, the KRO expired). Every peer that fetched one of
 * them — or one reaching them through a KRO authId — and the peers owning the affected users'
 * domains are told, asynchronously and with retries, so revocation and new keys take effect there
 * at once rather than at their staleness bound.
 */
import { KmsError } from '@openkms/protocol';
import { walkKros } from '../authorization-graph.js';
import { domainOf } from '../identity/users.js';
import { MAX_INVALIDATIONS_PER_PUSH, PUSH_RETRY_DELAYS_MS } from '../limits.js';
import type { Logger } from '../logger.js';
import type { ChangeNotifier } from '../operations/context.js';
import type { Store } from '../store/store.js';
import type { PeerChannels } from './peer-channels.js';
import type { Peer, PeerRegistry } from './peers.js';

export class InvalidationPush implements ChangeNotifier {
  /** Pushes under way (close() waits for them). */
  private readonly pushes = new Set<Promise<void>>();
  private closing = false;

  constructor(
    private readonly authority: string,
    private readonly peers: PeerRegistry,
    private readonly store: Pick<Store, 'peersThatFetched' | 'resourcesWithAuthId'>,
    private readonly channels: PeerChannels,
    private readonly logger: Logger,
  ) {}

  changed(resourceIds: readonly string[], userIds: readonly string[] = []): void {
    if (this.peers.all().length === 0 || resourceIds.length === 0) return;
    const push = this.push(resourceIds, userIds)
      .catch((err: Error) => this.logger.warn({ err: { message: err.message } }, 'federation invalidation failed'))
      .finally(() => this.pushes.delete(push));
    this.pushes.add(push);
  }

  private async push(resourceIds: readonly string[], userIds: readonly string[]): Promise<void> {
    const affected = await this.reaching(resourceIds);
    const targets = new Map<string, Set<string>>();
    const add = (authority: string, id: string) => {
      if (!this.peers.byAuthority(authority)) return; // a peer since removed: no longer told anything
      if (!targets.has(authority)) targets.set(authority, new Set());
      targets.get(authority)!.add(`kms://${this.authority}/resources/${id}`);
    };
    for (const id of affected) for (const authority of await this.store.peersThatFetched(id)) add(authority, id);
    for (const user of userIds) {
      const peer = user.includes('@') ? this.peers.byDomain(domainOf(user)) : undefined;
      if (peer) for (const id of affected) add(peer.authority, id);
    }
    await Promise.all([...targets].map(([authority, uris]) => this.pushTo(this.channels.peerOf(authority), [...uris])));
  }

  /** The KROs given plus those that reach them through KRO authIds (the walk's bounds apply). */
  private async reaching(resourceIds: readonly string[]): Promise<string[]> {
    const prefix = `kms://${this.authority}/resources/`;
    const seen: string[] = [];
    await walkKros(resourceIds, async (id) => {
      seen.push(id);
      return this.store.resourcesWithAuthId(prefix + id);
    });
    return seen;
  }

  private async pushTo(peer: Peer, resourceUris: string[]): Promise<void> {
    for (let i = 0; i < resourceUris.length; i += MAX_INVALIDATIONS_PER_PUSH) {
      const chunk = resourceUris.slice(i, i + MAX_INVALIDATIONS_PER_PUSH);
      const body = { method: 'update', uri: `kms://${peer.authority}/federation/invalidations`, resourceUris: chunk, federated: true };
      for (let attempt = 0; ; attempt++) {
        try {
          await this.channels.exchange(peer, body);
          await this.channels.audit('self', peer, 'update', body.uri, 204);
          break;
        } catch (err) {
          await this.channels.audit('self', peer, 'update', body.uri, err instanceof KmsError ? err.status : 502);
          const delay = PUSH_RETRY_DELAYS_MS[attempt];
          if (delay === undefined || this.closing) throw err;
          await new Promise((r) => setTimeout(r, delay));
        }
      }
    }
  }

  /** Waits for the pushes under way (their retries stop early). */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all([...this.pushes]);
  }
}
