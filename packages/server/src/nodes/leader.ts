/**
 * The background work of the processes on one database is done by one of them, the leader
 * (store/leadership.ts decides who): the sweeper, the delivery of the push outbox. Every process
 * claims leadership every LEADER_CLAIM_INTERVAL_MS; the one that gets it starts the elected work,
 * and stops it the moment it loses leadership (a claim refused or failing, the lock's connection
 * dropped). Gaining and losing are logged.
 */
import { LEADER_CLAIM_INTERVAL_MS } from '../limits.js';
import { describeError, type Logger } from '../logger.js';
import type { Leadership } from '../store/leadership.js';

/** Work only the leader does: start() when leadership is gained; the function it returns stops it. */
export type ElectedWork = () => () => void;

export class Leader {
  private leading = false;
  private readonly work: ElectedWork[] = [];
  private readonly stops: (() => void)[] = [];
  private timer: NodeJS.Timeout | undefined;
  private claiming: Promise<void> | undefined;
  private closed = false;
  /** Told when this process gains or loses leadership (the heartbeat records it at once). */
  onChange: ((leads: boolean) => void) | undefined;

  constructor(
    private readonly leadership: Leadership,
    private readonly node: string,
    private readonly logger: Logger,
  ) {
    leadership.onLost = () => this.lose('the connection holding leadership dropped');
  }

  /** Whether this process leads the background work now. */
  get leads(): boolean {
    return this.leading;
  }

  /** Adds work the leader does; started at once if this process leads. */
  whileLeading(start: ElectedWork): void {
    this.work.push(start);
    if (this.leading) this.stops.push(start());
  }

  /** Claims now, then every LEADER_CLAIM_INTERVAL_MS. Resolves after the first claim. */
  async start(): Promise<void> {
    await this.claim();
    if (this.closed) return;
    this.timer = setInterval(() => void this.claim(), LEADER_CLAIM_INTERVAL_MS);
    this.timer.unref();
  }

  private claim(): Promise<void> {
    // One claim at a time: a slow storage must not pile them up.
    return (this.claiming ??= (async () => {
      let won = false;
      try {
        won = await this.leadership.claim(Date.now());
      } catch (err) {
        if (this.leading) this.logger.warn({ err: describeError(err) }, 'cannot renew leadership');
      }
      if (this.closed) return;
      if (won) this.gain();
      else this.lose('another node holds leadership');
    })().finally(() => (this.claiming = undefined)));
  }

  private gain(): void {
    if (this.leading) return;
    this.leading = true;
    this.logger.info({ node: this.node }, 'this node leads the background work (sweeper, invalidation pushes)');
    for (const start of this.work) this.stops.push(start());
    this.onChange?.(true);
  }

  private lose(why: string): void {
    if (!this.leading) return;
    this.leading = false;
    for (const stop of this.stops.splice(0)) stop();
    this.logger.warn({ node: this.node, why }, 'this node no longer leads the background work');
    this.onChange?.(false);
  }

  /** Stops the elected work and gives leadership up, so another process takes over at once. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.claiming;
    if (this.leading) {
      this.leading = false;
      for (const stop of this.stops.splice(0)) stop();
      this.logger.info({ node: this.node }, 'this node gave up leading the background work (stopping)');
    }
    await this.leadership.release().catch(() => {});
  }
}
