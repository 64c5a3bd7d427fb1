/**
 * How a process learns that the change feed (Store.changesAfter) moved: a signal only, the
 * changes themselves are read from the feed. PostgreSQL: the writing transaction sends
 * `pg_notify(CHANGES_CHANNEL, <schema>)`, delivered at its COMMIT to every connection that
 * LISTENs; the listening connection is a dedicated one (a pooled connection is handed to other
 * work and would lose the LISTEN), named `openkms-listen <pid>` in pg_stat_activity. When it drops, the
 * listener is told (`lost`: caches can no longer be trusted) and it connects again with backoff.
 * SQLite has no NOTIFY: the signal is a timer, and the feed read it triggers is one indexed query.
 *
 * A signal is not a storage call with a deadline (store/deadline.ts passes non-method members
 * through): it is long-lived, and the reads it triggers go through the wrapped store.
 */
import pg from 'pg';
import { CHANGE_POLL_MS, LISTEN_PROBE_MS, LISTEN_RETRY_DELAYS_MS } from '../limits.js';

/** The NOTIFY channel of every openkms database; the payload names the schema that changed. */
export const CHANGES_CHANNEL = 'openkms_changes';
/**
 * application_name of the listening connection (what an operator sees in pg_stat_activity), with
 * the process id: which node's listener it is.
 */
export const LISTEN_APPLICATION_NAME = 'openkms-listen';

export interface ChangeListener {
  /** Listening (again): anything before may have been missed, so the caches resynchronise. */
  listening(): void;
  /** The feed may have moved: read it. */
  changed(): void;
  /** Not listening any more: the caches cannot be trusted until listening() again. */
  lost(err: unknown): void;
}

export interface ChangeSignal {
  /** Starts telling `listener` (several may listen); told `listening()` once the signal is up. */
  start(listener: ChangeListener): void;
  /** Stops telling everyone and closes what the signal holds open. */
  stop(): Promise<void>;
}

/** SQLite: the feed is read every CHANGE_POLL_MS; it is always "listening". */
export class PollingSignal implements ChangeSignal {
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners = new Set<ChangeListener>();

  constructor(private readonly intervalMs = CHANGE_POLL_MS) {}

  start(listener: ChangeListener): void {
    this.listeners.add(listener);
    listener.listening();
    if (this.timer) return;
    this.timer = setInterval(() => {
      for (const l of this.listeners) l.changed();
    }, this.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.listeners.clear();
  }
}

/**
 * PostgreSQL: LISTEN on a connection of its own. `probeTimeoutMs`: a probe (`SELECT 1`, every
 * LISTEN_PROBE_MS) that has no answer within it counts as a lost connection, so a frozen server
 * or a vanished network is noticed, not only a closed socket; after each probe the listeners read
 * the feed, whether notified or not.
 */
export class PostgresSignal implements ChangeSignal {
  private readonly listeners = new Set<ChangeListener>();
  private client: pg.Client | undefined;
  /** Whether LISTEN is in force now. */
  private up = false;
  private stopped = false;
  private attempt = 0;
  private retry: NodeJS.Timeout | undefined;
  private probe: NodeJS.Timeout | undefined;

  constructor(
    private readonly connectionString: string,
    private readonly probeTimeoutMs: number,
  ) {}

  start(listener: ChangeListener): void {
    const first = this.listeners.size === 0;
    this.listeners.add(listener);
    if (first) void this.connect();
    else if (this.up) listener.listening();
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const client = new pg.Client({
      connectionString: this.connectionString,
      application_name: `${LISTEN_APPLICATION_NAME} ${process.pid}`,
      connectionTimeoutMillis: this.probeTimeoutMs,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
    this.client = client;
    let dropped = false;
    const drop = (err: unknown) => {
      if (dropped) return;
      dropped = true;
      this.dropped(client, err);
    };
    client.on('error', drop);
    client.on('end', () => drop(new Error('the listening connection ended')));
    try {
      await client.connect();
      // The schema this database's writers name in their payload (the search_path's first).
      const schema = (await client.query<{ s: string }>('SELECT current_schema() AS s')).rows[0]!.s;
      client.on('notification', (n) => {
        if (n.channel === CHANGES_CHANNEL && n.payload === schema) for (const l of this.listeners) l.changed();
      });
      await client.query(`LISTEN ${CHANGES_CHANNEL}`);
    } catch (err) {
      drop(err);
      return;
    }
    if (dropped || this.stopped) return;
    this.attempt = 0;
    this.probe = setInterval(() => void this.probeOnce(client, drop), LISTEN_PROBE_MS);
    this.probe.unref();
    this.up = true;
    for (const l of this.listeners) l.listening();
  }

  private async probeOnce(client: pg.Client, drop: (err: unknown) => void): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        client.query('SELECT 1'),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the listening connection did not answer within ${this.probeTimeoutMs} ms`)), this.probeTimeoutMs);
        }),
      ]);
    } catch (err) {
      drop(err);
      return;
    } finally {
      clearTimeout(timer);
    }
    // The feed is read at every probe too: a notification lost anyway costs at most this long.
    for (const l of this.listeners) l.changed();
  }

  private dropped(client: pg.Client, err: unknown): void {
    clearInterval(this.probe);
    client.removeAllListeners('notification');
    // Closing a broken client may throw or hang: neither matters, it is never used again.
    client.end().catch(() => {});
    if (this.stopped) return;
    this.up = false;
    for (const l of this.listeners) l.lost(err);
    const delays = LISTEN_RETRY_DELAYS_MS;
    const delay = delays[Math.min(this.attempt++, delays.length - 1)]!;
    this.retry = setTimeout(() => void this.connect(), delay);
    this.retry.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.up = false;
    this.listeners.clear();
    clearTimeout(this.retry);
    clearInterval(this.probe);
    const client = this.client;
    this.client = undefined;
    if (client) {
      client.removeAllListeners('end');
      client.on('error', () => {});
      await client.end().catch(() => {});
    }
  }
}
