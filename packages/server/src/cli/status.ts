/**
 * `kms status`: what an operator checks before and after a change — the version, whether the
 * storage answers, the head of the audit log, how long the static certificate has left, whether
 * each peer answers. Exits 1 when something needs attention, so a cron job or a probe can alert on
 * it. Only reads: a SQLite file that is not there is reported, not created.
 */
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { configPath, loadConfig, type KmsConfig } from '../config.js';
import { openStore, postgresAddress, postgresProblem } from '../server.js';
import { PostgresStore } from '../store/postgres.js';
import type { Store } from '../store/store.js';
import { NODE_RECENT_MS } from '../limits.js';
import { KMS_VERSION } from '../version.js';
import { DEFAULT_CONFIG, flagOrEnv, parse } from './args.js';

/** A certificate with fewer days left than this needs renewing (kms init --renew-certificates). */
export const CERTIFICATE_WARNING_DAYS = 30;
/** How long one check may take: a status that hangs on a frozen database says nothing. */
const CHECK_TIMEOUT_MS = 3_000;

const USAGE = `usage: kms status [--config D/kms.json] [--db URL] [--json]
  prints the version, whether the storage answers, the audit log's head, the static certificate's
  expiry and whether each peer answers (GET /.well-known/kms, ${CHECK_TIMEOUT_MS / 1000} s each). Exits 1 when something needs
  attention: storage unreachable, the certificate expiring within ${CERTIFICATE_WARNING_DAYS} days, a peer not answering.
  Also the nodes (kms serve processes) seen on this database within the last ${NODE_RECENT_MS / 1000} s, the one leading
  the background work marked, and the invalidation pushes waiting. --json: one JSON object on stdout, for scripts.
Environment: KMS_CONFIG, KMS_DB.`;

interface Check {
  ok: boolean;
  /** What is wrong, when not ok. */
  problem?: string;
}

export interface Status {
  version: string;
  authority: string;
  storage: Check & { url: string };
  audit?: { seq: number; time?: string };
  certificate: Check & { notAfter?: string; daysLeft?: number };
  peers: (Check & { authority: string; endpoint: string })[];
  /** The processes that recorded themselves within NODE_RECENT_MS, the most recently seen first (none when storage failed). */
  nodes: ShownNode[];
  /** The node leading the background work, if one of those seen says so. */
  leader?: string;
  /** Invalidation pushes waiting in the outbox. */
  pushOutbox?: number;
  /** Everything that needs attention, one line each; empty when healthy. */
  attention: string[];
}

export interface ShownNode {
  id: string;
  host: string;
  pid: number;
  version: string;
  startedAt: string;
  seenAt: string;
  secondsAgo: number;
  leading: boolean;
}

/** The storage as status shows it: never a PostgreSQL URL's credentials. */
const shown = (url: string) => (url.startsWith('sqlite:') ? url : `PostgreSQL at ${postgresAddress(url) ?? 'an unparseable URL'}`);

/** Opens the storage without creating anything: a missing SQLite file is a problem, not a new database. */
async function openExisting(url: string, config: KmsConfig): Promise<Store> {
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length);
    const full = isAbsolute(path) ? path : resolve(config.baseDir, path);
    if (path !== ':memory:' && !existsSync(full)) throw new Error(`no database at ${full}`);
    return openStore(url, config.baseDir);
  }
  if (url.startsWith('postgres://') || url.startsWith('postgresql://')) {
    try {
      return await PostgresStore.open(url, { connectionTimeoutMillis: CHECK_TIMEOUT_MS, max: 1 });
    } catch (err) {
      throw new Error(postgresProblem(url, err));
    }
  }
  return openStore(url, config.baseDir);
}

