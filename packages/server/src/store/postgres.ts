/**
 * The PostgreSQL store, for a KMS that needs a database server (several instances, managed
 * backups). It runs the same migrations as SQLite (migrations.ts) and passes the same contract
 * suite. Unlike better-sqlite3, requests really interleave here, so every method that reads to
 * decide and then writes is one transaction on one pooled connection holding row locks:
 *
 * - bindKey / createResource: the keys are locked `FOR UPDATE` (in id order, so two creates
 *   sharing keys cannot deadlock), then bindKey's resource `FOR KEY SHARE` (after the keys, in the
 *   order a sweep takes them: a sweep destroying it first makes the bind 'missing'); the shared
 *   rules decide, and only then is `bind_seq` taken from the counters row (`UPDATE … RETURNING`,
 *   which holds that row until COMMIT: bind order = commit order); the UPDATE keeps
 *   `resource_id IS NULL` in its WHERE as a second guard.
 * - addAuthorizations: the resource row is locked `FOR UPDATE` before counting, so concurrent
 *   adds to one resource queue up and the limit holds.
 * - insertCmk / setCmkState: a transaction-scoped advisory lock per CMK scope, so the
 *   deactivate-then-activate pair of two concurrent activations never trips the one-active index.
 * - sweep: the expired resources are locked `FOR UPDATE` first; a concurrent bind into one of them
 *   waits on its `FOR KEY SHARE` and then finds the resource gone: 'missing', as after the sweep.
 * - appendAudit: the one `audit_head` row is locked `FOR UPDATE`, so the batches of every process
 *   on the database extend one chain in lock order; the waiter reads the head its predecessor
 *   wrote (READ COMMITTED re-reads a locked row once it is released). The unique seq and
 *   prev_hash refuse a record that skipped the lock.
 * - deleteChannel / insertCmk / setCmkState: the change they record takes its seq from the
 *   change_seq counters row (`UPDATE … RETURNING`, held until COMMIT), so feed entries commit in
 *   seq order, and `pg_notify` in the same transaction wakes the other processes at COMMIT.
 * - invalidateCopies / putCopy: a transaction-scoped advisory lock per KRO URI (sorted); the
 *   invalidation's mark comes from the invalidation_seq counters row, held until COMMIT. A copy
 *   written first is then marked stale by the invalidation; one written after sees it and is refused.
 * - acceptPeerRequest: a transaction-scoped advisory lock per peer, so that two nodes given the
 *   same signed request decide one after the other and the peer's bound is counted exactly.
 * - migrations: one transaction each, under `pg_advisory_xact_lock`, re-reading
 *   `schema_migrations` inside the lock, so instances starting together apply each exactly once.
 *
 * A transaction that PostgreSQL aborts as a deadlock or serialization failure is retried whole.
 * pg returns BIGINT (and COUNT) as strings: every number goes through Number(); BYTEA is a Buffer.
 *
 * Isolation in a schema: `PostgresStore.open(url, { schema })`, or a `schema=NAME` query
 * parameter on the URL (removed before connecting): the schema is created if missing and is the
 * connection's whole search_path. NAME must be a lower-case SQL identifier.
 */
import pg from 'pg';
import { COPY_INVALIDATED } from '../model.js';
import type { AnswerClaim, AnswerClaimKey, AnswerClaimOutcome, AuditHead, AuditRow, AuthorizationRow, BindOutcome, ChangeRow, ChannelRow, CmkRow, ArchivedCopy, CopyRow, KeyBind, KeyFilter, KeyRow, NodeRow, PeerRequest, PeerRequestOutcome, PushRow, PutCopyOutcome, RememberedAnswer, ResourceRow, SweepResult } from '../model.js';
import { CHANGES_CHANNEL, PostgresSignal, type ChangeSignal } from './change-signal.js';
import { AdvisoryLeadership, type Leadership } from './leadership.js';
import { answerStateFromRow, archivedFromRow, auditFromRow, auditHeadFromRow, authorizationFromRow, changeFromRow, channelFromRow, cmkFromRow, copyFromRow, keyFromRow, nodeFromRow, num, pushFromRow, resourceFromRow, type Row, str } from './rows.js';
import { GroupCommit } from './group-commit.js';
import { ReadBatch } from './read-batch.js';
import { checkSchemaKnown, migrationSql, migrations } from './migrations.js';
import * as rules from './rules.js';
import type { Store } from './store.js';

type Queryable = Pick<pg.PoolClient, 'query'>;

export interface PostgresOptions {
  /** Keep every table in this schema (created if missing); overrides a `schema=` URL parameter. */
  schema?: string;
  /** Give up connecting after this long (default 10 s). */
  connectionTimeoutMillis?: number;
  /**
   * Once open, the longest a statement may take: pg gives up waiting for the answer (so a query
   * still queued on a connection is never sent late) and PostgreSQL cancels a statement that runs
   * or waits for a lock longer (57014, so a slow write is rolled back rather than committed after
   * the caller gave up). Default: none. Migrations are not bound by it.
   */
  statementTimeoutMillis?: number;
  /** Pool size (default 10). */
  max?: number;
}

/** pg sends a Buffer as bytea; a Uint8Array view is wrapped, not copied. */
const bytes = (u: Uint8Array): Buffer => (Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength));

const hex = (u: Uint8Array): string => bytes(u).toString('hex');

/**
 * The rows of a hot INSERT go as one JSON parameter, read by json_to_recordset: one statement text
 * whatever their count, prepared once per connection (a named statement), and one JSON.stringify
 * instead of a parameter per value, which pg would convert and PostgreSQL parse one by one. A
 * bytea column travels as hex. The strings are those the rules let through (store/rules.ts
 * checkText: no lone surrogate, no U+0000), which JSON carries as they are.
 */
function jsonRecords(columns: readonly (readonly [string, 'text' | 'bigint' | 'integer' | 'bytea'])[], json = '$1'): { names: string; select: string } {
  const names = columns.map(([c]) => c).join(', ');
  const read = columns.map(([c, t]) => (t === 'bytea' ? `decode(${c}, 'hex')` : c)).join(', ');
  const types = columns.map(([c, t]) => `${c} ${t === 'bytea' ? 'text' : t}`).join(', ');
  return { names, select: `SELECT ${read} FROM json_to_recordset(${json}::json) AS r (${types})` };
}
const jsonInsert = (table: string, columns: Parameters<typeof jsonRecords>[0]) => {
  const { names, select } = jsonRecords(columns);
  return `INSERT INTO ${table} (${names}) ${select}`;
};

