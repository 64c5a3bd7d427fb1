/**
 * The audit log (PROTOCOL.md §7): every request, append-only and hash-chained, so that
 * `kms audit verify` detects any altered, removed or reordered record. Records hold who asked for
 * what and how it ended, never key material, bearer tokens or channel keys (nothing of the
 * request body but its method and uri reaches this module).
 *
 * Appends are group-committed (store/group-commit.ts): a request is answered only once its record
 * is durable, but a busy KMS pays one fsync per batch of records. Every KMS process on one
 * database (nodes, workers) extends the same chain: each batch is linked to the head the store
 * reads under its lock in the batch's own transaction (Store.appendAudit), never to a head this
 * process remembers, and each record names the node that wrote it.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { GroupCommit } from '../store/group-commit.js';
import { checkText } from '../store/rules.js';
import { AUDIT_GENESIS, type AuditEntry, type AuditRow } from '../model.js';
import type { Store } from '../store/store.js';

export type { AuditEntry };

export const GENESIS = AUDIT_GENESIS;

/**
 * A new node id, `<hostname>/<pid>/<random>`: the host and process an operator can look for, and
 * 32 random bits so that a restarted process that got the same pid is told apart.
 */
export function newNodeId(): string {
  return `${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`;
}

/**
 * Each record's hash is an HMAC-SHA-256, keyed from the root key, over the previous hash and the
 * record: whoever can write the database but does not hold the root key cannot forge a chain
 * that verifies, even by recomputing it from the start. The node is hashed when the record names
 * one, and onBehalfOf after it when there is one (the node then in its place even if null, so the
 * two cannot pass for each other): records written before either existed keep the form they
 * were hashed in.
 */
export function auditHash(key: Uint8Array, prevHash: string, seq: number, e: AuditEntry & { node?: string | null }): string {
  const fields: unknown[] = [seq, e.time, e.principal, e.clientId, e.method, e.uri, e.status, e.peer, e.requestId];
  const node = e.node ?? null;
  if (e.onBehalfOf !== null && e.onBehalfOf !== undefined) fields.push(node, e.onBehalfOf);
  else if (node !== null) fields.push(node);
  return createHmac('sha256', key).update(prevHash).update('\n').update(JSON.stringify(fields)).digest('hex');
}

/** The string fields of an entry: what the store keeps as TEXT. */
const TEXT_FIELDS = ['principal', 'onBehalfOf', 'clientId', 'method', 'uri', 'peer', 'requestId'] as const satisfies readonly (keyof AuditEntry)[];

export class AuditLog {
  private readonly commits: GroupCommit<AuditEntry>;
  /** Told how many records a failed write lost (metrics); each one's caller is refused. */
  onWriteFailure: ((records: number) => void) | undefined;
  /** Told how many records a batch made durable (checkpointer.ts counts them). */
  onWritten: ((records: number) => void) | undefined;

  /** `node`: the id this process's records carry (newNodeId() unless given). */
  constructor(
    private readonly store: Store,
    private readonly key: Uint8Array,
    readonly node: string = newNodeId(),
  ) {
    // The chain is extended at commit time, after the head the store holds locked, so records of
    // this process and of others never fork it.
    this.commits = new GroupCommit(async (entries) => {
      try {
        await this.store.appendAudit((head) => this.link(head, entries));
        this.onWritten?.(entries.length);
      } catch (err) {
        this.onWriteFailure?.(entries.length);
        throw err;
      }
    });
  }

  /** The rows of `entries` after `head`: one object each, built once (this runs for every request). */
  private link(head: { seq: number; hash: string }, entries: readonly AuditEntry[]): AuditRow[] {
    let { seq, hash } = head;
    const node = this.node;
    const rows = new Array<AuditRow>(entries.length);
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      seq += 1;
      const row: AuditRow = {
        seq,
        time: e.time,
        principal: e.principal,
        onBehalfOf: e.onBehalfOf ?? null,
        clientId: e.clientId,
        method: e.method,
        uri: e.uri,
        status: e.status,
        peer: e.peer,
        requestId: e.requestId,
        node,
        prevHash: hash,
        hash: '',
      };
      row.hash = hash = auditHash(this.key, row.prevHash, seq, row);
      rows[i] = row;
    }
    return rows;
  }

  /**
   * Resolves once the record is durable. A string the store would not keep as it is hashed (a
   * lone surrogate, U+0000: store/rules.ts checkText) is refused here, alone, rather than failing
   * the whole group it would join; requests are refused for such strings long before.
   */
  record(entry: AuditEntry): Promise<void> {
    try {
      for (const field of TEXT_FIELDS) {
        const value = entry[field];
        if (typeof value === 'string') checkText(`audit.${field}`, value);
      }
    } catch (err) {
      return Promise.reject(err);
    }
    return this.commits.add(entry);
  }

  /** Resolves once everything recorded so far is written. */
  flush(): Promise<void> {
    return this.commits.flush();
  }
}

export type VerifyResult =
  | {
      ok: true;
      records: number;
      /** How many of the records each node wrote, by node id, in the order they first appear. */
      nodes: Record<string, number>;
      /** Records that name no node (written before nodes were recorded). */
      unattributed: number;
    }
  | { ok: false; records: number; seq: number; problem: string };

/**
 * Walks the whole chain; names the first record that is missing, reordered or altered, and a
 * chain that ends before the head the store recorded (its newest records removed without moving
 * the head too). Records appended while it walks are verified as well.
 */
export async function verifyAudit(store: Store, key: Uint8Array): Promise<VerifyResult> {
  const head = await store.auditHead();
  const nodes: Record<string, number> = {};
  let unattributed = 0;
  let expectedSeq = 1;
  let prev = GENESIS;
  for (;;) {
    const rows = await store.readAudit(expectedSeq - 1, 1000);
    if (rows.length === 0) break;
    for (const row of rows) {
      if (row.seq !== expectedSeq) return { ok: false, records: expectedSeq - 1, seq: expectedSeq, problem: `record ${expectedSeq} is missing` };
      if (row.prevHash !== prev) return { ok: false, records: expectedSeq - 1, seq: row.seq, problem: `record ${row.seq} does not follow record ${row.seq - 1}` };
      if (auditHash(key, prev, row.seq, row) !== row.hash) return { ok: false, records: expectedSeq - 1, seq: row.seq, problem: `record ${row.seq} was altered` };
      if (row.seq === head.seq && row.hash !== head.hash) return { ok: false, records: expectedSeq - 1, seq: row.seq, problem: `record ${row.seq} is not the head the log recorded` };
      if (row.node === null) unattributed += 1;
      else nodes[row.node] = (nodes[row.node] ?? 0) + 1;
      prev = row.hash;
      expectedSeq += 1;
    }
  }
  const records = expectedSeq - 1;
  if (records < head.seq) return { ok: false, records, seq: records + 1, problem: `records ${records + 1} to ${head.seq} are missing (the log's head is record ${head.seq})` };
  return { ok: true, records, nodes, unattributed };
}