function within<T>(work: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

async function storageStatus(url: string, config: KmsConfig): Promise<Pick<Status, 'storage' | 'audit' | 'nodes' | 'leader' | 'pushOutbox'>> {
  let store: Store | undefined;
  try {
    store = await within(openExisting(url, config), 'the storage');
    await within(store.ping(), 'the storage');
    const head = await within(store.auditHead(), 'the storage');
    const last = head ? (await within(store.readAudit(head.seq - 1, 1), 'the storage'))[0] : undefined;
    // Heartbeats are written with the wall clock (nodes/heartbeat.ts): compared with it here.
    const seen = Date.now();
    const nodes = (await within(store.listNodes(), 'the storage'))
      .filter((n) => seen - n.seenAt <= NODE_RECENT_MS)
      .map((n) => ({ ...n, startedAt: new Date(n.startedAt).toISOString(), seenAt: new Date(n.seenAt).toISOString(), secondsAgo: Math.max(0, Math.round((seen - n.seenAt) / 1000)) }));
    const pushOutbox = await within(store.countPushes(), 'the storage');
    return {
      storage: { ok: true, url: shown(url) },
      audit: { seq: head?.seq ?? 0, time: last ? new Date(last.time).toISOString() : undefined },
      nodes,
      leader: nodes.find((n) => n.leading)?.id,
      pushOutbox,
    };
  } catch (err) {
    return { storage: { ok: false, url: shown(url), problem: (err as Error).message }, nodes: [] };
  } finally {
    await store?.close().catch(() => {});
  }
}

function certificateStatus(config: KmsConfig, now: number): Status['certificate'] {
  const file = configPath(config, config.staticKey.cert);
  try {
    const cert = new X509Certificate(readFileSync(file));
    const notAfter = new Date(cert.validTo);
    const daysLeft = Math.floor((notAfter.getTime() - now) / 86_400_000);
    const ok = daysLeft >= CERTIFICATE_WARNING_DAYS;
    const problem = daysLeft < 0 ? `expired on ${notAfter.toISOString()}` : `expires in ${daysLeft} days (kms init --renew-certificates)`;
    return { ok, notAfter: notAfter.toISOString(), daysLeft, ...(ok ? {} : { problem }) };
  } catch (err) {
    return { ok: false, problem: `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
  }
}

async function peerStatus(peer: KmsConfig['peers'][number]): Promise<Status['peers'][number]> {
  const endpoint = peer.endpoint.replace(/\/+$/, '');
  const base = { authority: peer.authority.toLowerCase(), endpoint };
  try {
    const res = await fetch(`${endpoint}/.well-known/kms`, { signal: AbortSignal.timeout(CHECK_TIMEOUT_MS) });
    await res.body?.cancel();
    return res.ok ? { ...base, ok: true } : { ...base, ok: false, problem: `answered HTTP ${res.status}` };
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } };
    const why = e.name === 'TimeoutError' ? `no answer within ${CHECK_TIMEOUT_MS} ms` : (e.cause?.code ?? e.cause?.message ?? e.message);
    return { ...base, ok: false, problem: `unreachable: ${why}` };
  }
}

export async function kmsStatus(config: KmsConfig, url: string, now = Date.now()): Promise<Status> {
  const [stored, peers] = await Promise.all([storageStatus(url, config), Promise.all(config.peers.map(peerStatus))]);
  const certificate = certificateStatus(config, now);
  const attention = [
    ...(stored.storage.ok ? [] : [`storage: ${stored.storage.problem}`]),
    ...(certificate.ok ? [] : [`static certificate: ${certificate.problem}`]),
    ...peers.filter((p) => !p.ok).map((p) => `peer ${p.authority}: ${p.problem}`),
  ];
  return { version: KMS_VERSION, authority: config.authority, ...stored, certificate, peers, attention };
}

function text(s: Status): string {
  const mark = (c: Check) => (c.ok ? 'ok' : `NEEDS ATTENTION: ${c.problem}`);
  const lines = [
    `kms ${s.version} (${s.authority})`,
    `storage: ${s.storage.url}: ${s.storage.ok ? 'reachable' : mark(s.storage)}`,
    `audit head: ${s.audit ? `seq ${s.audit.seq}${s.audit.time ? ` at ${s.audit.time}` : ''} (kms audit verify checks the chain)` : 'unknown'}`,
    `static certificate: ${s.certificate.notAfter ? `valid until ${s.certificate.notAfter}, ${s.certificate.daysLeft} days left` : 'unreadable'}${s.certificate.ok ? '' : `: ${mark(s.certificate)}`}`,
    `peers: ${s.peers.length === 0 ? 'none configured' : s.peers.length}`,
    ...s.peers.map((p) => `  ${p.authority} ${p.endpoint}: ${p.ok ? 'reachable' : mark(p)}`),
    `nodes: ${s.storage.ok ? `${s.nodes.length === 0 ? 'none' : s.nodes.length} seen in the last ${NODE_RECENT_MS / 1000} s` : 'unknown'}`,
    ...s.nodes.map((n) => `  ${n.id}${n.leading ? ' (leads)' : ''}: kms ${n.version}, pid ${n.pid} on ${n.host}, up since ${n.startedAt}, seen ${n.secondsAgo} s ago`),
    ...(s.pushOutbox === undefined ? [] : [`invalidation pushes waiting: ${s.pushOutbox}`]),
    s.attention.length === 0 ? 'status: ok' : `status: ${s.attention.length} problem${s.attention.length === 1 ? '' : 's'}`,
  ];
  return lines.join('\n') + '\n';
}

export async function statusCommand(argv: string[]): Promise<void> {
  const { values } = parse(argv, { config: { type: 'string' }, db: { type: 'string' }, json: { type: 'boolean' } }, { usage: USAGE });
  const config = loadConfig(flagOrEnv(values.str('config'), 'KMS_CONFIG') ?? DEFAULT_CONFIG);
  const status = await kmsStatus(config, flagOrEnv(values.str('db'), 'KMS_DB') ?? config.storage.url);
  process.stdout.write(values.bool('json') ? JSON.stringify(status) + '\n' : text(status));
  if (status.attention.length > 0) {
    for (const line of status.attention) process.stderr.write(`kms: ${line}\n`);
    process.exitCode = 1;
  }
}
