/**
 * The embedded default store: one SQLite file, WAL, secure_delete (destroyed key rows are
 * overwritten, not just unlinked). A write survives a power cut once its method resolves: commits
 * run with synchronous=NORMAL and are made durable together by one fsync of the WAL off the event
 * loop (wal-sync.ts); a request's writes by the fsync of its audit record, which it is answered
 * after (deadline.ts auditCoversWrite).
 * better-sqlite3 is synchronous, so each method is one transaction that no other request of this
 * process can interleave with; the async signatures are for the shared Store contract. Several
 * processes may open one file (nodes, workers): every transaction that writes starts with
 * `BEGIN IMMEDIATE`, which takes the file's write lock before the first read, so what it read to
 * decide (a key's bound state, the audit head) cannot be changed by another process before it
 * commits; a waiting writer retries for busy_timeout.
 */
import { chmodSync } from 'node:fs';
import Database from 'better-sqlite3';
import { COPY_INVALIDATED } from '../model.js';
import type { AnswerClaim, AnswerClaimKey, AnswerClaimOutcome, AuditHead, AuditRow, AuthorizationRow, BindOutcome, ChangeRow, ChannelRow, CmkRow, ArchivedCopy, CopyRow, KeyBind, KeyFilter, KeyRow, NodeRow, PeerRequest, PeerRequestOutcome, PushRow, PutCopyOutcome, RememberedAnswer, ResourceRow, SweepResult } from '../model.js';
import { LEADER_LEASE_MS } from '../limits.js';
import { PollingSignal, type ChangeSignal } from './change-signal.js';
import { LeaseLeadership, type Leadership } from './leadership.js';
import { answerStateFromRow, archivedFromRow, auditFromRow, auditHeadFromRow, authorizationFromRow, changeFromRow, channelFromRow, cmkFromRow, copyFromRow, keyFromRow, nodeFromRow, pushFromRow, resourceFromRow, type Row } from './rows.js';
import { auditCoversWrite } from './deadline.js';
import { checkSchemaKnown, migrationSql, migrations } from './migrations.js';
import * as rules from './rules.js';
import type { Store } from './store.js';
import { BackgroundCheckpoints, SAFETY_PAGES } from './wal-checkpoint.js';
import { WalSync, type Fsync } from './wal-sync.js';

/** How long a write waits for the lock while the file is taken for locked (write()). */
const LOCKED_WAIT_MS = 50;