const INSERT_KEYS = jsonInsert('keys', [['id', 'text'], ['user_id', 'text'], ['client_id', 'text'], ['created_at', 'bigint'], ['expires_at', 'bigint'], ['resource_id', 'text'], ['bind_date', 'bigint'], ['bind_seq', 'bigint'], ['cmk_id', 'text'], ['sealed', 'bytea']]);
const keysJson = (rows: readonly KeyRow[]) =>
  JSON.stringify(rows.map((k) => ({ id: k.id, user_id: k.userId, client_id: k.clientId, created_at: k.createdAt, expires_at: k.expiresAt, resource_id: k.resourceId, bind_date: k.bindDate, bind_seq: k.bindSeq, cmk_id: k.cmkId, sealed: hex(k.sealed) })));
const INSERT_AUTHORIZATIONS = jsonInsert('authorizations', [['id', 'text'], ['resource_id', 'text'], ['auth_id', 'text'], ['role_uri', 'text'], ['created_at', 'bigint']]);
const authorizationsJson = (rows: readonly AuthorizationRow[]) =>
  JSON.stringify(rows.map((a) => ({ id: a.id, resource_id: a.resourceId, auth_id: a.authId, role_uri: a.roleUri, created_at: a.createdAt })));
const INSERT_CHANNELS = jsonInsert('channels', [['id', 'text'], ['owner', 'text'], ['client_id', 'text'], ['created_at', 'bigint'], ['expires_at', 'bigint'], ['cmk_id', 'text'], ['sealed', 'bytea']]);
const channelsJson = (rows: readonly ChannelRow[]) =>
  JSON.stringify(rows.map((c) => ({ id: c.id, owner: c.owner, client_id: c.clientId, created_at: c.createdAt, expires_at: c.expiresAt, cmk_id: c.cmkId, sealed: hex(c.sealed) })));
const AUDIT_RECORDS = jsonRecords(
  [['seq', 'bigint'], ['time', 'bigint'], ['principal', 'text'], ['on_behalf_of', 'text'], ['client_id', 'text'], ['method', 'text'], ['uri', 'text'], ['status', 'integer'], ['peer', 'text'], ['request_id', 'text'], ['node', 'text'], ['prev_hash', 'text'], ['hash', 'text']],
  '$5',
);
const auditJson = (rows: readonly AuditRow[]) =>
  JSON.stringify(
    rows.map((a) => ({ seq: a.seq, time: a.time, principal: a.principal, on_behalf_of: a.onBehalfOf ?? null, client_id: a.clientId, method: a.method, uri: a.uri, status: a.status, peer: a.peer, request_id: a.requestId, node: a.node, prev_hash: a.prevHash, hash: a.hash })),
  );
/**
 * One batch of audit records after the head $1/$2, which becomes $3/$4, in one statement: the head
 * row moves only if it still is $1/$2 (READ COMMITTED re-reads a row another batch moved meanwhile,
 * after that one committed), and the records are written only if it moved. rowCount says which.
 * In seq order: each record's trigger (migration 13) reads the one before it.
 */
const APPEND_AUDIT = `WITH head AS (UPDATE audit_head SET seq = $3, hash = $4 WHERE id = 1 AND seq = $1 AND hash = $2 RETURNING id)
INSERT INTO audit (${AUDIT_RECORDS.names}) ${AUDIT_RECORDS.select} WHERE EXISTS (SELECT 1 FROM head) ORDER BY seq`;

const CLAIM_ANSWER = `INSERT INTO retry_answers (channel_id, request_id, digest, claimant, lease_until, answer_until, expires_at, answered, cmk_id, sealed)
VALUES ($1, $2, $3, $4, $5, $6, $7, 0, NULL, NULL) ON CONFLICT (channel_id, request_id) DO NOTHING`;

/** Rows per multi-row INSERT (restores, snapshot.ts): at most 12 columns, far below PostgreSQL's 65535 parameters. */
const CHUNK = 1000;

function insertSql(table: string, columns: string[], rows: number): string {
  const n = columns.length;
  const tuples = Array.from({ length: rows }, (_, r) => `(${columns.map((_, c) => `$${r * n + c + 1}`).join(', ')})`);
  return `INSERT INTO ${table} (${columns.join(', ')}) VALUES ${tuples.join(', ')}`;
}

export async function insertRows(q: Queryable, table: string, columns: string[], values: unknown[][]): Promise<void> {
  for (let i = 0; i < values.length; i += CHUNK) {
    const chunk = values.slice(i, i + CHUNK);
    await q.query(insertSql(table, columns, chunk.length), chunk.flat());
  }
}


/** Advisory lock keys (two int4 form): class, then a constant or a hash. */
export const LOCK_CLASS = 0x4b4d5300; // 'KMS\0'
export const LOCK_MIGRATE = 1;
/** Second key: hashtext(peer authority); see acceptPeerRequest. (LOCK_CLASS + 1: CMK scopes.) */
const LOCK_PEER_REQUESTS = LOCK_CLASS + 2;
/** Second key: hashtext(resource URI); see putCopy and invalidateCopies. */
const LOCK_COPY = LOCK_CLASS + 3;

/** Transient failures after which a transaction is simply run again. */
const RETRYABLE = new Set(['40P01' /* deadlock_detected */, '40001' /* serialization_failure */]);

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * Takes the `schema` query parameter out of the URL and, with a schema, adds
 * `-c search_path=NAME` to the connection's `options` (a parameter of the URL, because pg lets
 * the connection string override the pool's own settings).
 */
export function postgresConnection(url: string, schemaOption?: string): { connectionString: string; schema: string | undefined } {
  const q = url.indexOf('?');
  const base = q < 0 ? url : url.slice(0, q);
  const params = new URLSearchParams(q < 0 ? '' : url.slice(q + 1));
  const schema = schemaOption ?? params.get('schema') ?? undefined;
  params.delete('schema');
  if (schema !== undefined) {
    if (!SCHEMA_NAME.test(schema)) throw new RangeError(`schema must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63), got ${JSON.stringify(schema)}`);
    const options = params.get('options');
    params.set('options', `${options ? `${options} ` : ''}-c search_path=${schema}`);
  }
  const query = params.toString();
  return { connectionString: query ? `${base}?${query}` : base, schema };
}

