/**
 * Each process on the database records itself in the nodes table every NODE_HEARTBEAT_MS (its
 * node id, host, pid, version, start, whether it leads), so that `kms status` can show the nodes
 * seen recently; rows unseen for NODE_FORGET_MS are removed by whoever writes next, and a process
 * that stops removes its own. A failed heartbeat is only logged at debug: storage problems are
 * reported by readiness and the requests themselves.
 */
import { hostname } from 'node:os';
import { NODE_FORGET_MS, NODE_HEARTBEAT_MS } from '../limits.js';
import { describeError, type Logger } from '../logger.js';
import type { Store } from '../store/store.js';
import { KMS_VERSION } from '../version.js';

export class Heartbeat {
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> | undefined;
  private readonly startedAt = Date.now();

  constructor(
    private readonly store: Pick<Store, 'heartbeat' | 'removeNode'>,
    private readonly node: string,
    private readonly leads: () => boolean,
    private readonly logger: Logger,
  ) {}

  /** Records this process now, then every NODE_HEARTBEAT_MS. */
  async start(): Promise<void> {
    await this.beat();
    this.timer = setInterval(() => void this.beat(), NODE_HEARTBEAT_MS);
    this.timer.unref();
  }

  /** Records this process now (also when it gains or loses leadership). */
  beat(): Promise<void> {
    return (this.beating ??= (async () => {
      const now = Date.now();
      const row = { id: this.node, host: hostname().slice(0, 255) || 'unknown', pid: process.pid, version: KMS_VERSION, startedAt: this.startedAt, seenAt: now, leading: this.leads() };
      await this.store.heartbeat(row, now - NODE_FORGET_MS).catch((err: unknown) => this.logger.debug({ err: describeError(err) }, 'node heartbeat failed'));
    })().finally(() => (this.beating = undefined)));
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.beating;
    await this.store.removeNode(this.node).catch(() => {});
  }
}
