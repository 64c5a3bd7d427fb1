/**
 * Ephemeral keys (channels) established by ECDHE. They are stored sealed, so channels survive a
 * restart, and cached in memory, so a common message costs no storage read. Expired or deleted
 * channels are never accepted again.
 */
import { randomUUID } from 'node:crypto';
import type { Keyring } from './keyring/keyring.js';
import { MAX_CACHED_CHANNELS } from './limits.js';
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

export class Channels {
  private readonly cache = new Map<string, Channel>();

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
    const id = randomUUID();
    const createdAt = this.now();
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

  /** The live channel with that id, or undefined when unknown, expired or deleted. */
  async get(id: string): Promise<Channel | undefined> {
    let channel = this.cache.get(id);
    if (!channel) {
      const row = await this.store.getChannel(id);
      if (!row) return undefined;
      const key = await this.keyring.unseal(row.cmkId, row.sealed, `ecdhe:${id}`);
      channel = { id, uri: this.uriOf(id), key, owner: row.owner, clientId: row.clientId, createdAt: row.createdAt, expiresAt: row.expiresAt };
      this.remember(channel);
    }
    if (channel.expiresAt <= this.now()) {
      // Deleted at once, not left to the sweeper: a clock stepping back must not revive it.
      await this.delete(id);
      return undefined;
    }
    return channel;
  }

  async delete(id: string): Promise<boolean> {
    this.forget(id);
    return this.store.deleteChannel(id);
  }

  /** Channels currently held in memory and not expired (for the channels-open gauge). */
  openCount(): number {
    const now = this.now();
    let n = 0;
    for (const c of this.cache.values()) if (c.expiresAt > now) n++;
    return n;
  }

  private remember(channel: Channel): void {
    if (this.cache.size >= MAX_CACHED_CHANNELS) {
      // Drop the oldest entry; it is re-read from storage if used again.
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    this.cache.set(channel.id, channel);
  }

  private forget(id: string): void {
    // Not wiped here: the answer to `delete /ecdhe/<id>` is still encrypted under this key.
    this.cache.delete(id);
  }
}