export class PostgresStore implements Store {
  readonly kind = 'postgres' as const;
  private closed: Promise<void> | undefined;
  /** Handshakes are frequent and independent: their channel rows share one INSERT. */
  private readonly channelCommits = new GroupCommit<ChannelRow>(async (rows) => {
    await this.pool.query({ name: 'kms_insert_channels', text: INSERT_CHANNELS, values: [channelsJson(rows)] });
  });
  /** The audit head as this process's last batch left it: the next batch is linked to it first. */
  private lastAuditHead: AuditHead | undefined;
  /** Every retrieveKey reads these three: a turn's reads share one query each (read-batch.ts). */
  private readonly keyReads = new ReadBatch<string, KeyRow | undefined>(
    async (ids) => {
      const r = await this.pool.query<Row>({ name: 'kms_get_keys', text: 'SELECT * FROM keys WHERE id = ANY($1::text[])', values: [ids] });
      return new Map(r.rows.map((row) => [row.id as string, keyFromRow(row)]));
    },
    () => undefined,
    (k) => k && { ...k },
  );
  private readonly resourceReads = new ReadBatch<string, ResourceRow | undefined>(
    async (ids) => {
      const r = await this.pool.query<Row>({ name: 'kms_get_resources', text: 'SELECT * FROM resources WHERE id = ANY($1::text[])', values: [ids] });
      return new Map(r.rows.map((row) => [row.id as string, resourceFromRow(row)]));
    },
    () => undefined,
    (r) => r && { ...r },
  );
  private readonly authorizationReads = new ReadBatch<string, AuthorizationRow[]>(
    async (ids) => {
      // COLLATE "C": the byte order SQLite uses, whatever the database's collation.
      const r = await this.pool.query<Row>({
        name: 'kms_list_authorizations',
        text: 'SELECT * FROM authorizations WHERE resource_id = ANY($1::text[]) ORDER BY resource_id, created_at, id COLLATE "C"',
        values: [ids],
      });
      const byResource = new Map<string, AuthorizationRow[]>();
      for (const row of r.rows) {
        const id = row.resource_id as string;
        let list = byResource.get(id);
        if (!list) byResource.set(id, (list = []));
        list.push(authorizationFromRow(row));
      }
      return byResource;
    },
    () => [],
    (rows) => rows.map((a) => ({ ...a })),
  );

  readonly changeSignal: ChangeSignal;

  private constructor(
    private readonly pool: pg.Pool,
    /** The schema the tables live in, when one was asked for. */
    readonly schema: string | undefined,
    /** The database's own connections outside the pool: the listener's and the leader's. */
    private readonly direct: { connectionString: string; probeTimeoutMs: number },
  ) {
    this.changeSignal = new PostgresSignal(direct.connectionString, direct.probeTimeoutMs);
  }

  /** Connects, creates the schema if asked, applies pending migrations; throws if unreachable. */
  static async open(url: string, options: PostgresOptions = {}): Promise<PostgresStore> {
    const { connectionString, schema } = postgresConnection(url, options.schema);
    const timeoutMs = options.connectionTimeoutMillis ?? 10_000;
    // Migrations run on a pool of their own, without the statement timeout: a migration may
    // rightly take longer than any request should.
    const migrating = PostgresStore.pool({ connectionString, connectionTimeoutMillis: timeoutMs, max: 1 });
    const started = Date.now();
    try {
      await new PostgresStore(migrating, schema, { connectionString, probeTimeoutMs: timeoutMs }).migrate();
    } catch (err) {
      // pg reports its own connect timeout as "Connection terminated unexpectedly": say what it was.
      if (Date.now() - started >= timeoutMs && /Connection terminated/i.test((err as Error).message ?? '')) {
        throw Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' });
      }
      throw err;
    } finally {
      await migrating.end().catch(() => {});
    }
    const statementMs = options.statementTimeoutMillis;
    const serving = PostgresStore.pool({
      connectionString,
      connectionTimeoutMillis: timeoutMs,
      max: options.max ?? 10,
      ...(statementMs === undefined ? {} : { query_timeout: statementMs, statement_timeout: statementMs }),
    });
    return new PostgresStore(serving, schema, { connectionString, probeTimeoutMs: statementMs ?? timeoutMs });
  }

  /**
   * A pool that survives the database going away and serves again when it returns, without a
   * restart: a connection that failed is never handed out again (pg-pool drops a client released
   * with an error, or that errs while idle), and the next checkout opens a fresh one. TCP
   * keepalive finds a connection whose peer vanished without a FIN (a host or network gone).
   */
  private static pool(config: pg.PoolConfig): pg.Pool {
    const pool = new pg.Pool({ ...config, keepAlive: true, keepAliveInitialDelayMillis: 10_000 });
    // An idle connection dropped by the server must not crash the process: the next query on a
    // fresh connection reports (and ping() makes readiness fail) if the server is really gone.
    pool.on('error', () => {});
    // Nor one that errs while checked out between two queries (pg emits that on the client; the
    // query in progress, if any, gets the error itself and its caller releases the client with it).
    pool.on('connect', (client) => client.on('error', () => {}));
    return pool;
  }

