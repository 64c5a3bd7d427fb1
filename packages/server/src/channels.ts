/**
 * Ephemeral keys (channels) established by ECDHE. They are stored sealed, so channels survive a
 * restart and serve on every node, and cached in memory, so a common message costs no storage
 * read. Expired or deleted channels are never accepted again: a deletion on another node evicts
 * the cached channel here when the change feed says so (coherence.ts), and a cached channel is
 * re-checked against its row every CHANNEL_RECHECK_MS should that word be lost. While this node
 * cannot follow the feed, nothing new is cached and every message reads its channel's row.
 */
import { timeOrderedIds } from './ids.js';
import type { Keyring } from './keyring/keyring.js';
import { hasCode } from '@openkms/protocol';
import { CHANNEL_RECHECK_MS, MAX_CACHED_CHANNELS } from './limits.js';
import { isStorageUnavailable } from './store/deadline.js';
import type { Secret } from './secret.js';
import type { Store } from './store/store.js';

export interface Channel {
  id: string;
  uri: string;
  key: Secret;
  /** principalId() of its creator. */
  owner: string;
  clientId: string;
  createdAt: number;
  expiresAt: number;
}

interface Cached {
  channel: Channel;
  /** When its row was last read (now()). */
  checkedAt: number;
}

export class Channels {
  private readonly cache = new Map<string, Cached>();
  /** Whether this node follows the change feed: only then are channels cached and trusted. */
  private following = false;
  /**
   * Moves on every eviction: a read of a row begun before an eviction does not cache what it read,
   * which may be the row the eviction was about (deleted meanwhile on another node).
   */
  private epoch = 0;

  constructor(
    private readonly authority: string,
    private readonly store: Store,
    private readonly keyring: Keyring,
    private readonly now: () => number,
  ) {}

  uriOf(id: string): string {
    return `kms://${this.authority}/ecdhe/${id}`;
  }

  async create(owner: string, clientId: string, key: Secret, lifetimeMs: number): Promise<Channel> {
    const createdAt = this.now();
    // Time-ordered, as keys' (ids.ts): each handshake's row lands on the newest page of the index.
    const [id] = timeOrderedIds(1, createdAt) as [string];
    const channel: Channel = { id, uri: this.uriOf(id), key, owner, clientId, createdAt, expiresAt: createdAt + lifetimeMs };
    const cmk = this.keyring.activeCmk();
    await this.store.insertChannel({
      id,
      owner,
      clientId,
      createdAt,
      expiresAt: channel.expiresAt,
      cmkId: cmk.id,
      sealed: this.keyring.seal(cmk.id, key.reveal(), `ecdhe:${id}`),
    });
    this.remember(channel);
    return channel;
  }

  /**
   * The channel with that id when memory alone may answer for it now — cached, this node follows
   * the feed, its row read within CHANNEL_RECHECK_MS, not expired — else undefined, and `get` is
   * the way (it reads storage, and deletes a channel found expired). No I/O, no promise: the common
   * message of a live channel is opened without a turn of the event loop for its key.
   */
  cached(id: string): Channel | undefined {
    if (!this.following) return undefined;
    const cached = this.cache.get(id);
    if (cached === undefined) return undefined;
    const now = this.now();
    return now - cached.checkedAt < CHANNEL_RECHECK_MS && cached.channel.expiresAt > now ? cached.channel : undefined;
  }

  /** The live channel with that id, or undefined when unknown, expired or deleted. */
  async get(id: string): Promise<Channel | undefined> {
    const cached = this.cache.get(id);
    let channel = cached?.channel;
    // Not following the feed, a cached channel is trusted for nothing: its row is read at every use.
    if (cached && (!this.following || this.now() - cached.checkedAt >= CHANNEL_RECHECK_MS)) {
      const epoch = this.epoch;
      let exists: boolean;
      try {
        exists = (await this.store.getChannel(id)) !== undefined;
      } catch (err) {
        // Storage cannot tell: the cached key only opens the message, so that its answer (a 503:
        // nothing is answered without its audit record, which cannot be written either) reaches
        // the client under its channel instead of as an answer it cannot match to its request.
        if (isStorageUnavailable(err) || hasCode(err, 'STORAGE_UNAVAILABLE')) return this.live(cached.channel);
        throw err;
      }
      if (!exists) {
        this.evict(id);
        return undefined;
      }
      if (epoch === this.epoch) cached.checkedAt = this.now();
      else if (!this.cache.has(id)) return this.get(id);
    }
    if (!channel) {
      const epoch = this.epoch;
      const row = await this.store.getChannel(id);
      if (!row) return undefined;
      const key = await this.keyring.unseal(row.cmkId, row.sealed, `ecdhe:${id}`);
      channel = { id, uri: this.uriOf(id), key, owner: row.owner, clientId: row.clientId, createdAt: row.createdAt, expiresAt: row.expiresAt };
      if (epoch === this.epoch) this.remember(channel);
    }
    return this.live(channel);
  }

  private async live(channel: Channel): Promise<Channel | undefined> {
    if (channel.expiresAt <= this.now()) {
      // Deleted at once, not left to the sweeper: a clock stepping back must not revive it.
      await this.delete(channel.id);
      return undefined;
    }
    return channel;
  }

  async delete(id: string): Promise<boolean> {
    this.evict(id);
    return this.store.deleteChannel(id);
  }

  /** Channels currently held in memory and not expired (for the channels-open gauge). */
  openCount(): number {
    const now = this.now();
    let n = 0;
    for (const { channel } of this.cache.values()) if (channel.expiresAt > now) n++;
    return n;
  }

  /** Drops a channel from memory (deleted elsewhere): the next message reads its row. */
  evict(id: string): void {
    this.epoch++;
    // Not wiped here: the answer to `delete /ecdhe/<id>` is still encrypted under this key.
    this.cache.delete(id);
  }

  /**
   * This node follows the change feed (again): the cache starts empty, as changes may have been
   * missed. Or it does not any more (until it listens again): nothing new is cached, and what is
   * cached is not trusted, each use re-reads the row (get).
   */
  setFollowing(on: boolean): void {
    this.epoch++;
    if (on) this.cache.clear();
    this.following = on;
  }

  private remember(channel: Channel): void {
    if (!this.following) return;
    if (this.cache.size >= MAX_CACHED_CHANNELS) {
      // Drop the oldest entry; it is re-read from storage if used again.
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    this.cache.set(channel.id, { channel, checkedAt: this.now() });
  }
}
