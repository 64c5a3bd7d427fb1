/**
 * Versioned schema migrations, applied in order inside one transaction each. The SQL is kept to
 * what SQLite and PostgreSQL both accept, so both backends share one history. Never edit a
 * released migration: add the next one.
 */
import { AUDIT_GENESIS } from '../model.js';

export interface Migration {
  version: number;
  name: string;
  /** One text for both backends, or each one's own where they cannot share one (a trigger). */
  sql: string | { sqlite: string; postgres: string };
}

/** SQLite spells BYTEA as BLOB and byte order BINARY; the rest of the shared SQL it accepts as is. */
export const toSqlite = (sql: string) => sql.replace(/\bBYTEA\b/g, 'BLOB').replace(/\bCOLLATE "C"/g, 'COLLATE BINARY');

/** The SQL of a migration as `backend` runs it. */
export function migrationSql(m: Migration, backend: 'sqlite' | 'postgres'): string {
  if (typeof m.sql !== 'string') return m.sql[backend];
  return backend === 'sqlite' ? toSqlite(m.sql) : m.sql;
}

export const migrations: Migration[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
CREATE TABLE cmks (
  id TEXT PRIMARY KEY,
  state TEXT NOT NULL CHECK (state IN ('active', 'inactive')),
  assigned_org_id TEXT,
  created_at BIGINT NOT NULL,
  sealed BYTEA NOT NULL
);
CREATE UNIQUE INDEX cmks_one_active ON cmks ((COALESCE(assigned_org_id, ''))) WHERE state = 'active';

CREATE TABLE resources (
  id TEXT PRIMARY KEY,
  creator TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT
);
CREATE INDEX resources_expiry ON resources (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE keys (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  client_id TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  resource_id TEXT REFERENCES resources (id),
  bind_date BIGINT,
  bind_seq BIGINT,
  cmk_id TEXT NOT NULL REFERENCES cmks (id),
  sealed BYTEA NOT NULL
);
CREATE INDEX keys_by_resource ON keys (resource_id, bind_date, bind_seq) WHERE resource_id IS NOT NULL;
CREATE INDEX keys_unbound_expiry ON keys (expires_at) WHERE resource_id IS NULL;

CREATE TABLE authorizations (
  id TEXT PRIMARY KEY,
  resource_id TEXT NOT NULL REFERENCES resources (id),
  auth_id TEXT,
  role_uri TEXT,
  created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX authorizations_unique ON authorizations (resource_id, auth_id) WHERE auth_id IS NOT NULL;
CREATE INDEX authorizations_by_auth_id ON authorizations (auth_id);

CREATE TABLE channels (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  client_id TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  cmk_id TEXT NOT NULL REFERENCES cmks (id),
  sealed BYTEA NOT NULL
);
CREATE INDEX channels_expiry ON channels (expires_at);

CREATE TABLE counters (
  name TEXT PRIMARY KEY,
  value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('bind_seq', 0);

CREATE TABLE audit (
  seq BIGINT PRIMARY KEY,
  time BIGINT NOT NULL,
  principal TEXT,
  client_id TEXT,
  method TEXT,
  uri TEXT,
  status INTEGER NOT NULL,
  peer TEXT,
  request_id TEXT,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL
);
`,
  },
  {
    version: 2,
    name: 'index authorizations by resource',
    // The partial unique index (auth_id IS NOT NULL) cannot serve "all of a resource's authorizations".
    sql: `CREATE INDEX authorizations_by_resource ON authorizations (resource_id, created_at, id);`,
  },
  {
    version: 3,
    name: 'federation: peers that fetched a KRO, copies of other KMSs\' KROs',
    sql: `
CREATE TABLE peer_fetches (
  resource_id TEXT NOT NULL,
  peer TEXT NOT NULL,
  fetched_at BIGINT NOT NULL,
  PRIMARY KEY (resource_id, peer)
);
CREATE TABLE federated_copies (
  resource_uri TEXT PRIMARY KEY,
  authority TEXT NOT NULL,
  fetched_at BIGINT NOT NULL,
  cmk_id TEXT NOT NULL REFERENCES cmks (id),
  sealed BYTEA NOT NULL
);
CREATE TABLE federated_keys (
  key_uri TEXT PRIMARY KEY,
  resource_uri TEXT NOT NULL
);
CREATE INDEX federated_keys_by_resource ON federated_keys (resource_uri);
`,
  },
  {
    version: 4,
    name: 'audit: one chain for all nodes, each record naming the node that wrote it',
    // Every node extends the chain under the lock of the one audit_head row (seeded from the
    // current last record); seq and prev_hash are unique, so a record that does not follow the
    // one before it cannot be written even by a writer that skipped the lock.
    sql: `
ALTER TABLE audit ADD COLUMN node TEXT;
CREATE UNIQUE INDEX audit_one_successor ON audit (prev_hash);
CREATE TABLE audit_head (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq BIGINT NOT NULL,
  hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '${AUDIT_GENESIS}');
UPDATE audit_head SET
  seq = (SELECT MAX(seq) FROM audit),
  hash = (SELECT hash FROM audit WHERE seq = (SELECT MAX(seq) FROM audit))
WHERE EXISTS (SELECT 1 FROM audit);
`,
  },
  {
    version: 5,
    name: 'federation: signed peer requests accepted once across all nodes',
    // peer_requests: each requestId until its window ends (the key refuses a second one).
    // peer_request_counts: how many a peer had accepted per time slice, so that its bound is
    // checked by summing a few rows instead of counting its whole window (rules.ts).
    sql: `
CREATE TABLE peer_requests (
  peer TEXT NOT NULL,
  request_id TEXT NOT NULL,
  expires_at BIGINT NOT NULL,
  PRIMARY KEY (peer, request_id)
);
CREATE INDEX peer_requests_expiry ON peer_requests (expires_at);
CREATE TABLE peer_request_counts (
  peer TEXT NOT NULL,
  slice BIGINT NOT NULL,
  accepted BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  PRIMARY KEY (peer, slice)
);
CREATE INDEX peer_request_counts_expiry ON peer_request_counts (expires_at);
`,
  },
  {
    version: 6,
    name: 'cache coherence: a change feed for other processes\' caches; federation invalidations shared by all nodes',
    // changes: what other processes on this database must drop from their caches (a channel
    // deleted, a CMK added or changed), numbered by the change_seq counter row, which a writer
    // holds until COMMIT: numbers are gapless and commit in order, so "seq > last seen" never
    // skips a change still being written. federated_invalidations: per KRO copy, the
    // invalidation_seq of the last invalidation received by any node, which a fetch that began
    // at an earlier mark must not overwrite (Store.putCopy).
    sql: `
CREATE TABLE changes (
  seq BIGINT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('channel', 'cmk')),
  subject TEXT NOT NULL,
  at BIGINT NOT NULL
);
CREATE INDEX changes_at ON changes (at);
INSERT INTO counters (name, value) VALUES ('change_seq', 0);
CREATE TABLE federated_invalidations (
  resource_uri TEXT PRIMARY KEY,
  authority TEXT NOT NULL,
  seq BIGINT NOT NULL,
  at BIGINT NOT NULL
);
CREATE INDEX federated_invalidations_at ON federated_invalidations (at);
INSERT INTO counters (name, value) VALUES ('invalidation_seq', 0);
`,
  },
  {
    version: 7,
    name: 'background work done by one elected node: the leader lease, the push outbox, the nodes seen',
    // leader_lease: SQLite's election (one row, taken over once expired; PostgreSQL holds an
    // advisory lock instead). push_outbox: invalidation pushes until delivered or given up, with
    // what is needed to compute their targets, never key material. nodes: each process's heartbeat.
    sql: `
CREATE TABLE leader_lease (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  holder TEXT NOT NULL,
  expires_at BIGINT NOT NULL
);
INSERT INTO leader_lease (id, holder, expires_at) VALUES (1, '', 0);
CREATE TABLE push_outbox (
  id TEXT PRIMARY KEY,
  created_at BIGINT NOT NULL,
  resource_ids TEXT NOT NULL,
  user_ids TEXT NOT NULL,
  targets TEXT,
  attempts INTEGER NOT NULL,
  next_attempt_at BIGINT NOT NULL
);
CREATE INDEX push_outbox_due ON push_outbox (next_attempt_at);
CREATE TABLE nodes (
  id TEXT PRIMARY KEY,
  host TEXT NOT NULL,
  pid INTEGER NOT NULL,
  version TEXT NOT NULL,
  started_at BIGINT NOT NULL,
  seen_at BIGINT NOT NULL,
  is_leader INTEGER NOT NULL
);
`,
  },
  {
    version: 8,
    name: 'retries: the first answer to a (channel, requestId), sealed, for the retry window',
    // One row per request that changes state, claimed before it runs (claimant, lease_until) and
    // answered after (cmk_id, sealed: the answer sealed by the keyring, as it may hold keys).
    sql: `
CREATE TABLE retry_answers (
  channel_id TEXT NOT NULL,
  request_id TEXT NOT NULL,
  digest TEXT NOT NULL,
  claimant TEXT NOT NULL,
  lease_until BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  cmk_id TEXT REFERENCES cmks (id),
  sealed BYTEA,
  PRIMARY KEY (channel_id, request_id)
);
CREATE INDEX retry_answers_expiry ON retry_answers (expires_at);
`,
  },
  {
    version: 9,
    name: 'compliance: audit onBehalfOf, the archive of federated copies, keys by creator',
    // on_behalf_of: null for every other request, and for the records written before (their
    // hashes do not cover it). federated_archive: every distinct version of a peer's KRO this KMS
    // received (the copy, as sealed then), kept when the copy is replaced: legal discovery reads
    // it. It starts with the copies held now.
    sql: `
ALTER TABLE audit ADD COLUMN on_behalf_of TEXT;
CREATE TABLE federated_archive (
  resource_uri TEXT NOT NULL,
  version BIGINT NOT NULL,
  fetched_at BIGINT NOT NULL,
  authority TEXT NOT NULL,
  cmk_id TEXT NOT NULL REFERENCES cmks (id),
  sealed BYTEA NOT NULL,
  PRIMARY KEY (resource_uri, version)
);
INSERT INTO federated_archive (resource_uri, version, fetched_at, authority, cmk_id, sealed)
  SELECT resource_uri, 1, fetched_at, authority, cmk_id, sealed FROM federated_copies;
CREATE INDEX keys_by_creator ON keys (user_id, id);
`,
  },
  {
    version: 10,
    name: 'retries: a request that changes state is answered once for its channel\'s life',
    // The answer is kept until answer_until (the retry window) and then destroyed; the row stays
    // until expires_at, now the channel's end, so a replay of the request is refused, never run
    // again (core/retries.ts). `answered` tells an answered row whose answer is gone from a claim.
    // Rows from before: answered when they hold an answer, which is kept as long as before.
    sql: `
ALTER TABLE retry_answers ADD COLUMN answer_until BIGINT;
ALTER TABLE retry_answers ADD COLUMN answered INTEGER NOT NULL DEFAULT 0;
UPDATE retry_answers SET answer_until = expires_at, answered = CASE WHEN sealed IS NULL THEN 0 ELSE 1 END;
CREATE INDEX retry_answers_answer_expiry ON retry_answers (answer_until);
`,
  },
  {
    version: 11,
    name: 'keys by creator in byte order on every backend',
    // keysCreatedBy pages in byte order (COLLATE "C" on PostgreSQL: the order SQLite uses), which an
    // index in the database's collation cannot give: PostgreSQL read and sorted all of a creator's
    // keys for every page. SQLite spells the collation BINARY, the order it already had.
    sql: `
DROP INDEX keys_by_creator;
CREATE INDEX keys_by_creator ON keys (user_id, id COLLATE "C");
`,
  },
  {
    version: 12,
    name: 'the change feed also names keys bound and resources whose authorizations changed',
    // Key rows and authorization sets are cached on every node (cached-rows.ts); a bind or an
    // authorization change made elsewhere must reach those caches as channels and CMKs do. A CHECK
    // cannot be altered in SQLite: the table is rebuilt (it holds only recent entries).
    sql: `
CREATE TABLE changes_next (
  seq BIGINT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('channel', 'cmk', 'key', 'resource')),
  subject TEXT NOT NULL,
  at BIGINT NOT NULL
);
INSERT INTO changes_next (seq, kind, subject, at) SELECT seq, kind, subject, at FROM changes;
DROP TABLE changes;
ALTER TABLE changes_next RENAME TO changes;
CREATE INDEX changes_at ON changes (at);
`,
  },
  {
    version: 13,
    name: 'audit: each record follows the one before it, checked by a trigger instead of an index',
    // The unique index on prev_hash (migration 4) refused a second successor of one record, but each
    // insert landed on a random page of it: a batch of N records wrote N index pages more to the
    // WAL. A trigger that reads the record before (the newest page of the primary key) refuses the
    // same forks and more: a record that does not follow its predecessor at all.
    sql: {
      sqlite: `
DROP INDEX audit_one_successor;
CREATE TRIGGER audit_follows BEFORE INSERT ON audit
WHEN NEW.prev_hash IS NOT (CASE WHEN NEW.seq = 1 THEN '${AUDIT_GENESIS}' ELSE (SELECT hash FROM audit WHERE seq = NEW.seq - 1) END)
BEGIN SELECT RAISE(ABORT, 'audit record does not follow the record before it'); END;
`,
      postgres: `
DROP INDEX audit_one_successor;
CREATE FUNCTION audit_follows() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF NEW.prev_hash IS DISTINCT FROM (CASE WHEN NEW.seq = 1 THEN '${AUDIT_GENESIS}' ELSE (SELECT hash FROM audit WHERE seq = NEW.seq - 1) END) THEN
    RAISE EXCEPTION 'audit record % does not follow the record before it', NEW.seq USING ERRCODE = '23514';
  END IF;
  RETURN NEW;
END $fn$;
CREATE TRIGGER audit_follows BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION audit_follows();
`,
    },
  },
];

/** The schema version this kms creates and reads (the last migration). */
export const SCHEMA_VERSION = Math.max(...migrations.map((m) => m.version));

/**
 * Refuses a database a newer kms has migrated: this one does not know what the newer tables and
 * columns must be kept in step with (a rolled-back node would write rows the newer nodes read
 * wrong, or miss the change feed they rely on). Upgrades roll forward; going back is a restore.
 */
export function checkSchemaKnown(applied: number): void {
  if (applied > SCHEMA_VERSION) {
    throw new Error(`the database's schema is at version ${applied}, newer than this kms knows (${SCHEMA_VERSION}): run the newer kms, or restore a backup into a new database to go back`);
  }
}
