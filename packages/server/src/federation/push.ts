/**
 * The invalidation push (PROTOCOL.md §6), answering side: something changed on these KROs (an
 * authorization created or removed, a key bound, the KRO expired). Every peer that fetched one of
 * them — or one reaching them through a KRO authId — and the peers owning the affected users'
 * domains are told, with retries, so revocation and new keys take effect there at once rather
 * than at their staleness bound.
 *
 * Durable: `changed()` writes the change to the push outbox (a row of resource and user ids, never
 * key material) before the operation answers, and the node that leads the background work
 * (nodes/leader.ts) delivers it: it computes the targets on the first attempt, pushes, and deletes
 * the row, or keeps in it the peers still to tell with the next attempt's time (PUSH_RETRY_DELAYS_MS);
 * after the last attempt it logs and drops the row. A node that dies mid-delivery leaves the row,
 * and the next leader delivers it again: an invalidation told twice is told once. The writing node
 * delivers at once when it leads; otherwise the leader finds the row within PUSH_OUTBOX_POLL_MS.
 */
import { randomUUID } from 'node:crypto';
import { KmsError } from '@openkms/protocol';
import { walkKros } from '../authorization-graph.js';
import { domainOf } from '../identity/users.js';
import { MAX_INVALIDATIONS_PER_PUSH, MAX_PUSH_OUTBOX_IDS, MAX_PUSH_OUTBOX_ROWS, MAX_PUSHES_IN_FLIGHT, PUSH_OUTBOX_POLL_MS, PUSH_RETRY_DELAYS_MS } from '../limits.js';
import { describeError, type Logger } from '../logger.js';
import type { PushRow } from '../model.js';
import type { ChangeNotifier } from '../operations/context.js';
import type { Store } from '../store/store.js';
import type { PeerChannels } from './peer-channels.js';
import type { Peer, PeerRegistry } from './peers.js';

type OutboxStore = Pick<Store, 'peersThatFetched' | 'resourcesWithAuthId' | 'enqueuePush' | 'duePushes' | 'reschedulePush' | 'deletePush'>;

export class InvalidationPush implements ChangeNotifier {
  /** Rows being delivered by this node (by id): not picked again until settled. */
  private readonly delivering = new Map<string, Promise<void>>();
  private leading = false;
  private poll: NodeJS.Timeout | undefined;
  private readonly retries = new Set<NodeJS.Timeout>();
  private looking: Promise<void> | undefined;
  private lookAgain = false;

  constructor(
    private readonly authority: string,
    private readonly peers: PeerRegistry,
    private readonly store: OutboxStore,
    private readonly channels: PeerChannels,
    private readonly logger: Logger,
  ) {}

  /** Queues the change in the outbox (awaited before the operation answers) and kicks delivery. */
  async changed(resourceIds: readonly string[], userIds: readonly string[] = []): Promise<void> {
    if (this.peers.all().length === 0 || resourceIds.length === 0) return;
    const users = [...new Set(userIds)].slice(0, MAX_PUSH_OUTBOX_IDS);
    const ids = [...new Set(resourceIds)];
    for (let i = 0; i < ids.length; i += MAX_PUSH_OUTBOX_IDS) {
      const now = Date.now();
      const row: PushRow = { id: randomUUID(), createdAt: now, resourceIds: ids.slice(i, i + MAX_PUSH_OUTBOX_IDS), userIds: users, targets: null, attempts: 0, nextAttemptAt: now };
      if (!(await this.store.enqueuePush(row, MAX_PUSH_OUTBOX_ROWS))) {
        this.logger.warn({ resources: row.resourceIds.length, limit: MAX_PUSH_OUTBOX_ROWS }, 'the invalidation push outbox is full: this change is not pushed, peers see it at their staleness bound');
      }
    }
    this.kick();
  }

  /** Elected work (nodes/leader.ts): deliver the outbox while this node leads. */
  lead(): () => void {
    this.leading = true;
    this.poll = setInterval(() => this.kick(), PUSH_OUTBOX_POLL_MS);
    this.poll.unref();
    this.kick();
    return () => {
      this.leading = false;
      clearInterval(this.poll);
      for (const t of this.retries) clearTimeout(t);
      this.retries.clear();
    };
  }

  /** Looks for due rows now, if this node leads (one look at a time; a kick during one looks again after it). */
  private kick(): void {
    if (!this.leading) return;
    if (this.looking) {
      this.lookAgain = true;
      return;
    }
    this.looking = this.deliverDue()
      .catch((err: unknown) => this.logger.warn({ err: describeError(err) }, 'cannot read the invalidation push outbox'))
      .finally(() => {
        this.looking = undefined;
        if (this.lookAgain) {
          this.lookAgain = false;
          this.kick();
        }
      });
  }

