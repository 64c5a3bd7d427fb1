/**
 * Keeps this node's caches in step with writes made by other processes on the same database
 * (nodes, workers): the change feed (Store.changesAfter) is read whenever the change signal says
 * it moved (store/change-signal.ts), and each change applied — a deleted channel is evicted, a
 * bound key or a resource whose authorizations changed is evicted from the cached rows
 * (cached-rows.ts), a CMK change refreshes the keyring. While the node is not listening (the
 * listening connection dropped), it trusts no cached channel or row (each use re-reads it) and is
 * not ready (Kms.ready → /readyz 503); once listening again it starts over from the feed's head
 * with empty caches, since anything meanwhile may be missed. A gap in the feed (entries swept
 * before this node read them) is handled the same way.
 */
import type { CachedRows } from './cached-rows.js';
import type { Channels } from './channels.js';
import type { Keyring } from './keyring/keyring.js';
import { CHANGES_PER_READ, CHANGE_POLL_MS } from './limits.js';
import { describeError, type Logger } from './logger.js';
import type { ChangeRow } from './model.js';
import type { ChangeListener } from './store/change-signal.js';
import type { Store } from './store/store.js';

type State = 'lost' | 'resync' | 'following';

export class Coherence implements ChangeListener {
  private state: State = 'lost';
  /** Moves on every listening()/lost(): a read begun before it does not set the state after it. */
  private generation = 0;
  /** The last change applied (valid while following). */
  private seen = 0;
  private running: Promise<void> | undefined;
  private again = false;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  private waiting: (() => void)[] = [];

  constructor(
    private readonly store: Pick<Store, 'changesAfter' | 'lastChange' | 'changeSignal'>,
    private readonly channels: Pick<Channels, 'evict' | 'setFollowing'>,
    private readonly rows: Pick<CachedRows, 'evictKey' | 'evictResource' | 'setFollowing'>,
    private readonly keyring: Pick<Keyring, 'refresh'>,
    private readonly logger: Logger,
  ) {}

  /** Whether each cache follows the feed (both, always together). */
  private follow(on: boolean): void {
    this.channels.setFollowing(on);
    this.rows.setFollowing(on);
  }

  start(): void {
    this.store.changeSignal.start(this);
  }

  /** Resolves once following, or after `ms` regardless (the node then stays not ready until it is). */
  settled(ms: number): Promise<void> {
    if (this.current()) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      timer.unref();
      this.waiting.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** The seq of the last change feed entry applied here (meaningful while following). */
  get applied(): number {
    return this.seen;
  }

  /** Whether this node follows the feed now (its caches can be trusted). */
  current(): boolean {
    return this.state === 'following';
  }

  listening(): void {
    this.generation++;
    this.state = 'resync';
    this.kick();
  }

  changed(): void {
    if (this.state === 'following') this.kick();
  }

  lost(err: unknown): void {
    if (this.closed) return;
    this.generation++;
    if (this.state === 'following') this.logger.warn({ err: describeError(err) }, 'lost the change notification connection: caches flushed, not ready until it is back');
    this.state = 'lost';
    this.follow(false);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
  }

  /** Runs one read at a time; a signal during a read makes one more after it. */
  private kick(): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.step();
        } catch (err) {
          // Storage did not answer: try again shortly (a notification may not come again).
          this.logger.warn({ err: describeError(err) }, 'cannot read the change feed; retrying');
          clearTimeout(this.retry);
          this.retry = setTimeout(() => this.kick(), CHANGE_POLL_MS);
          this.retry.unref();
        }
      } while (this.again && !this.closed);
      this.running = undefined;
    })();
  }

  private async step(): Promise<void> {
    const generation = this.generation;
    if (this.state === 'resync') {
      // The head first, then empty caches: a change after the head is read is applied next.
      const head = await this.store.lastChange();
      await this.keyring.refresh();
      if (generation !== this.generation) return;
      this.follow(true);
      this.seen = head;
      this.state = 'following';
      for (const w of this.waiting.splice(0)) w();
      // A change notified while resynchronising (ignored then) is read now.
      this.again = true;
      return;
    }
    if (this.state !== 'following') return;
    for (;;) {
      const changes = await this.store.changesAfter(this.seen, CHANGES_PER_READ);
      if (generation !== this.generation) return;
      if (changes.length === 0) return;
      if (changes[0]!.seq !== this.seen + 1) {
        this.logger.warn({ after: this.seen, next: changes[0]!.seq }, 'change feed entries were swept before this node read them: caches flushed');
        this.generation++;
        this.state = 'resync';
        this.follow(false);
        this.again = true;
        return;
      }
      await this.apply(changes);
      if (generation !== this.generation) return;
      this.seen = changes.at(-1)!.seq;
      if (changes.length < CHANGES_PER_READ) return;
    }
  }

  private async apply(changes: ChangeRow[]): Promise<void> {
    let cmks = false;
    for (const change of changes) {
      if (change.kind === 'channel') this.channels.evict(change.subject);
      else if (change.kind === 'key') this.rows.evictKey(change.subject);
      else if (change.kind === 'resource') this.rows.evictResource(change.subject);
      else cmks = true;
    }
    if (cmks) await this.keyring.refresh();
  }
}
