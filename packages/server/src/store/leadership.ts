/**
 * Who leads the background work of the processes on one database (the sweeper, the push outbox):
 * the storage decides, so that exactly one process holds it at a time and a dead one lets go.
 *
 * - PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) held on a connection of its own,
 *   outside the pool (application_name 'openkms-leader'). PostgreSQL releases it when that session
 *   ends: the process died (its socket closed), or the connection dropped. Losing the connection
 *   is losing leadership at once: `onLost` is called and the holder stops its work. The lock key
 *   is derived from the schema, so KMSs in different schemas of one database elect separately.
 *   The session sets short TCP keepalives, so the server also ends the session of a leader whose
 *   host or network vanished without closing it (about 20 s) rather than after the OS default.
 *   A pooler in transaction mode (pgbouncer) must not sit on this connection: it would not keep
 *   the session.
 * - SQLite (one file, one host, one clock): a lease row, renewed by its holder with a conditional
 *   UPDATE and taken over by another process once it expired (LEADER_LEASE_MS). A holder that
 *   could not renew in time is no longer the leader: claim() answers false and it stops.
 *
 * Either way a former leader may still be finishing a step when the next one starts (a stalled
 * process, a dropped connection noticed late); the elected work is idempotent so that this
 * overlap is harmless (a sweep is one transaction, an invalidation pushed twice is one).
 */
import pg from 'pg';

export interface Leadership {
  /**
   * Becomes or stays the leader if it can: true while this process leads. Called periodically
   * by the holder (nodes/leader.ts); `now` is the wall clock (the lease's clock, on SQLite).
   */
  claim(now: number): Promise<boolean>;
  /** Called when leadership is lost between two claims (PostgreSQL: the connection dropped). */
  onLost: (() => void) | undefined;
  /** Gives leadership up, so that another process takes over at once (shutdown). */
  release(): Promise<void>;
}

/** What the SQLite lease needs of its store: the two conditional statements on the lease row, each durable when it resolves. */
export interface LeaseRow {
  /** Takes or renews the lease if free, expired or already held by `holder`; whether it did. */
  take(holder: string, now: number, until: number): Promise<boolean>;
  /** Gives it up if `holder` holds it. */
  give(holder: string): Promise<void>;
}

export class LeaseLeadership implements Leadership {
  onLost: (() => void) | undefined;

  constructor(
    private readonly row: LeaseRow,
    private readonly holder: string,
    private readonly leaseMs: number,
  ) {}

  async claim(now: number): Promise<boolean> {
    return this.row.take(this.holder, now, now + this.leaseMs);
  }

  async release(): Promise<void> {
    await this.row.give(this.holder);
  }
}

/** Advisory lock keys (two int4 form), as store/postgres.ts: the KMS class, then this one. */
const LOCK_LEADER = 0x4b4d5300 + 3;

export interface AdvisoryOptions {
  connectionString: string;
  /** Give up connecting, or a query, after this long. */
  timeoutMs: number;
}

export class AdvisoryLeadership implements Leadership {
  onLost: (() => void) | undefined;
  private client: pg.Client | undefined;
  private held = false;

  constructor(private readonly options: AdvisoryOptions) {}

  async claim(): Promise<boolean> {
    try {
      if (this.held) {
        // Still the session that holds the lock? A dead connection fails this query (or the
        // client's 'error'/'end' already dropped it).
        await this.client!.query('SELECT 1');
        return this.held;
      }
      const client = this.client ?? (await this.connect());
      const r = await client.query<{ locked: boolean }>(`SELECT pg_try_advisory_lock(${LOCK_LEADER}, hashtext(current_schema())) AS locked`);
      this.held = r.rows[0]?.locked === true && this.client === client;
      return this.held;
    } catch (err) {
      this.drop();
      throw err;
    }
  }

  private async connect(): Promise<pg.Client> {
    const { connectionString, timeoutMs } = this.options;
    const client = new pg.Client({
      connectionString,
      application_name: 'openkms-leader',
      connectionTimeoutMillis: timeoutMs,
      query_timeout: timeoutMs,
      keepAlive: true,
      keepAliveInitialDelayMillis: 5000,
    });
    const lost = () => {
      if (this.client !== client) return;
      this.drop();
    };
    client.on('error', lost);
    client.on('end', lost);
    await client.connect();
    // The server's side of the keepalive: a leader gone without a FIN loses its session (and the
    // lock) in about idle + interval × count seconds. Ignored on a Unix socket.
    await client.query('SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3');
    this.client = client;
    return client;
  }

  /** Forgets the connection (and with it the lock); tells the holder if it led. */
  private drop(): void {
    const client = this.client;
    const led = this.held;
    this.client = undefined;
    this.held = false;
    client?.end().catch(() => {});
    if (led) this.onLost?.();
  }

  async release(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.held = false;
    // Ending the session releases the lock: no unlock statement needed, nor one that could hang.
    await client?.end().catch(() => {});
  }
}
