/**
 * The audit log (PROTOCOL.md §7): every request, append-only and hash-chained, so that
 * `kms audit verify` detects any altered, removed or reordered record. Records hold who asked for
 * what and how it ended, never key material, bearer tokens or channel keys (nothing of the
 * request body but its method and uri reaches this module).
 *
 * Appends are group-committed (store/group-commit.ts): a request is answered only once its record
 * is durable, but a busy KMS pays one fsync per batch of records.
 */
import { createHmac } from 'node:crypto';
import { GroupCommit } from '../store/group-commit.js';
import type { AuditEntry, AuditRow } from '../model.js';
import type { Store } from '../store/store.js';

export type { AuditEntry };

export const GENESIS = '0'.repeat(64);

/**
 * Each record's hash is an HMAC-SHA-256, keyed from the root key, over the previous hash and the
 * record: whoever can write the database but does not hold the root key cannot forge a chain
 * that verifies, even by recomputing it from the start.
 */
export function auditHash(key: Uint8Array, prevHash: string, seq: number, e: AuditEntry): string {
  const canonical = JSON.stringify([seq, e.time, e.principal, e.clientId, e.method, e.uri, e.status, e.peer, e.requestId]);
  return createHmac('sha256', key).update(prevHash).update('\n').update(canonical).digest('hex');
}

export class AuditLog {
  private readonly commits: GroupCommit<AuditEntry>;

  private constructor(
    private readonly store: Store,
    private readonly key: Uint8Array,
    private head: { seq: number; hash: string },
  ) {
    // The chain is extended at commit time, in commit order, so concurrent records never fork it.
    this.commits = new GroupCommit(async (entries) => {
      let { seq, hash } = this.head;
      const rows: AuditRow[] = entries.map((entry) => {
        seq += 1;
        const prevHash = hash;
        hash = auditHash(this.key, prevHash, seq, entry);
        return { seq, ...entry, prevHash, hash };
      });
      await this.store.appendAudit(rows);
      this.head = { seq, hash };
    });
  }

  static async open(store: Store, key: Uint8Array): Promise<AuditLog> {
    return new AuditLog(store, key, (await store.auditHead()) ?? { seq: 0, hash: GENESIS });
  }

  /** Resolves once the record is durable. */
  record(entry: AuditEntry): Promise<void> {
    return this.commits.add(entry);
  }

  /** Resolves once everything recorded so far is written. */
  flush(): Promise<void> {
    return this.commits.flush();
  }
}

export type VerifyResult = { ok: true; records: number } | { ok: false; records: number; seq: number; problem: string };

/** Walks the whole chain; names the first record that is missing, reordered or altered. */
export async function verifyAudit(store: Store, key: Uint8Array): Promise<VerifyResult> {
  let expectedSeq = 1;
  let prev = GENESIS;
  for (;;) {
    const rows = await store.readAudit(expectedSeq - 1, 1000);
    if (rows.length === 0) return { ok: true, records: expectedSeq - 1 };
    for (const row of rows) {
      if (row.seq !== expectedSeq) return { ok: false, records: expectedSeq - 1, seq: expectedSeq, problem: `record ${expectedSeq} is missing` };
      if (row.prevHash !== prev) return { ok: false, records: expectedSeq - 1, seq: row.seq, problem: `record ${row.seq} does not follow record ${row.seq - 1}` };
      if (auditHash(key, prev, row.seq, row) !== row.hash) return { ok: false, records: expectedSeq - 1, seq: row.seq, problem: `record ${row.seq} was altered` };
      prev = row.hash;
      expectedSeq += 1;
    }
  }
}