  private async deliverDue(): Promise<void> {
    const room = MAX_PUSHES_IN_FLIGHT - this.delivering.size;
    if (room <= 0) return;
    const rows = await this.store.duePushes(Date.now(), room + this.delivering.size);
    for (const row of rows) {
      if (!this.leading || this.delivering.size >= MAX_PUSHES_IN_FLIGHT) break;
      if (this.delivering.has(row.id)) continue;
      const delivery = this.deliver(row)
        .catch((err: unknown) => this.logger.warn({ err: describeError(err) }, 'federation invalidation failed'))
        .finally(() => {
          this.delivering.delete(row.id);
          // Room again: rows waiting behind a full window are looked for now, not at the next poll.
          if (rows.length >= room) this.kick();
        });
      this.delivering.set(row.id, delivery);
    }
  }

  /** One attempt at one row: pushes what is left, then deletes it, reschedules it or gives up. */
  private async deliver(row: PushRow): Promise<void> {
    const targets = row.targets ?? (await this.targets(row.resourceIds, row.userIds));
    const left: Record<string, string[]> = {};
    await Promise.all(
      Object.entries(targets).map(async ([authority, uris]) => {
        if (!this.peers.byAuthority(authority)) return; // a peer since removed: no longer told anything
        const failed = await this.pushTo(this.channels.peerOf(authority), uris);
        if (failed.length > 0) left[authority] = failed;
      }),
    );
    if (Object.keys(left).length === 0) return this.store.deletePush(row.id);
    const attempts = row.attempts + 1;
    const delay = PUSH_RETRY_DELAYS_MS[attempts - 1];
    if (delay === undefined) {
      this.logger.warn({ peers: Object.keys(left), resources: Object.values(left).reduce((n, u) => n + u.length, 0), attempts }, 'gave up pushing invalidations: those peers see the change at their staleness bound');
      return this.store.deletePush(row.id);
    }
    await this.store.reschedulePush(row.id, left, attempts, Date.now() + delay);
    if (this.leading) {
      const retry = setTimeout(() => {
        this.retries.delete(retry);
        this.kick();
      }, delay);
      retry.unref();
      this.retries.add(retry);
    }
  }

  /** Per peer authority, the resource URIs to push there. */
  private async targets(resourceIds: readonly string[], userIds: readonly string[]): Promise<Record<string, string[]>> {
    const affected = await this.reaching(resourceIds);
    const targets = new Map<string, Set<string>>();
    const add = (authority: string, id: string) => {
      if (!this.peers.byAuthority(authority)) return;
      if (!targets.has(authority)) targets.set(authority, new Set());
      targets.get(authority)!.add(`kms://${this.authority}/resources/${id}`);
    };
    for (const id of affected) for (const authority of await this.store.peersThatFetched(id)) add(authority, id);
    for (const user of userIds) {
      const peer = user.includes('@') ? this.peers.byDomain(domainOf(user)) : undefined;
      if (peer) for (const id of affected) add(peer.authority, id);
    }
    return Object.fromEntries([...targets].map(([authority, uris]) => [authority, [...uris]]));
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

  /** Pushes the URIs in chunks, once each; returns those whose chunk failed. */
  private async pushTo(peer: Peer, resourceUris: string[]): Promise<string[]> {
    const failed: string[] = [];
    for (let i = 0; i < resourceUris.length; i += MAX_INVALIDATIONS_PER_PUSH) {
      const chunk = resourceUris.slice(i, i + MAX_INVALIDATIONS_PER_PUSH);
      const body = { method: 'update', uri: `kms://${peer.authority}/federation/invalidations`, resourceUris: chunk, federated: true };
      try {
        await this.channels.exchange(peer, body);
        await this.channels.audit('self', peer, 'update', body.uri, 204);
      } catch (err) {
        await this.channels.audit('self', peer, 'update', body.uri, err instanceof KmsError ? err.status : 502);
        failed.push(...chunk);
      }
    }
    return failed;
  }

  /** Waits for the deliveries under way; what is left stays in the outbox for the next leader. */
  async close(): Promise<void> {
    this.leading = false;
    clearInterval(this.poll);
    for (const t of this.retries) clearTimeout(t);
    await this.looking;
    await Promise.all([...this.delivering.values()]);
  }
}
