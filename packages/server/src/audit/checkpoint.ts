/**
 * Audit checkpoints: the chain's head `{seq, hash, time}`, signed (JWS, PS256) by the KMS's static
 * key and appended, one compact JWS a line, to a file outside the database. Whoever can rewrite the
 * database but not this file, or cannot sign, cannot remove the newest records unnoticed: the
 * chain must hold at least up to the newest checkpoint, and the record there must have its hash.
 * Checkpoints hold no secret: the seq and hash of a record say nothing of what it records.
 */
import { X509Certificate, type KeyObject } from 'node:crypto';
import { closeSync, constants, fstatSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';
import { CompactSign, compactVerify } from 'jose';
import type { AuditHead } from '../model.js';

export interface Checkpoint {
  seq: number;
  hash: string;
  /** When it was signed, epoch milliseconds. */
  time: number;
}

/** The JWS `typ`: a checkpoint is not mistaken for another JWS the static key signs. */
const TYP = 'kms-audit-checkpoint';
/** How much of the file's end is read to find its last line; a line is some 700 bytes. */
const TAIL_BYTES = 64 * 1024;
const enc = new TextEncoder();

export function signCheckpoint(head: AuditHead, time: number, key: { privateKey: KeyObject; kid: string }): Promise<string> {
  const payload: Checkpoint = { seq: head.seq, hash: head.hash, time };
  return new CompactSign(enc.encode(JSON.stringify(payload))).setProtectedHeader({ alg: 'PS256', kid: key.kid, typ: TYP }).sign(key.privateKey);
}

/**
 * The checkpoint a JWS holds, once its signature verifies under the static certificate (the
 * first of the chain `certPem`); throws a one-line Error otherwise.
 */
export async function verifyCheckpoint(jws: string, certPem: string): Promise<Checkpoint> {
  const publicKey = new X509Certificate(certPem).publicKey;
  let payload: Uint8Array;
  try {
    const verified = await compactVerify(jws, publicKey, { algorithms: ['PS256'] });
    if (verified.protectedHeader.typ !== TYP) throw new Error('not a checkpoint');
    payload = verified.payload;
  } catch (err) {
    throw new Error(`its signature does not verify under the static certificate (${(err as Error).message})`);
  }
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(payload).toString('utf8'));
  } catch {
    throw new Error('its payload is not JSON');
  }
  const c = value as Partial<Checkpoint>;
  if (
    typeof value !== 'object' || value === null ||
    !Number.isSafeInteger(c.seq) || c.seq! < 0 ||
    typeof c.hash !== 'string' || !/^[0-9a-f]{64}$/.test(c.hash) ||
    !Number.isSafeInteger(c.time)
  ) {
    throw new Error('its payload is not {seq, hash, time}');
  }
  return { seq: c.seq!, hash: c.hash, time: c.time! };
}

/**
 * Appends one line and makes it durable before returning. O_APPEND: the processes of one host
 * (workers, nodes sharing a folder) append to one file without overwriting each other, each line
 * in one write. Owner-only, like the folder's other files.
 */
export function appendCheckpoint(path: string, jws: string): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT, 0o600);
  try {
    writeSync(fd, `${jws}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** The file's last line (the newest checkpoint), undefined when the file is empty. */
export function lastCheckpointLine(path: string): string | undefined {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const length = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, size - length);
    const lines = buf.toString('utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '');
    // A first line cut by the window is never the last one unless the file holds one huge line.
    return lines.at(-1);
  } finally {
    closeSync(fd);
  }
}