export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const;
  /** No NOTIFY in SQLite: other processes' changes are found by reading the feed often. */
  readonly changeSignal: ChangeSignal = new PollingSignal();
  private readonly db: Database.Database;
  private readonly busyTimeoutMs: number;
  /** The last write found the file locked by another process for a whole busy timeout (write()). */
  private locked = false;
  private readonly stmt: Record<string, Database.Statement>;
  /** Every other statement, prepared at its first use and kept (sql()). */
  private readonly statements = new Map<string, Database.Statement>();
  /** Makes commits durable; none for an in-memory database. */
  private readonly wal: WalSync | undefined;
  private readonly checkpoints: BackgroundCheckpoints | undefined;

  /**
   * `busyTimeoutMs`: how long a write waits for a lock another process holds (default 5 s). The
   * wait blocks the event loop (better-sqlite3 is synchronous), so a server sets it to its storage
   * deadline: a locked file is then a 503 within that deadline, not later (store/deadline.ts).
   * `fsync`: how the WAL is flushed (wal-sync.ts; tests hold it). `backgroundCheckpoints`: copy
   * the WAL back into the file on a thread of its own (wal-checkpoint.ts; a serving KMS).
   */
  constructor(path: string, options: { busyTimeoutMs?: number; fsync?: Fsync; backgroundCheckpoints?: boolean } = {}) {
    this.db = new Database(path);
    // Owner-only, like the other secrets of a KMS folder; SQLite gives its -wal/-shm files the same mode.
    if (path !== ':memory:') chmodSync(path, 0o600);
    this.db.pragma('journal_mode = WAL');
    // No fsync in the commit: wal-sync.ts makes commits durable, many at once, off the event loop.
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('secure_delete = ON');
    this.busyTimeoutMs = Math.round(options.busyTimeoutMs ?? 5000);
    this.db.pragma(`busy_timeout = ${this.busyTimeoutMs}`);
    this.wal = path === ':memory:' ? undefined : new WalSync(`${path}-wal`, options.fsync);
    this.migrate();
    this.wal?.syncNow();
    if (options.backgroundCheckpoints && path !== ':memory:') {
      this.db.pragma(`wal_autocheckpoint = ${SAFETY_PAGES}`);
      this.checkpoints = new BackgroundCheckpoints(path);
    }
    const p = (sql: string) => this.db.prepare(sql);
    this.stmt = {
      insertKey: p(`INSERT INTO keys (id, user_id, client_id, created_at, expires_at, resource_id, bind_date, bind_seq, cmk_id, sealed)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
      getKey: p('SELECT * FROM keys WHERE id = ?'),
      reserveBindSeqs: p(`UPDATE counters SET value = value + ? WHERE name = 'bind_seq' RETURNING value`),
      bindKey: p(`UPDATE keys SET resource_id = @resourceId, bind_date = @bindDate, bind_seq = @bindSeq, expires_at = @expiresAt
                  WHERE id = @id AND resource_id IS NULL`),
      insertResource: p('INSERT INTO resources (id, creator, created_at, expires_at) VALUES (@id, @creator, @createdAt, @expiresAt)'),
      getResource: p('SELECT * FROM resources WHERE id = ?'),
      resourceExists: p('SELECT 1 FROM resources WHERE id = ?'),
      insertAuthorization: p(`INSERT INTO authorizations (id, resource_id, auth_id, role_uri, created_at)
                              VALUES (@id, @resourceId, @authId, @roleUri, @createdAt)`),
      findAuthorization: p('SELECT * FROM authorizations WHERE resource_id = ? AND auth_id = ?'),
      listAuthorizations: p('SELECT * FROM authorizations WHERE resource_id = ? ORDER BY created_at, id'),
      countAuthorizations: p('SELECT COUNT(*) AS n FROM authorizations WHERE resource_id = ?'),
      getAuthorization: p('SELECT * FROM authorizations WHERE id = ?'),
      deleteAuthorization: p('DELETE FROM authorizations WHERE id = ? AND resource_id = ?'),
      insertChannel: p(`INSERT INTO channels (id, owner, client_id, created_at, expires_at, cmk_id, sealed)
                        VALUES (@id, @owner, @clientId, @createdAt, @expiresAt, @cmkId, @sealed)`),
      getChannel: p('SELECT * FROM channels WHERE id = ?'),
      deleteChannel: p('DELETE FROM channels WHERE id = ?'),
      deactivateCmks: p(`UPDATE cmks SET state = 'inactive' WHERE state = 'active' AND COALESCE(assigned_org_id, '') = COALESCE(?, '')`),
      insertCmk: p('INSERT INTO cmks (id, state, assigned_org_id, created_at, sealed) VALUES (@id, @state, @assignedOrgId, @createdAt, @sealed)'),
      getCmk: p('SELECT * FROM cmks WHERE id = ?'),
      setCmkState: p('UPDATE cmks SET state = ? WHERE id = ?'),
      insertAudit: p(`INSERT INTO audit (seq, time, principal, on_behalf_of, client_id, method, uri, status, peer, request_id, node, prev_hash, hash)
                      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
      auditHead: p('SELECT seq, hash FROM audit_head WHERE id = 1'),
      moveAuditHead: p('UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1'),
      readAudit: p('SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?'),
      peerRequestSeen: p('SELECT 1 FROM peer_requests WHERE peer = ? AND request_id = ? AND expires_at > ?'),
      peerRequestsAccepted: p('SELECT COALESCE(SUM(accepted), 0) AS n FROM peer_request_counts WHERE peer = ? AND slice >= ?'),
      rememberPeerRequest: p(`INSERT INTO peer_requests (peer, request_id, expires_at) VALUES (?, ?, ?)
                              ON CONFLICT (peer, request_id) DO UPDATE SET expires_at = excluded.expires_at`),
      nextChangeSeq: p(`UPDATE counters SET value = value + 1 WHERE name = 'change_seq' RETURNING value`),
      insertChange: p('INSERT INTO changes (seq, kind, subject, at) VALUES (?, ?, ?, ?)'),
      changesAfter: p('SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?'),
      lastChange: p(`SELECT value FROM counters WHERE name = 'change_seq'`),
      invalidationMark: p(`SELECT value FROM counters WHERE name = 'invalidation_seq'`),
      nextInvalidationSeq: p(`UPDATE counters SET value = value + 1 WHERE name = 'invalidation_seq' RETURNING value`),
      rememberInvalidation: p(`INSERT INTO federated_invalidations (resource_uri, authority, seq, at) VALUES (?, ?, ?, ?)
                               ON CONFLICT (resource_uri) DO UPDATE SET authority = excluded.authority, seq = excluded.seq, at = excluded.at`),
      lastInvalidation: p('SELECT seq FROM federated_invalidations WHERE resource_uri = ?'),
      countPeerRequest: p(`INSERT INTO peer_request_counts (peer, slice, accepted, expires_at) VALUES (?, ?, 1, ?)
                           ON CONFLICT (peer, slice) DO UPDATE SET accepted = accepted + 1, expires_at = excluded.expires_at`),
    };
  }

  /**
   * `result`, once the commit that produced it is durable; at once when the current request's
   * audit record makes it durable (deadline.ts auditCoversWrite).
   */
  private async durable<T>(result: T): Promise<T> {
    if (this.wal && !auditCoversWrite()) await this.wal.sync();
    return result;
  }

  /** The statement for `text`, prepared once: preparing costs more than running most of them. */
  private sql(text: string): Database.Statement {
    let statement = this.statements.get(text);
    if (!statement) this.statements.set(text, (statement = this.db.prepare(text)));
    return statement;
  }

  /** Records a change for other processes' caches, inside the caller's transaction. */
  private recordChange(kind: ChangeRow['kind'], subject: string): void {
    const seq = Number((this.stmt.nextChangeSeq!.get() as Row).value);
    this.stmt.insertChange!.run(seq, kind, subject, Date.now());
  }

  /**
   * One transaction that writes, holding the file's write lock from its first statement on.
   *
   * A wait for the lock blocks the whole process (better-sqlite3 is synchronous), so once a write
   * has waited its whole busy timeout in vain the file is taken for locked (another process holds
   * a long transaction, a backup, an operator's sqlite3 shell): until a write gets the lock again,
   * each waits only LOCKED_WAIT_MS and fails fast. Otherwise every write queued behind it (audit
   * batches, heartbeats, the lease, other requests) would each stall the event loop a whole
   * timeout, and one request would wait for all of them; a locked file must be a 503 within about
   * one deadline (docs/decisions.md, "A locked SQLite file").
   */
  private write<T>(fn: () => T): T {
    const locked = this.locked;
    if (locked) this.db.pragma(`busy_timeout = ${LOCKED_WAIT_MS}`);
    try {
      const result = this.db.transaction(fn).immediate();
      this.locked = false;
      return result;
    } catch (err) {
      if (String((err as { code?: unknown }).code).startsWith('SQLITE_BUSY')) this.locked = true;
      throw err;
    } finally {
      if (locked) this.db.pragma(`busy_timeout = ${this.busyTimeoutMs}`);
    }
  }

  private migrate(): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)');
    checkSchemaKnown(Number((this.sql('SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations').get() as Row).v));
    for (const m of migrations) {
      this.write(() => {
        // Read under the write lock: another process opening the file may have applied it meanwhile.
        if (this.sql('SELECT 1 FROM schema_migrations WHERE version = ?').get(m.version)) return;
        this.db.exec(migrationSql(m, 'sqlite'));
        this.sql('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, Date.now());
      });
    }
  }

  async insertKeys(rows: KeyRow[]): Promise<void> {
    rows.forEach(rules.checkKeyRow);
    const insert = this.stmt.insertKey!;
    this.write(() => {
      for (const k of rows) insert.run(k.id, k.userId, k.clientId, k.createdAt, k.expiresAt, k.resourceId, k.bindDate, k.bindSeq, k.cmkId, k.sealed);
    });
    await this.durable(undefined);
  }

  async getKey(id: string): Promise<KeyRow | undefined> {
    const r = this.stmt.getKey!.get(id) as Row | undefined;
    return r && keyFromRow(r);
  }

  /**
   * Decides and binds inside the caller's transaction (which no other request can interleave
   * with), all or nothing: the caller rolls back unless this returns 'bound'.
   */
  private bindInTx(binds: KeyBind[], resourceId: string): BindOutcome {
    const keys = new Map<string, KeyRow>();
    for (const b of binds) {
      const r = this.stmt.getKey!.get(b.id) as Row | undefined;
      if (r) keys.set(b.id, keyFromRow(r));
    }
    const outcome = rules.bindOutcome(binds, { resource: this.stmt.resourceExists!.get(resourceId) !== undefined, keys });
    if (outcome !== 'bound' || binds.length === 0) return outcome;
    const lastSeq = Number((this.stmt.reserveBindSeqs!.get(binds.length) as Row).value);
    for (const write of rules.bindWrites(binds, resourceId, lastSeq)) {
      // The WHERE keeps resource_id IS NULL: a second guard, as in PostgreSQL.
      if (this.stmt.bindKey!.run(write).changes !== 1) return 'already-bound';
      this.recordChange('key', write.id);
    }
    return 'bound';
  }

  /** Runs `bind` in a transaction that commits only when it returns 'bound'; otherwise returns its outcome. */
  private bindOrRollBack(bind: () => BindOutcome): BindOutcome {
    try {
      return this.write(() => {
        const outcome = bind();
        if (outcome !== 'bound') throw new rules.BindRefused(outcome);
        return outcome;
      });
    } catch (err) {
      if (err instanceof rules.BindRefused) return err.outcome;
      throw err;
    }
  }

  async bindKey(bind: KeyBind & { resourceId: string }): Promise<BindOutcome> {
    return this.durable(this.bindOrRollBack(() => this.bindInTx([bind], bind.resourceId)));
  }

  async listResourceKeys(resourceId: string, filter: KeyFilter = {}): Promise<KeyRow[]> {
    rules.checkKeyFilter(filter);
    const where = ['resource_id = ?'];
    const args: unknown[] = [resourceId];
    if (filter.boundAfter !== undefined) {
      where.push('bind_date >= ?');
      args.push(filter.boundAfter);
    }
    if (filter.boundBefore !== undefined) {
      where.push('bind_date < ?');
      args.push(filter.boundBefore);
    }
    let sql = `SELECT * FROM keys WHERE ${where.join(' AND ')} ORDER BY bind_date DESC, bind_seq DESC`;
    if (filter.limit !== undefined) {
      sql += ' LIMIT ?';
      args.push(filter.limit);
    }
    return (this.sql(sql).all(...args) as Row[]).map(keyFromRow);
  }

  async keysCreatedBy(userId: string, afterId: string, limit: number): Promise<KeyRow[]> {
    rules.checkText('userId', userId);
    rules.checkText('afterId', afterId);
    rules.checkCount('limit', limit);
    return (this.sql('SELECT * FROM keys WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?').all(userId, afterId, limit) as Row[]).map(keyFromRow);
  }

  async createResource(resource: ResourceRow, authorizations: AuthorizationRow[], binds: KeyBind[]): Promise<BindOutcome> {
    rules.checkResourceRow(resource);
    authorizations.forEach(rules.checkAuthorizationRow);
    return this.durable(
      this.bindOrRollBack(() => {
        this.stmt.insertResource!.run(resource);
        for (const a of authorizations) this.stmt.insertAuthorization!.run(a);
        this.recordChange('resource', resource.id);
        return this.bindInTx(binds, resource.id);
      }),
    );
  }

  async getResource(id: string): Promise<ResourceRow | undefined> {
    const r = this.stmt.getResource!.get(id) as Row | undefined;
    return r && resourceFromRow(r);
  }

  async addAuthorizations(resourceId: string, rows: AuthorizationRow[], limit: number): Promise<AuthorizationRow[] | 'over-limit'> {
    const added = this.write(() => {
      const count = Number((this.stmt.countAuthorizations!.get(resourceId) as Row).n);
      const byAuthId = new Map<string, AuthorizationRow>();
      for (const authId of rules.authIdsOf(rows)) {
        const existing = this.stmt.findAuthorization!.get(resourceId, authId) as Row | undefined;
        if (existing) byAuthId.set(authId, authorizationFromRow(existing));
      }
      const plan = rules.planAuthorizations(resourceId, rows, { count, byAuthId }, limit);
      if (plan === 'over-limit') return plan;
      for (const row of plan.inserts) this.stmt.insertAuthorization!.run(row);
      if (plan.inserts.length > 0) this.recordChange('resource', resourceId);
      return plan.answer;
    });
    return this.durable(added);
  }

  async listAuthorizations(resourceId: string): Promise<AuthorizationRow[]> {
    return (this.stmt.listAuthorizations!.all(resourceId) as Row[]).map(authorizationFromRow);
  }

  async resourcesWithAuthId(authId: string): Promise<string[]> {
    // One row per resource at most: authorizations_unique (resource_id, auth_id).
    return (this.sql('SELECT resource_id FROM authorizations WHERE auth_id = ? ORDER BY resource_id').all(authId) as Row[]).map((r) => r.resource_id as string);
  }

  async getAuthorization(id: string): Promise<AuthorizationRow | undefined> {
    const r = this.stmt.getAuthorization!.get(id) as Row | undefined;
    return r && authorizationFromRow(r);
  }

  async deleteAuthorizations(resourceId: string, ids: string[]): Promise<AuthorizationRow[]> {
    const deleted = this.write(() => {
      const deleted: AuthorizationRow[] = [];
      for (const id of ids) {
        const r = this.stmt.getAuthorization!.get(id) as Row | undefined;
        if (r && r.resource_id === resourceId && this.stmt.deleteAuthorization!.run(id, resourceId).changes === 1) {
          deleted.push(authorizationFromRow(r));
        }
      }
      if (deleted.length > 0) this.recordChange('resource', resourceId);
      return deleted;
    });
    return this.durable(deleted);
  }

  async insertChannel(row: ChannelRow): Promise<void> {
    rules.checkChannelRow(row);
    this.write(() => this.stmt.insertChannel!.run(row));
    await this.durable(undefined);
  }

  async getChannel(id: string): Promise<ChannelRow | undefined> {
    const r = this.stmt.getChannel!.get(id) as Row | undefined;
    return r && channelFromRow(r);
  }

  async deleteChannel(id: string): Promise<boolean> {
    const deleted = this.write(() => {
      const deleted = this.stmt.deleteChannel!.run(id).changes === 1;
      if (deleted) this.recordChange('channel', id);
      return deleted;
    });
    return this.durable(deleted);
  }

  async insertCmk(row: CmkRow): Promise<void> {
    rules.checkCmkRow(row);
    this.write(() => {
      if (row.state === 'active') this.stmt.deactivateCmks!.run(row.assignedOrgId);
      this.stmt.insertCmk!.run(row);
      this.recordChange('cmk', row.id);
    });
    await this.durable(undefined);
  }

  async listCmks(assignedOrgId?: string | null): Promise<CmkRow[]> {
    const rows =
      assignedOrgId === undefined
        ? this.sql('SELECT * FROM cmks ORDER BY created_at, id').all()
        : this.sql(`SELECT * FROM cmks WHERE COALESCE(assigned_org_id, '') = COALESCE(?, '') ORDER BY created_at, id`).all(assignedOrgId);
    return (rows as Row[]).map(cmkFromRow);
  }

  async getCmk(id: string): Promise<CmkRow | undefined> {
    const r = this.stmt.getCmk!.get(id) as Row | undefined;
    return r && cmkFromRow(r);
  }

  async setCmkState(id: string, state: CmkRow['state']): Promise<void> {
    this.write(() => {
      const r = this.stmt.getCmk!.get(id) as Row | undefined;
      if (!r) return;
      if (state === 'active') this.stmt.deactivateCmks!.run(r.assigned_org_id ?? null);
      this.stmt.setCmkState!.run(state, id);
      this.recordChange('cmk', id);
    });
    await this.durable(undefined);
  }

  async recordPeerFetch(resourceId: string, peer: string, at: number): Promise<void> {
    rules.checkInstant('at', at);
    this.write(() =>
      this.db
        .prepare('INSERT INTO peer_fetches (resource_id, peer, fetched_at) VALUES (?, ?, ?) ON CONFLICT (resource_id, peer) DO UPDATE SET fetched_at = excluded.fetched_at')
        .run(resourceId, peer, at),
    );
    await this.durable(undefined);
  }

  async peersThatFetched(resourceId: string): Promise<string[]> {
    return (this.sql('SELECT peer FROM peer_fetches WHERE resource_id = ? ORDER BY peer').all(resourceId) as Row[]).map((r) => r.peer as string);
  }

  async putCopy(row: CopyRow, keyUris: string[], fetchStartedAt: number, archive = false): Promise<PutCopyOutcome> {
    rules.checkCopyRow(row);
    rules.checkCount('fetchStartedAt', fetchStartedAt);
    const outcome = this.write(() => {
      // Under the write lock: no invalidation can commit between this check and the write.
      const last = this.stmt.lastInvalidation!.get(row.resourceUri) as Row | undefined;
      const outcome = rules.putCopyOutcome(last && Number(last.seq), fetchStartedAt);
      if (outcome !== 'stored') return outcome;
      this.db
        .prepare(
          `INSERT INTO federated_copies (resource_uri, authority, fetched_at, cmk_id, sealed) VALUES (@resourceUri, @authority, @fetchedAt, @cmkId, @sealed)
           ON CONFLICT (resource_uri) DO UPDATE SET fetched_at = excluded.fetched_at, cmk_id = excluded.cmk_id, sealed = excluded.sealed`,
        )
        .run(row);
      this.sql('DELETE FROM federated_keys WHERE resource_uri = ?').run(row.resourceUri);
      const insert = this.sql('INSERT INTO federated_keys (key_uri, resource_uri) VALUES (?, ?) ON CONFLICT (key_uri) DO UPDATE SET resource_uri = excluded.resource_uri');
      for (const uri of keyUris) insert.run(uri, row.resourceUri);
      if (archive) {
        // Under the write lock: the next version of this KRO is this one's alone.
        this.db
          .prepare(
            `INSERT INTO federated_archive (resource_uri, version, fetched_at, authority, cmk_id, sealed)
             SELECT @resourceUri, COALESCE(MAX(version), 0) + 1, @fetchedAt, @authority, @cmkId, @sealed FROM federated_archive WHERE resource_uri = @resourceUri`,
          )
          .run(row);
      }
      return outcome;
    });
    return this.durable(outcome);
  }

  async getCopy(resourceUri: string): Promise<CopyRow | undefined> {
    const r = this.sql('SELECT * FROM federated_copies WHERE resource_uri = ?').get(resourceUri) as Row | undefined;
    return r && copyFromRow(r);
  }

  async archivedCopies(resourceUri: string, limit: number): Promise<ArchivedCopy[]> {
    rules.checkText('resourceUri', resourceUri);
    rules.checkCount('limit', limit);
    return (this.sql('SELECT * FROM federated_archive WHERE resource_uri = ? ORDER BY version DESC LIMIT ?').all(resourceUri, limit) as Row[]).map(archivedFromRow);
  }

  async archivePage(after: { resourceUri: string; version: number } | undefined, limit: number): Promise<ArchivedCopy[]> {
    rules.checkArchiveCursor(after);
    rules.checkCount('limit', limit);
    const rows = after === undefined
      ? this.sql('SELECT * FROM federated_archive ORDER BY resource_uri, version LIMIT ?').all(limit)
      : this.db
          .prepare('SELECT * FROM federated_archive WHERE resource_uri > ? OR (resource_uri = ? AND version > ?) ORDER BY resource_uri, version LIMIT ?')
          .all(after.resourceUri, after.resourceUri, after.version, limit);
    return (rows as Row[]).map(archivedFromRow);
  }

  async copyOfKey(keyUri: string): Promise<string | undefined> {
    const r = this.sql('SELECT resource_uri FROM federated_keys WHERE key_uri = ?').get(keyUri) as Row | undefined;
    return r?.resource_uri as string | undefined;
  }

  async invalidateCopies(authority: string, resourceUris: string[]): Promise<number> {
    const stmt = this.sql('UPDATE federated_copies SET fetched_at = ? WHERE resource_uri = ? AND authority = ?');
    const uris = [...new Set(resourceUris)];
    if (uris.length === 0) return 0;
    const marked = this.write(() => {
      const seq = Number((this.stmt.nextInvalidationSeq!.get() as Row).value);
      const at = Date.now();
      for (const uri of uris) this.stmt.rememberInvalidation!.run(uri, authority, seq, at);
      // A URI named twice is one copy: counted once.
      return uris.reduce((n, uri) => n + stmt.run(COPY_INVALIDATED, uri, authority).changes, 0);
    });
    return this.durable(marked);
  }

  async invalidationMark(): Promise<number> {
    return Number((this.stmt.invalidationMark!.get() as Row).value);
  }

  async changesAfter(afterSeq: number, limit: number): Promise<ChangeRow[]> {
    rules.checkChangesRead(afterSeq, limit);
    return (this.stmt.changesAfter!.all(afterSeq, limit) as Row[]).map(changeFromRow);
  }

  async lastChange(): Promise<number> {
    return Number((this.stmt.lastChange!.get() as Row).value);
  }

  async appendAudit(link: (head: AuditHead) => AuditRow[]): Promise<void> {
    this.write(() => {
      // Inside the write lock: no other process can move the head until this commits.
      const head = auditHeadFromRow(this.stmt.auditHead!.get() as Row);
      const rows = link(head);
      rules.checkAuditLink(head, rows);
      const insert = this.stmt.insertAudit!;
      for (const r of rows) insert.run(r.seq, r.time, r.principal, r.onBehalfOf ?? null, r.clientId, r.method, r.uri, r.status, r.peer, r.requestId, r.node, r.prevHash, r.hash);
      const last = rows.at(-1);
      if (last) this.stmt.moveAuditHead!.run(last.seq, last.hash);
    });
    // Always its own fsync: this is what makes a request's other writes durable too.
    await this.wal?.sync();
  }

  async auditHead(): Promise<AuditHead> {
    return auditHeadFromRow(this.stmt.auditHead!.get() as Row);
  }

  async readAudit(afterSeq: number, limit: number): Promise<AuditRow[]> {
    rules.checkCount('afterSeq', afterSeq);
    rules.checkCount('limit', limit);
    return (this.stmt.readAudit!.all(afterSeq, limit) as Row[]).map(auditFromRow);
  }

  async acceptPeerRequest(request: PeerRequest, limit: number): Promise<PeerRequestOutcome> {
    const slices = rules.peerRequestSlices(request);
    const outcome = this.write(() => {
      const seen = this.stmt.peerRequestSeen!.get(request.peer, request.requestId, request.now) !== undefined;
      const accepted = Number((this.stmt.peerRequestsAccepted!.get(request.peer, slices.since) as Row).n);
      const outcome = rules.peerRequestOutcome({ seen, accepted }, limit);
      if (outcome === 'accepted') {
        this.stmt.rememberPeerRequest!.run(request.peer, request.requestId, request.expiresAt);
        this.stmt.countPeerRequest!.run(request.peer, slices.slice, slices.expiresAt);
      }
      return outcome;
    });
    return this.durable(outcome);
  }

  async sweep(now: number, unboundGraceMs: number): Promise<SweepResult> {
    const cutoff = rules.sweepCutoffs(now, unboundGraceMs);
    const result = this.write(() => {
      const expired = this.sql('SELECT id FROM resources WHERE expires_at IS NOT NULL AND expires_at <= ? ORDER BY id').all(cutoff.resources) as Row[];
      let keys = 0;
      for (const { id } of expired) {
        keys += this.sql('DELETE FROM keys WHERE resource_id = ?').run(id).changes;
        this.sql('DELETE FROM authorizations WHERE resource_id = ?').run(id);
        this.sql('DELETE FROM resources WHERE id = ?').run(id);
      }
      keys += this.sql('DELETE FROM keys WHERE resource_id IS NULL AND expires_at <= ?').run(cutoff.unboundKeys).changes;
      const channels = this.sql('DELETE FROM channels WHERE expires_at <= ?').run(cutoff.channels).changes;
      const peerRequests = this.sql('DELETE FROM peer_requests WHERE expires_at <= ?').run(cutoff.peerRequests).changes;
      this.sql('DELETE FROM peer_request_counts WHERE expires_at <= ?').run(cutoff.peerRequests);
      const feed = rules.feedCutoffs(Date.now(), Number((this.stmt.lastChange!.get() as Row).value));
      const changes =
        this.sql('DELETE FROM changes WHERE at <= ? OR seq <= ?').run(feed.changesAt, feed.changesSeq).changes +
        this.sql('DELETE FROM federated_invalidations WHERE at <= ?').run(feed.invalidationsAt).changes;
      // Requests forgotten at their channel's end; the answers of the others destroyed after their window.
      const answers =
        this.sql('DELETE FROM retry_answers WHERE expires_at <= ?').run(now).changes +
        this.sql('UPDATE retry_answers SET cmk_id = NULL, sealed = NULL WHERE answer_until <= ? AND sealed IS NOT NULL').run(now).changes;
      return { resources: expired.length, resourceIds: expired.map((r) => r.id as string), keys, channels, peerRequests, changes, answers };
    });
    // secure_delete overwrote the rows in the database pages; a checkpoint also retires the WAL
    // frames that still held the destroyed (sealed) key rows.
    if (result.keys > 0) this.db.pragma('wal_checkpoint(TRUNCATE)');
    return this.durable(result);
  }

  async leadership(holder: string): Promise<Leadership> {
    const take = this.sql(`UPDATE leader_lease SET holder = ?, expires_at = ? WHERE id = 1 AND (holder = ? OR expires_at <= ?)`);
    const give = this.sql(`UPDATE leader_lease SET holder = '', expires_at = 0 WHERE id = 1 AND holder = ?`);
    return new LeaseLeadership(
      {
        take: (h, now, until) => {
          rules.checkInstant('now', now);
          rules.checkInstant('until', until);
          return this.durable(this.write(() => take.run(h, until, h, now).changes === 1));
        },
        give: (h) => this.durable(void this.write(() => give.run(h))),
      },
      holder,
      LEADER_LEASE_MS,
    );
  }

  async enqueuePush(row: PushRow, limit: number): Promise<boolean> {
    rules.checkPushRow(row);
    rules.checkCount('limit', limit);
    const queued = this.write(() => {
      if (Number((this.sql('SELECT COUNT(*) AS n FROM push_outbox').get() as Row).n) >= limit) return false;
      this.db
        .prepare('INSERT INTO push_outbox (id, created_at, resource_ids, user_ids, targets, attempts, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(row.id, row.createdAt, JSON.stringify(row.resourceIds), JSON.stringify(row.userIds), row.targets === null ? null : JSON.stringify(row.targets), row.attempts, row.nextAttemptAt);
      return true;
    });
    return this.durable(queued);
  }

  async duePushes(now: number, limit: number): Promise<PushRow[]> {
    rules.checkInstant('now', now);
    rules.checkCount('limit', limit);
    return (this.sql('SELECT * FROM push_outbox WHERE next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?').all(now, limit) as Row[]).map(pushFromRow);
  }

  async reschedulePush(id: string, targets: Record<string, string[]>, attempts: number, nextAttemptAt: number): Promise<void> {
    rules.checkPushTargets(targets);
    rules.checkCount('attempts', attempts);
    rules.checkInstant('nextAttemptAt', nextAttemptAt);
    this.write(() => this.sql('UPDATE push_outbox SET targets = ?, attempts = ?, next_attempt_at = ? WHERE id = ?').run(JSON.stringify(targets), attempts, nextAttemptAt, id));
    await this.durable(undefined);
  }

  async deletePush(id: string): Promise<void> {
    this.write(() => this.sql('DELETE FROM push_outbox WHERE id = ?').run(id));
    await this.durable(undefined);
  }

  async countPushes(): Promise<number> {
    return Number((this.sql('SELECT COUNT(*) AS n FROM push_outbox').get() as Row).n);
  }

  async heartbeat(node: NodeRow, forgetBefore: number): Promise<void> {
    rules.checkNodeRow(node);
    rules.checkInstant('forgetBefore', forgetBefore);
    this.write(() => {
      this.db
        .prepare(
          `INSERT INTO nodes (id, host, pid, version, started_at, seen_at, is_leader) VALUES (?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, version = excluded.version, started_at = excluded.started_at, seen_at = excluded.seen_at, is_leader = excluded.is_leader`,
        )
        .run(node.id, node.host, node.pid, node.version, node.startedAt, node.seenAt, node.leading ? 1 : 0);
      this.sql('DELETE FROM nodes WHERE seen_at < ?').run(forgetBefore);
    });
    await this.durable(undefined);
  }

  async listNodes(): Promise<NodeRow[]> {
    return (this.sql('SELECT * FROM nodes ORDER BY seen_at DESC, id').all() as Row[]).map(nodeFromRow);
  }

  async removeNode(id: string): Promise<void> {
    this.write(() => this.sql('DELETE FROM nodes WHERE id = ?').run(id));
    await this.durable(undefined);
  }

  async claimAnswer(claim: AnswerClaim): Promise<AnswerClaimOutcome> {
    const outcome = this.write((): AnswerClaimOutcome => {
      // Under the write lock: no other process claims between this read and the write.
      const r = this.sql('SELECT * FROM retry_answers WHERE channel_id = ? AND request_id = ?').get(claim.channelId, claim.requestId) as Row | undefined;
      const decision = rules.answerClaimDecision(r && answerStateFromRow(r), claim);
      if (typeof decision !== 'string') return decision;
      this.db
        .prepare(
          `INSERT INTO retry_answers (channel_id, request_id, digest, claimant, lease_until, answer_until, expires_at, answered, cmk_id, sealed)
           VALUES (@channelId, @requestId, @digest, @claimant, @leaseUntil, @answerUntil, @expiresAt, 0, NULL, NULL)
           ON CONFLICT (channel_id, request_id) DO UPDATE SET digest = excluded.digest, claimant = excluded.claimant,
             lease_until = excluded.lease_until, answer_until = excluded.answer_until, expires_at = excluded.expires_at, answered = 0, cmk_id = NULL, sealed = NULL`,
        )
        .run({ channelId: claim.channelId, requestId: claim.requestId, digest: claim.digest, claimant: claim.claimant, leaseUntil: claim.leaseUntil, answerUntil: claim.answerUntil, expiresAt: claim.expiresAt });
      return { state: 'claimed' } as const;
    });
    return this.durable(outcome);
  }

  async rememberAnswer(key: AnswerClaimKey, answer: RememberedAnswer): Promise<boolean> {
    const changed = this.write(
      () =>
        this.db
          .prepare('UPDATE retry_answers SET answered = 1, cmk_id = ?, sealed = ? WHERE channel_id = ? AND request_id = ? AND claimant = ? AND answered = 0')
          .run(answer.cmkId, Buffer.from(answer.sealed.buffer, answer.sealed.byteOffset, answer.sealed.byteLength), key.channelId, key.requestId, key.claimant).changes,
    );
    return this.durable(changed === 1);
  }

  async releaseAnswer(key: AnswerClaimKey): Promise<void> {
    this.write(() => {
      this.sql('DELETE FROM retry_answers WHERE channel_id = ? AND request_id = ? AND claimant = ? AND answered = 0').run(key.channelId, key.requestId, key.claimant);
    });
    await this.durable(undefined);
  }

  async ping(): Promise<void> {
    this.sql('SELECT 1').get();
  }

  async close(): Promise<void> {
    await this.changeSignal.stop();
    await this.checkpoints?.close();
    // What a request wrote whose audit record never came (its write failed) is made durable too.
    if (this.db.open) this.wal?.syncNow();
    await this.wal?.close();
    if (this.db.open) this.db.close();
  }
}
