/**
 * Prometheus metrics (docs/metrics.md lists them): what runs (kms_build_info; the start time is the
 * default process_start_time_seconds), requests by operation and status with their latency, and
 * what an operator watches — storage latency and failures, audit write failures, federation calls
 * by peer and outcome, identity provider failures, sweeper runs, certificate expiry — plus gauges
 * any part registers (`gauge`). The transport serves `registry` at /metrics.
 *
 * Every label takes values from a closed set: operation names, statuses, Store method names,
 * configured peer authorities, fixed kinds and outcomes. Never a user, a key, a resource or a URI,
 * which would make the series unbounded and put who-did-what into the metrics.
 *
 * Each part declares the small callback it reports through (store/instrumented.ts, the audit log,
 * federation/peer-channels.ts, identity/provider.ts, core/kms.ts); server.ts hands it this object's
 * methods, so no part knows prom-client.
 */
import { operations } from '@openkms/protocol';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RequestEvent } from './core/answer.js';
import type { SweepOutcome } from './core/kms.js';
import type { PeerCall } from './federation/peer-channels.js';
import type { ProviderCall } from './identity/provider.js';
import type { StorageFailure } from './store/instrumented.js';
import { KMS_VERSION } from './version.js';

const STORAGE_FAILURES: readonly StorageFailure[] = ['timeout', 'unavailable', 'other'];
const PROVIDER_CALLS: readonly ProviderCall[] = ['jwks', 'discovery', 'introspection'];
const SWEPT = ['resource', 'key', 'channel'] as const;
/** Storage calls are fast unless something is wrong; the top buckets reach a typical deadline. */
const STORAGE_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** A peer call is a network round trip, a handshake on the first one. */
const PEER_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Prometheus metric names (the `kms_` ones are this module's; a part's gauge must be one too). */
const METRIC_NAME = /^kms_[a-z0-9_]+$/;

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'op' | 'status'>;
  private readonly latency: Histogram<'op'>;
  private readonly storageLatency: Histogram<'method'>;
  private readonly storageErrors: Counter<'method' | 'kind'>;
  private readonly auditFailures: Counter;
  private readonly peerCalls: Counter<'peer' | 'outcome'>;
  private readonly peerLatency: Histogram<'peer'>;
  private readonly providerFailures: Counter<'kind'>;
  private readonly sweeps: Counter<'outcome'>;
  private readonly swept: Counter<'kind'>;
  private readonly lastSweep: Gauge;

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    this.requests = new Counter({ name: 'kms_requests_total', help: 'KMS requests by operation and status', labelNames: ['op', 'status'], registers });
    this.latency = new Histogram({
      name: 'kms_request_duration_seconds',
      help: 'Time to answer a KMS request, by operation',
      labelNames: ['op'],
      // Sub-millisecond buckets: a common message is answered in a fraction of a millisecond.
      buckets: [0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    for (const { name } of operations) this.latency.zero({ op: name });
    // Always 1: the labels say which version runs on which Node, so a fleet's upgrade shows.
    new Gauge({
      name: 'kms_build_info',
      help: 'The running KMS: its version and the Node.js version (value always 1)',
      labelNames: ['version', 'node'],
      registers,
    }).set({ version: KMS_VERSION, node: process.versions.node }, 1);

    this.storageLatency = new Histogram({
      name: 'kms_storage_call_duration_seconds',
      help: 'Time a storage call took, failed or not, by Store method',
      labelNames: ['method'],
      buckets: STORAGE_BUCKETS,
      registers,
    });
    this.storageErrors = new Counter({
      name: 'kms_storage_errors_total',
      help: 'Storage calls that failed, by Store method and kind (timeout: ran out of time; unavailable: storage unreachable or connection lost; other)',
      labelNames: ['method', 'kind'],
      registers,
    });
    this.auditFailures = new Counter({
      name: 'kms_audit_write_failures_total',
      help: 'Audit records that could not be written; each one failed its request (500 or 503) or a readiness probe',
      registers,
    });
    this.peerCalls = new Counter({
      name: 'kms_federation_calls_total',
      help: 'Requests this KMS sent to a peer KMS, by peer authority and outcome (ok, 4xx, 5xx, unreachable, timeout, invalid, error)',
      labelNames: ['peer', 'outcome'],
      registers,
    });
    this.peerLatency = new Histogram({
      name: 'kms_federation_call_duration_seconds',
      help: 'Time a request to a peer KMS took, whatever its outcome, by peer authority',
      labelNames: ['peer'],
      buckets: PEER_BUCKETS,
      registers,
    });
    this.providerFailures = new Counter({
      name: 'kms_identity_provider_failures_total',
      help: 'Token checks that failed because the identity provider could not be used, by the call that failed (jwks, discovery, introspection)',
      labelNames: ['kind'],
      registers,
    });
    for (const kind of PROVIDER_CALLS) this.providerFailures.inc({ kind }, 0);
    this.sweeps = new Counter({ name: 'kms_sweeper_runs_total', help: 'Sweeper runs on this process, by outcome (ok, failed)', labelNames: ['outcome'], registers });
    for (const outcome of ['ok', 'failed']) this.sweeps.inc({ outcome }, 0);
    this.swept = new Counter({
      name: 'kms_sweeper_destroyed_total',
      help: 'Expired objects the sweeper destroyed, by kind (resource, key, channel)',
      labelNames: ['kind'],
      registers,
    });
    for (const kind of SWEPT) this.swept.inc({ kind }, 0);
    this.lastSweep = new Gauge({
      name: 'kms_sweeper_last_success_timestamp_seconds',
      help: 'When the last sweep of this process succeeded (Unix time; 0: none yet)',
      registers,
    });
  }

  /**
   * Registers a gauge read at every scrape: `value()` is what it is now (booleans as 0/1). For a
   * part's state, e.g. whether this node leads background work. A name is registered once.
   */
  gauge(name: string, help: string, value: () => number | boolean): void {
    if (!METRIC_NAME.test(name)) throw new RangeError(`metric name ${JSON.stringify(name)} must match ${METRIC_NAME}`);
    new Gauge({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.set(Number(value()));
      },
    });
  }

  /** As gauge(), one series per label value; `values()` gives each value's number (a closed set of labels). */
  labelledGauge<L extends string>(name: string, help: string, label: L, values: () => Iterable<[string, number]>): void {
    if (!METRIC_NAME.test(name)) throw new RangeError(`metric name ${JSON.stringify(name)} must match ${METRIC_NAME}`);
    new Gauge({
      name,
      help,
      labelNames: [label],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [labelValue, n] of values()) this.set({ [label]: labelValue } as Record<L, string>, n);
      },
    });
  }

  request = (event: RequestEvent): void => {
    this.requests.inc({ op: event.op, status: String(event.status) });
    this.latency.observe({ op: event.op }, event.seconds);
  };

  storageCall = (method: string, seconds: number, failure: StorageFailure | undefined): void => {
    this.storageLatency.observe({ method }, seconds);
    if (failure) this.storageErrors.inc({ method, kind: failure });
  };

  /** The methods a store has (store/instrumented.ts methodsOf): their series exist from the start. */
  storageMethods(methods: readonly string[]): void {
    for (const method of methods) {
      this.storageLatency.zero({ method });
      for (const kind of STORAGE_FAILURES) this.storageErrors.inc({ method, kind }, 0);
    }
  }

  auditWriteFailed = (records: number): void => {
    this.auditFailures.inc(records);
  };

  peerCall = (call: PeerCall): void => {
    this.peerCalls.inc({ peer: call.peer, outcome: call.outcome });
    this.peerLatency.observe({ peer: call.peer }, call.seconds);
  };

  providerFailed = (call: ProviderCall): void => {
    this.providerFailures.inc({ kind: call });
  };

  sweep = (outcome: SweepOutcome): void => {
    if (!outcome.ok) {
      this.sweeps.inc({ outcome: 'failed' });
      return;
    }
    this.sweeps.inc({ outcome: 'ok' });
    this.swept.inc({ kind: 'resource' }, outcome.result.resources);
    this.swept.inc({ kind: 'key' }, outcome.result.keys);
    this.swept.inc({ kind: 'channel' }, outcome.result.channels);
    this.lastSweep.set(outcome.at / 1000);
  };
}