  private async migrate(): Promise<void> {
    const lock = `SELECT pg_advisory_xact_lock(${LOCK_CLASS}, ${LOCK_MIGRATE})`;
    await this.tx(async (c) => {
      await c.query(lock);
      if (this.schema) await c.query(`CREATE SCHEMA IF NOT EXISTS ${this.schema}`);
      await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)');
      checkSchemaKnown(Number((await c.query('SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations')).rows[0].v));
    });
    for (const m of migrations) {
      await this.tx(async (c) => {
        await c.query(lock);
        // Read under the lock: another instance may have applied it while we waited.
        if ((await c.query('SELECT 1 FROM schema_migrations WHERE version = $1', [m.version])).rowCount) return;
        await c.query(migrationSql(m, 'postgres'));
        await c.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [m.version, m.name, Date.now()]);
      });
    }
  }

  /**
   * Records a change for other processes' caches inside the caller's transaction, and notifies
   * the listeners of this schema at COMMIT (store/change-signal.ts).
   */
  private async recordChange(c: Queryable, kind: ChangeRow['kind'], subject: string): Promise<void> {
    return this.recordChanges(c, kind, [subject]);
  }

  /** recordChange for several subjects of one kind: one statement, seqs in the order given. */
  private async recordChanges(c: Queryable, kind: ChangeRow['kind'], subjects: string[]): Promise<void> {
    if (subjects.length === 0) return;
    await c.query(
      `WITH next AS (UPDATE counters SET value = value + $3 WHERE name = 'change_seq' RETURNING value)
       INSERT INTO changes (seq, kind, subject, at)
         SELECT next.value - $3 + s.n, $1, s.subject, $4 FROM next, unnest($2::text[]) WITH ORDINALITY AS s (subject, n)`,
      [kind, subjects, subjects.length, Date.now()],
    );
    await c.query(`SELECT pg_notify('${CHANGES_CHANNEL}', current_schema())`);
  }

  /** Runs `fn` in one transaction on one connection: COMMIT, or ROLLBACK and rethrow. */
  private async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.pool.connect();
      try {
        await client.query('BEGIN');
        const result = await fn(client);
        await client.query('COMMIT');
        client.release();
        return result;
      } catch (err) {
        try {
          await client.query('ROLLBACK');
          client.release();
        } catch (rollbackErr) {
          client.release(rollbackErr as Error); // a broken connection leaves the pool
        }
        if (attempt < 3 && RETRYABLE.has((err as { code?: string }).code ?? '')) continue;
        throw err;
      }
    }
  }

  private async one(sql: string, params: unknown[]): Promise<Row | undefined> {
    return (await this.pool.query<Row>(sql, params)).rows[0];
  }

  async insertKeys(rows: KeyRow[]): Promise<void> {
    rows.forEach(rules.checkKeyRow);
    if (rows.length === 0) return;
    // One statement: all the rows or none.
    await this.pool.query({ name: 'kms_insert_keys', text: INSERT_KEYS, values: [keysJson(rows)] });
  }

  getKey(id: string): Promise<KeyRow | undefined> {
    return this.keyReads.load(id);
  }

  /**
   * Decides and binds inside the caller's transaction, all or nothing: the caller rolls back
   * unless this returns 'bound'. `resourceIsNew`: this transaction inserted the resource, so it
   * exists and nobody else sees it yet; otherwise (bindKey) it is locked against a sweep.
   */
  private async bindInTx(c: pg.PoolClient, binds: KeyBind[], resourceId: string, resourceIsNew: boolean): Promise<BindOutcome> {
    const ids = [...new Set(binds.map((b) => b.id))];
    const locked = ids.length === 0 ? [] : (await c.query<Row>('SELECT * FROM keys WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE', [ids])).rows;
    const keys = new Map(locked.map((r) => [r.id as string, keyFromRow(r)]));
    const resource = resourceIsNew || ((await c.query('SELECT 1 FROM resources WHERE id = $1 FOR KEY SHARE', [resourceId])).rowCount ?? 0) === 1;
    const outcome = rules.bindOutcome(binds, { resource, keys });
    if (outcome !== 'bound' || binds.length === 0) return outcome;
    // Reserves binds.length numbers at once; the counters row stays locked until COMMIT.
    const counter = await c.query<Row>(`UPDATE counters SET value = value + $1 WHERE name = 'bind_seq' RETURNING value`, [binds.length]);
    const writes = rules.bindWrites(binds, resourceId, num(counter.rows[0]!.value));
    const updated = await c.query(
      `UPDATE keys AS k SET resource_id = $1, bind_date = u.bind_date, bind_seq = u.bind_seq, expires_at = u.expires_at
       FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) AS u (id, bind_date, bind_seq, expires_at)
       WHERE k.id = u.id AND k.resource_id IS NULL`,
      [resourceId, writes.map((w) => w.id), writes.map((w) => w.bindDate), writes.map((w) => w.bindSeq), writes.map((w) => w.expiresAt)],
    );
    // Cannot differ while the rows are locked; kept as the contract's guard.
    if (updated.rowCount !== binds.length) return 'already-bound';
    await this.recordChanges(c, 'key', writes.map((w) => w.id));
    return 'bound';
  }

  async bindKey(bind: KeyBind & { resourceId: string }): Promise<BindOutcome> {
    return this.bindOrRollBack(async (c) => this.bindInTx(c, [bind], bind.resourceId, false));
  }

  /** Runs `fn` in a transaction that commits only when it returns 'bound'; otherwise returns its outcome. */
  private async bindOrRollBack(fn: (c: pg.PoolClient) => Promise<BindOutcome>): Promise<BindOutcome> {
    try {
      return await this.tx(async (c) => {
        const outcome = await fn(c);
        if (outcome !== 'bound') throw new rules.BindRefused(outcome);
        return outcome;
      });
    } catch (err) {
      if (err instanceof rules.BindRefused) return err.outcome;
      throw err;
    }
  }

  async keysCreatedBy(userId: string, afterId: string, limit: number): Promise<KeyRow[]> {
    rules.checkText('userId', userId);
    rules.checkText('afterId', afterId);
    rules.checkCount('limit', limit);
    // COLLATE "C": the byte order SQLite uses, whatever the database's collation.
    const r = await this.pool.query<Row>('SELECT * FROM keys WHERE user_id = $1 AND id > $2 COLLATE "C" ORDER BY id COLLATE "C" LIMIT $3', [userId, afterId, limit]);
    return r.rows.map(keyFromRow);
  }

  async listResourceKeys(resourceId: string, filter: KeyFilter = {}): Promise<KeyRow[]> {
    rules.checkKeyFilter(filter);
    const args: unknown[] = [resourceId];
    const where = ['resource_id = $1'];
    if (filter.boundAfter !== undefined) {
      args.push(filter.boundAfter);
      where.push(`bind_date >= $${args.length}`);
    }
    if (filter.boundBefore !== undefined) {
      args.push(filter.boundBefore);
      where.push(`bind_date < $${args.length}`);
    }
    let sql = `SELECT * FROM keys WHERE ${where.join(' AND ')} ORDER BY bind_date DESC, bind_seq DESC`;
    if (filter.limit !== undefined) {
      args.push(filter.limit);
      sql += ` LIMIT $${args.length}`;
    }
    return (await this.pool.query<Row>(sql, args)).rows.map(keyFromRow);
  }

  async createResource(resource: ResourceRow, authorizations: AuthorizationRow[], binds: KeyBind[]): Promise<BindOutcome> {
    rules.checkResourceRow(resource);
    authorizations.forEach(rules.checkAuthorizationRow);
    return this.bindOrRollBack(async (c) => {
      await c.query('INSERT INTO resources (id, creator, created_at, expires_at) VALUES ($1, $2, $3, $4)', [
        resource.id,
        resource.creator,
        resource.createdAt,
        resource.expiresAt,
      ]);
      if (authorizations.length > 0) await c.query({ name: 'kms_insert_authorizations', text: INSERT_AUTHORIZATIONS, values: [authorizationsJson(authorizations)] });
      await this.recordChange(c, 'resource', resource.id);
      return this.bindInTx(c, binds, resource.id, true);
    });
  }

  getResource(id: string): Promise<ResourceRow | undefined> {
    return this.resourceReads.load(id);
  }

  async addAuthorizations(resourceId: string, rows: AuthorizationRow[], limit: number): Promise<AuthorizationRow[] | 'over-limit'> {
    return this.tx(async (c) => {
      // Concurrent adds to this resource wait here, so each counts what the previous one wrote.
      await c.query('SELECT id FROM resources WHERE id = $1 FOR UPDATE', [resourceId]);
      const count = num((await c.query<Row>('SELECT COUNT(*) AS n FROM authorizations WHERE resource_id = $1', [resourceId])).rows[0]!.n);
      const authIds = rules.authIdsOf(rows);
      const byAuthId = new Map<string, AuthorizationRow>();
      if (authIds.length > 0) {
        const found = await c.query<Row>('SELECT * FROM authorizations WHERE resource_id = $1 AND auth_id = ANY($2::text[])', [resourceId, authIds]);
        for (const r of found.rows) byAuthId.set(r.auth_id as string, authorizationFromRow(r));
      }
      const plan = rules.planAuthorizations(resourceId, rows, { count, byAuthId }, limit);
      if (plan === 'over-limit') return plan;
      if (plan.inserts.length > 0) {
        await c.query({ name: 'kms_insert_authorizations', text: INSERT_AUTHORIZATIONS, values: [authorizationsJson(plan.inserts)] });
        await this.recordChange(c, 'resource', resourceId);
      }
      return plan.answer;
    });
  }

  listAuthorizations(resourceId: string): Promise<AuthorizationRow[]> {
    return this.authorizationReads.load(resourceId);
  }

  async resourcesWithAuthId(authId: string): Promise<string[]> {
    // One row per resource at most: authorizations_unique (resource_id, auth_id).
    const r = await this.pool.query<Row>('SELECT resource_id FROM authorizations WHERE auth_id = $1 ORDER BY resource_id COLLATE "C"', [authId]);
    return r.rows.map((x) => x.resource_id as string);
  }

  async getAuthorization(id: string): Promise<AuthorizationRow | undefined> {
    const r = await this.one('SELECT * FROM authorizations WHERE id = $1', [id]);
    return r && authorizationFromRow(r);
  }

  async deleteAuthorizations(resourceId: string, ids: string[]): Promise<AuthorizationRow[]> {
    if (ids.length === 0) return [];
    const r = await this.tx(async (c) => {
      const r = await c.query<Row>('DELETE FROM authorizations WHERE resource_id = $1 AND id = ANY($2::text[]) RETURNING *', [resourceId, ids]);
      if ((r.rowCount ?? 0) > 0) await this.recordChange(c, 'resource', resourceId);
      return r;
    });
    const deleted = new Map(r.rows.map((x) => [x.id as string, authorizationFromRow(x)]));
    // In the order asked for, like SQLite.
    return [...new Set(ids)].flatMap((id) => {
      const row = deleted.get(id);
      return row ? [row] : [];
    });
  }

  async insertChannel(row: ChannelRow): Promise<void> {
    // Refused here, not in the batch: one bad row must not fail the others' commit.
    rules.checkChannelRow(row);
    return this.channelCommits.add(row);
  }

  async getChannel(id: string): Promise<ChannelRow | undefined> {
    const r = await this.one('SELECT * FROM channels WHERE id = $1', [id]);
    return r && channelFromRow(r);
  }

  async deleteChannel(id: string): Promise<boolean> {
    return this.tx(async (c) => {
      const deleted = ((await c.query('DELETE FROM channels WHERE id = $1', [id])).rowCount ?? 0) === 1;
      if (deleted) await this.recordChange(c, 'channel', id);
      return deleted;
    });
  }

  /** Serializes activations within one CMK scope (null: the default scope) until COMMIT. */
  private async lockCmkScope(c: pg.PoolClient, assignedOrgId: string | null): Promise<void> {
    await c.query(`SELECT pg_advisory_xact_lock(${LOCK_CLASS + 1}, hashtext(COALESCE($1::text, '')))`, [assignedOrgId]);
  }

  private async deactivateCmks(c: pg.PoolClient, assignedOrgId: string | null): Promise<void> {
    await c.query(`UPDATE cmks SET state = 'inactive' WHERE state = 'active' AND COALESCE(assigned_org_id, '') = COALESCE($1::text, '')`, [assignedOrgId]);
  }

  async insertCmk(row: CmkRow): Promise<void> {
    rules.checkCmkRow(row);
    await this.tx(async (c) => {
      await this.lockCmkScope(c, row.assignedOrgId);
      if (row.state === 'active') await this.deactivateCmks(c, row.assignedOrgId);
      await c.query('INSERT INTO cmks (id, state, assigned_org_id, created_at, sealed) VALUES ($1, $2, $3, $4, $5)', [
        row.id,
        row.state,
        row.assignedOrgId,
        row.createdAt,
        bytes(row.sealed),
      ]);
      await this.recordChange(c, 'cmk', row.id);
    });
  }

  async listCmks(assignedOrgId?: string | null): Promise<CmkRow[]> {
    const r =
      assignedOrgId === undefined
        ? await this.pool.query<Row>('SELECT * FROM cmks ORDER BY created_at, id COLLATE "C"')
        : await this.pool.query<Row>(`SELECT * FROM cmks WHERE COALESCE(assigned_org_id, '') = COALESCE($1::text, '') ORDER BY created_at, id COLLATE "C"`, [
            assignedOrgId,
          ]);
    return r.rows.map(cmkFromRow);
  }

  async getCmk(id: string): Promise<CmkRow | undefined> {
    const r = await this.one('SELECT * FROM cmks WHERE id = $1', [id]);
    return r && cmkFromRow(r);
  }

  async setCmkState(id: string, state: CmkRow['state']): Promise<void> {
    await this.tx(async (c) => {
      // A CMK's scope never changes: read it unlocked, then take the scope lock before any row lock.
      const r = (await c.query<Row>('SELECT assigned_org_id FROM cmks WHERE id = $1', [id])).rows[0];
      if (!r) return;
      const scope = str(r.assigned_org_id);
      await this.lockCmkScope(c, scope);
      if (state === 'active') await this.deactivateCmks(c, scope);
      await c.query('UPDATE cmks SET state = $1 WHERE id = $2', [state, id]);
      await this.recordChange(c, 'cmk', id);
    });
  }

  async recordPeerFetch(resourceId: string, peer: string, at: number): Promise<void> {
    rules.checkInstant('at', at);
    await this.pool.query(
      'INSERT INTO peer_fetches (resource_id, peer, fetched_at) VALUES ($1, $2, $3) ON CONFLICT (resource_id, peer) DO UPDATE SET fetched_at = excluded.fetched_at',
      [resourceId, peer, at],
    );
  }

  async peersThatFetched(resourceId: string): Promise<string[]> {
    const r = await this.pool.query<Row>('SELECT peer FROM peer_fetches WHERE resource_id = $1 ORDER BY peer COLLATE "C"', [resourceId]);
    return r.rows.map((x) => x.peer as string);
  }

  /** Serializes invalidations and copy writes of these KROs until COMMIT (sorted: no deadlock). */
  private async lockCopies(c: Queryable, resourceUris: string[]): Promise<void> {
    await c.query(`SELECT pg_advisory_xact_lock(${LOCK_COPY}, hashtext(u)) FROM unnest($1::text[]) AS u ORDER BY u COLLATE "C"`, [resourceUris]);
  }

  async putCopy(row: CopyRow, keyUris: string[], fetchStartedAt: number, archive = false): Promise<PutCopyOutcome> {
    rules.checkCopyRow(row);
    rules.checkCount('fetchStartedAt', fetchStartedAt);
    return this.tx(async (c) => {
      await this.lockCopies(c, [row.resourceUri]);
      // Read after the lock (a new snapshot): an invalidation that committed meanwhile is seen.
      const last = (await c.query<Row>('SELECT seq FROM federated_invalidations WHERE resource_uri = $1', [row.resourceUri])).rows[0];
      const outcome = rules.putCopyOutcome(last && num(last.seq), fetchStartedAt);
      if (outcome !== 'stored') return outcome;
      await c.query(
        `INSERT INTO federated_copies (resource_uri, authority, fetched_at, cmk_id, sealed) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (resource_uri) DO UPDATE SET fetched_at = excluded.fetched_at, cmk_id = excluded.cmk_id, sealed = excluded.sealed`,
        [row.resourceUri, row.authority, row.fetchedAt, row.cmkId, bytes(row.sealed)],
      );
      await c.query('DELETE FROM federated_keys WHERE resource_uri = $1', [row.resourceUri]);
      // Sorted and distinct: one statement may not touch a row twice, and a fixed order cannot deadlock.
      const uris = [...new Set(keyUris)].sort();
      if (uris.length > 0) {
        await c.query(
          `INSERT INTO federated_keys (key_uri, resource_uri) SELECT u, $2 FROM unnest($1::text[]) AS u
           ON CONFLICT (key_uri) DO UPDATE SET resource_uri = excluded.resource_uri`,
          [uris, row.resourceUri],
        );
      }
      if (archive) {
        // Under the KRO's lock (lockCopies): the next version of this KRO is this one's alone.
        await c.query(
          `INSERT INTO federated_archive (resource_uri, version, fetched_at, authority, cmk_id, sealed)
           SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, $5 FROM federated_archive WHERE resource_uri = $1`,
          [row.resourceUri, row.fetchedAt, row.authority, row.cmkId, bytes(row.sealed)],
        );
      }
      return outcome;
    });
  }

  async getCopy(resourceUri: string): Promise<CopyRow | undefined> {
    const r = await this.one('SELECT * FROM federated_copies WHERE resource_uri = $1', [resourceUri]);
    return r && copyFromRow(r);
  }

  async archivedCopies(resourceUri: string, limit: number): Promise<ArchivedCopy[]> {
    rules.checkText('resourceUri', resourceUri);
    rules.checkCount('limit', limit);
    return (await this.pool.query<Row>('SELECT * FROM federated_archive WHERE resource_uri = $1 ORDER BY version DESC LIMIT $2', [resourceUri, limit])).rows.map(archivedFromRow);
  }

  async archivePage(after: { resourceUri: string; version: number } | undefined, limit: number): Promise<ArchivedCopy[]> {
    rules.checkArchiveCursor(after);
    rules.checkCount('limit', limit);
    // COLLATE "C": the byte order SQLite uses, whatever the database's collation.
    const r = after === undefined
      ? await this.pool.query<Row>('SELECT * FROM federated_archive ORDER BY resource_uri COLLATE "C", version LIMIT $1', [limit])
      : await this.pool.query<Row>(
          'SELECT * FROM federated_archive WHERE resource_uri > $1 COLLATE "C" OR (resource_uri = $1 AND version > $2) ORDER BY resource_uri COLLATE "C", version LIMIT $3',
          [after.resourceUri, after.version, limit],
        );
    return r.rows.map(archivedFromRow);
  }

  async copyOfKey(keyUri: string): Promise<string | undefined> {
    const r = await this.one('SELECT resource_uri FROM federated_keys WHERE key_uri = $1', [keyUri]);
    return r?.resource_uri as string | undefined;
  }

  async invalidateCopies(authority: string, resourceUris: string[]): Promise<number> {
    const uris = [...new Set(resourceUris)].sort();
    if (uris.length === 0) return 0;
    return this.tx(async (c) => {
      // The mark first (the counters row, held until COMMIT: marks commit in order), then the KROs.
      const seq = num((await c.query<Row>(`UPDATE counters SET value = value + 1 WHERE name = 'invalidation_seq' RETURNING value`)).rows[0]!.value);
      await this.lockCopies(c, uris);
      await c.query(
        `INSERT INTO federated_invalidations (resource_uri, authority, seq, at) SELECT u, $2, $3, $4 FROM unnest($1::text[]) AS u
         ON CONFLICT (resource_uri) DO UPDATE SET authority = excluded.authority, seq = excluded.seq, at = excluded.at`,
        [uris, authority, seq, Date.now()],
      );
      const r = await c.query('UPDATE federated_copies SET fetched_at = $1 WHERE authority = $2 AND resource_uri = ANY($3::text[])', [COPY_INVALIDATED, authority, uris]);
      return r.rowCount ?? 0;
    });
  }

  async invalidationMark(): Promise<number> {
    return num((await this.one(`SELECT value FROM counters WHERE name = 'invalidation_seq'`, []))!.value);
  }

  async changesAfter(afterSeq: number, limit: number): Promise<ChangeRow[]> {
    rules.checkChangesRead(afterSeq, limit);
    return (await this.pool.query<Row>('SELECT * FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2', [afterSeq, limit])).rows.map(changeFromRow);
  }

  async lastChange(): Promise<number> {
    return num((await this.one(`SELECT value FROM counters WHERE name = 'change_seq'`, []))!.value);
  }

  /**
   * First linked to the head this process's last batch left (one statement, APPEND_AUDIT: when no
   * other process appended since, the common case, a batch is one round trip); when the head moved,
   * linked again to the head read under its lock, in a transaction.
   */
  async appendAudit(link: (head: AuditHead) => AuditRow[]): Promise<void> {
    const known = this.lastAuditHead;
    this.lastAuditHead = undefined;
    if (known) {
      const rows = link(known);
      rules.checkAuditLink(known, rows);
      const last = rows.at(-1);
      if (!last) {
        this.lastAuditHead = known;
        return;
      }
      const r = await this.pool.query({ name: 'kms_append_audit', text: APPEND_AUDIT, values: [known.seq, known.hash, last.seq, last.hash, auditJson(rows)] });
      if (r.rowCount === rows.length) {
        this.lastAuditHead = { seq: last.seq, hash: last.hash };
        return;
      }
    }
    const head = await this.tx(async (c) => {
      // Every node's batch waits here for the one before it to commit.
      const head = auditHeadFromRow((await c.query<Row>('SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE')).rows[0]!);
      const rows = link(head);
      rules.checkAuditLink(head, rows);
      const last = rows.at(-1);
      if (!last) return head;
      const r = await c.query({ name: 'kms_append_audit', text: APPEND_AUDIT, values: [head.seq, head.hash, last.seq, last.hash, auditJson(rows)] });
      // Cannot differ while the head is locked; kept as a guard.
      if (r.rowCount !== rows.length) throw new Error('the audit head moved under its lock');
      return { seq: last.seq, hash: last.hash };
    });
    this.lastAuditHead = head;
  }

  async auditHead(): Promise<AuditHead> {
    return auditHeadFromRow((await this.one('SELECT seq, hash FROM audit_head WHERE id = 1', []))!);
  }

  async readAudit(afterSeq: number, limit: number): Promise<AuditRow[]> {
    rules.checkCount('afterSeq', afterSeq);
    rules.checkCount('limit', limit);
    return (await this.pool.query<Row>('SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2', [afterSeq, limit])).rows.map(auditFromRow);
  }

  async acceptPeerRequest(request: PeerRequest, limit: number): Promise<PeerRequestOutcome> {
    const slices = rules.peerRequestSlices(request);
    return this.tx(async (c) => {
      await c.query(`SELECT pg_advisory_xact_lock(${LOCK_PEER_REQUESTS}, hashtext($1))`, [request.peer]);
      const seen =
        ((await c.query('SELECT 1 FROM peer_requests WHERE peer = $1 AND request_id = $2 AND expires_at > $3', [request.peer, request.requestId, request.now])).rowCount ?? 0) > 0;
      const accepted = num(
        (await c.query<Row>('SELECT COALESCE(SUM(accepted), 0) AS n FROM peer_request_counts WHERE peer = $1 AND slice >= $2', [request.peer, slices.since])).rows[0]!.n,
      );
      const outcome = rules.peerRequestOutcome({ seen, accepted }, limit);
      if (outcome === 'accepted') {
        await c.query(
          `INSERT INTO peer_requests (peer, request_id, expires_at) VALUES ($1, $2, $3)
           ON CONFLICT (peer, request_id) DO UPDATE SET expires_at = excluded.expires_at`,
          [request.peer, request.requestId, request.expiresAt],
        );
        await c.query(
          `INSERT INTO peer_request_counts (peer, slice, accepted, expires_at) VALUES ($1, $2, 1, $3)
           ON CONFLICT (peer, slice) DO UPDATE SET accepted = peer_request_counts.accepted + 1, expires_at = excluded.expires_at`,
          [request.peer, slices.slice, slices.expiresAt],
        );
      }
      return outcome;
    });
  }

  async sweep(now: number, unboundGraceMs: number): Promise<SweepResult> {
    const cutoff = rules.sweepCutoffs(now, unboundGraceMs);
    return this.tx(async (c) => {
      // Unbound keys and channels first: they hold no lock a bind into a resource could wait on.
      const unbound = await c.query('DELETE FROM keys WHERE resource_id IS NULL AND expires_at <= $1', [cutoff.unboundKeys]);
      const channels = await c.query('DELETE FROM channels WHERE expires_at <= $1', [cutoff.channels]);
      const peerRequests = await c.query('DELETE FROM peer_requests WHERE expires_at <= $1', [cutoff.peerRequests]);
      await c.query('DELETE FROM peer_request_counts WHERE expires_at <= $1', [cutoff.peerRequests]);
      // Requests forgotten at their channel's end; the answers of the others destroyed after their window.
      const forgotten = await c.query('DELETE FROM retry_answers WHERE expires_at <= $1', [now]);
      const dropped = await c.query('UPDATE retry_answers SET cmk_id = NULL, sealed = NULL WHERE answer_until <= $1 AND sealed IS NOT NULL', [now]);
      // Locked in id order (two sweepers cannot deadlock); binds and adds into them now wait.
      const expired = await c.query<Row>('SELECT id FROM resources WHERE expires_at IS NOT NULL AND expires_at <= $1 ORDER BY id COLLATE "C" FOR UPDATE', [
        cutoff.resources,
      ]);
      const ids = expired.rows.map((r) => r.id as string);
      const feed = rules.feedCutoffs(Date.now(), num((await c.query<Row>(`SELECT value FROM counters WHERE name = 'change_seq'`)).rows[0]!.value));
      const changes =
        ((await c.query('DELETE FROM changes WHERE at <= $1 OR seq <= $2', [feed.changesAt, feed.changesSeq])).rowCount ?? 0) +
        ((await c.query('DELETE FROM federated_invalidations WHERE at <= $1', [feed.invalidationsAt])).rowCount ?? 0);
      let bound = 0;
      if (ids.length > 0) {
        bound = (await c.query('DELETE FROM keys WHERE resource_id = ANY($1::text[])', [ids])).rowCount ?? 0;
        await c.query('DELETE FROM authorizations WHERE resource_id = ANY($1::text[])', [ids]);
        await c.query('DELETE FROM resources WHERE id = ANY($1::text[])', [ids]);
      }
      return {
        resources: ids.length,
        resourceIds: ids,
        keys: bound + (unbound.rowCount ?? 0),
        channels: channels.rowCount ?? 0,
        peerRequests: peerRequests.rowCount ?? 0,
        changes,
        answers: (forgotten.rowCount ?? 0) + (dropped.rowCount ?? 0),
      };
    });
  }

  async leadership(_holder?: string): Promise<Leadership> {
    return new AdvisoryLeadership({ connectionString: this.direct.connectionString, timeoutMs: this.direct.probeTimeoutMs });
  }

  async enqueuePush(row: PushRow, limit: number): Promise<boolean> {
    rules.checkPushRow(row);
    rules.checkCount('limit', limit);
    // One statement: the count and the insert see the same snapshot (concurrent writers may pass
    // the limit by a few rows: a bound, not an exact count).
    const r = await this.pool.query(
      `INSERT INTO push_outbox (id, created_at, resource_ids, user_ids, targets, attempts, next_attempt_at)
       SELECT $1, $2, $3, $4, $5, $6, $7 WHERE (SELECT COUNT(*) FROM push_outbox) < $8`,
      [row.id, row.createdAt, JSON.stringify(row.resourceIds), JSON.stringify(row.userIds), row.targets === null ? null : JSON.stringify(row.targets), row.attempts, row.nextAttemptAt, limit],
    );
    return (r.rowCount ?? 0) === 1;
  }

  async duePushes(now: number, limit: number): Promise<PushRow[]> {
    rules.checkInstant('now', now);
    rules.checkCount('limit', limit);
    const r = await this.pool.query<Row>('SELECT * FROM push_outbox WHERE next_attempt_at <= $1 ORDER BY next_attempt_at, id COLLATE "C" LIMIT $2', [now, limit]);
    return r.rows.map(pushFromRow);
  }

  async reschedulePush(id: string, targets: Record<string, string[]>, attempts: number, nextAttemptAt: number): Promise<void> {
    rules.checkPushTargets(targets);
    rules.checkCount('attempts', attempts);
    rules.checkInstant('nextAttemptAt', nextAttemptAt);
    await this.pool.query('UPDATE push_outbox SET targets = $1, attempts = $2, next_attempt_at = $3 WHERE id = $4', [JSON.stringify(targets), attempts, nextAttemptAt, id]);
  }

  async deletePush(id: string): Promise<void> {
    await this.pool.query('DELETE FROM push_outbox WHERE id = $1', [id]);
  }

  async countPushes(): Promise<number> {
    return num((await this.pool.query<Row>('SELECT COUNT(*) AS n FROM push_outbox')).rows[0]!.n);
  }

  async heartbeat(node: NodeRow, forgetBefore: number): Promise<void> {
    rules.checkNodeRow(node);
    rules.checkInstant('forgetBefore', forgetBefore);
    await this.tx(async (c) => {
      await c.query(
        `INSERT INTO nodes (id, host, pid, version, started_at, seen_at, is_leader) VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, version = excluded.version, started_at = excluded.started_at, seen_at = excluded.seen_at, is_leader = excluded.is_leader`,
        [node.id, node.host, node.pid, node.version, node.startedAt, node.seenAt, node.leading ? 1 : 0],
      );
      await c.query('DELETE FROM nodes WHERE seen_at < $1', [forgetBefore]);
    });
  }

  async listNodes(): Promise<NodeRow[]> {
    return (await this.pool.query<Row>('SELECT * FROM nodes ORDER BY seen_at DESC, id COLLATE "C"')).rows.map(nodeFromRow);
  }

  async removeNode(id: string): Promise<void> {
    await this.pool.query('DELETE FROM nodes WHERE id = $1', [id]);
  }

  /**
   * The row is inserted if absent; otherwise read FOR UPDATE, so concurrent claims of one request
   * (on any node) are decided one after the other, each seeing what the one before wrote.
   */
  async claimAnswer(claim: AnswerClaim): Promise<AnswerClaimOutcome> {
    rules.answerClaimDecision(undefined, claim); // refuses a malformed claim before anything is written
    const values = [claim.channelId, claim.requestId, claim.digest, claim.claimant, claim.leaseUntil, claim.answerUntil, claim.expiresAt];
    // Nothing remembered (the common case): the insert alone decides, one statement.
    const claimed = await this.pool.query({ name: 'kms_claim_answer', text: CLAIM_ANSWER, values });
    if (claimed.rowCount === 1) return { state: 'claimed' };
    return this.tx(async (c) => {
      const inserted = await c.query({ name: 'kms_claim_answer', text: CLAIM_ANSWER, values });
      if (inserted.rowCount === 1) return { state: 'claimed' } as const;
      const r = (await c.query<Row>('SELECT * FROM retry_answers WHERE channel_id = $1 AND request_id = $2 FOR UPDATE', [claim.channelId, claim.requestId])).rows[0];
      const decision = rules.answerClaimDecision(r && answerStateFromRow(r), claim);
      if (typeof decision !== 'string') return decision;
      // 'take-over' (or 'insert' if the row was swept meanwhile: the upsert writes it either way).
      await c.query(
        `INSERT INTO retry_answers (channel_id, request_id, digest, claimant, lease_until, answer_until, expires_at, answered, cmk_id, sealed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, NULL, NULL)
         ON CONFLICT (channel_id, request_id) DO UPDATE SET digest = excluded.digest, claimant = excluded.claimant,
           lease_until = excluded.lease_until, answer_until = excluded.answer_until, expires_at = excluded.expires_at, answered = 0, cmk_id = NULL, sealed = NULL`,
        values,
      );
      return { state: 'claimed' } as const;
    });
  }

  async rememberAnswer(key: AnswerClaimKey, answer: RememberedAnswer): Promise<boolean> {
    const r = await this.pool.query({
      name: 'kms_remember_answer',
      text: 'UPDATE retry_answers SET answered = 1, cmk_id = $1, sealed = $2 WHERE channel_id = $3 AND request_id = $4 AND claimant = $5 AND answered = 0',
      values: [answer.cmkId, bytes(answer.sealed), key.channelId, key.requestId, key.claimant],
    });
    return r.rowCount === 1;
  }

  async releaseAnswer(key: AnswerClaimKey): Promise<void> {
    await this.pool.query({
      name: 'kms_release_answer',
      text: 'DELETE FROM retry_answers WHERE channel_id = $1 AND request_id = $2 AND claimant = $3 AND answered = 0',
      values: [key.channelId, key.requestId, key.claimant],
    });
  }

  async ping(): Promise<void> {
    await this.pool.query('SELECT 1');
  }

  close(): Promise<void> {
    return (this.closed ??= (async () => {
      await this.changeSignal.stop();
      await this.channelCommits.flush();
      await this.pool.end();
    })());
  }
}
