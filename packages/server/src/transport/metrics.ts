/**
 * Prometheus metrics: requests by operation and status, latency, channels open, what is running
 * (kms_build_info; the start time is the default process_start_time_seconds). The `op` label
 * takes the operation table's names (plus `reset` and `unknown` for messages that never reached
 * an operation); every operation's latency series exists from the start, at zero.
 */
import { operations } from '@openkms/protocol';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RequestEvent } from '../core/answer.js';
import { KMS_VERSION } from '../version.js';

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'op' | 'status'>;
  private readonly latency: Histogram<'op'>;

  /** `leads`: whether this process leads the background work of its database (nodes/leader.ts). */
  constructor(channelsOpen: () => number, leads: () => boolean = () => false) {
    collectDefaultMetrics({ register: this.registry });
    this.requests = new Counter({
      name: 'kms_requests_total',
      help: 'KMS requests by operation and status',
      labelNames: ['op', 'status'],
      registers: [this.registry],
    });
    this.latency = new Histogram({
      name: 'kms_request_duration_seconds',
      help: 'Time to answer a KMS request, by operation',
      labelNames: ['op'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [this.registry],
    });
    for (const { name } of operations) this.latency.zero({ op: name });
    // Always 1: the labels say which version runs on which Node, so a fleet's upgrade shows.
    new Gauge({
      name: 'kms_build_info',
      help: 'The running KMS: its version and the Node.js version (value always 1)',
      labelNames: ['version', 'node'],
      registers: [this.registry],
    }).set({ version: KMS_VERSION, node: process.versions.node }, 1);
    new Gauge({
      name: 'kms_channels_open',
      help: 'Ephemeral-key channels held open (not expired) by this process',
      registers: [this.registry],
      collect() {
        this.set(channelsOpen());
      },
    });
    new Gauge({
      name: 'kms_leader',
      help: 'Whether this process leads the background work (sweeper, invalidation pushes) of the processes on its database: 1 or 0',
      registers: [this.registry],
      collect() {
        this.set(leads() ? 1 : 0);
      },
    });
  }

  observe = (event: RequestEvent): void => {
    this.requests.inc({ op: event.op, status: String(event.status) });
    this.latency.observe({ op: event.op }, event.seconds);
  };
}
