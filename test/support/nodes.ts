/**
 * Several `kms serve` processes on ONE database, for the tests of what nodes share: one KMS folder
 * (`kms init`), its SQLite file or a fresh PostgreSQL schema (127.0.0.1:5432, database `test`;
 * KMS_TEST_POSTGRES_URL overrides it; dropped afterwards; skipped without a server, except under
 * CI=true), the nodes started one after the other, and SDK clients pinned to a node of the test's
 * choosing (as a load balancer would route them). A node may be killed (Served.kill) and started
 * again on the same folder and database (`restart`): its clients follow it to its new port.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import pg from 'pg';
import { KmsClient, type FetchLike, type KmsClientOptions } from '@openkms/client';
import { postgresProblem, TEST_POSTGRES_URL } from '@openkms/server/testing';
import { runKms, serve, type RunResult, type Served } from './cli.js';

export interface Backend {
  name: 'SQLite' | 'PostgreSQL';
  /** `kms serve` arguments naming the database (none: the config's SQLite file). */
  dbArgs: string[];
  /** Runs SQL on the nodes' database directly (tables unqualified), as an operator or intruder would. */
  sql<T = Record<string, unknown>>(dir: string, text: string, params?: unknown[]): Promise<T[]>;
}

/**
 * The backends this machine offers: SQLite always, PostgreSQL (a fresh schema, which `drop`
 * removes) when a server answers, else `problem` says why not. Outside the test runner too.
 */
export async function availableBackends(): Promise<{ backends: Backend[]; problem?: string; drop(): Promise<void> }> {
  const problem = await postgresProblem(TEST_POSTGRES_URL);
  const sqlite: Backend = {
    name: 'SQLite',
    dbArgs: [],
    async sql<T>(dir: string, text: string, params: unknown[] = []) {
      const db = new Database(join(dir, 'kms.db'), { fileMustExist: true });
      try {
        // One SQL text serves both: PostgreSQL's $1, $2… become SQLite's ?, in the order written.
        const stmt = db.prepare(text.replace(/\$\d+/g, '?'));
        return (stmt.reader ? stmt.all(...params) : (stmt.run(...params), [])) as T[];
      } finally {
        db.close();
      }
    },
  };
  if (problem !== undefined) return { backends: [sqlite], problem, drop: async () => {} };
  const schema = `kms_nodes_${randomBytes(6).toString('hex')}`;
  const query = async <T>(text: string, params: unknown[] = [], searchPath?: string): Promise<T[]> => {
    const client = new pg.Client({ connectionString: TEST_POSTGRES_URL });
    await client.connect();
    try {
      if (searchPath) await client.query(`SET search_path TO ${searchPath}`);
      return (await client.query(text, params)).rows as T[];
    } finally {
      await client.end();
    }
  };
  const postgres: Backend = {
    name: 'PostgreSQL',
    dbArgs: ['--db', `${TEST_POSTGRES_URL}${TEST_POSTGRES_URL.includes('?') ? '&' : '?'}schema=${schema}`],
    sql: (_dir, text, params) => query(text, params, schema),
  };
  return { backends: [sqlite, postgres], drop: async () => void (await query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)) };
}

/** Runs `register` once per backend; PostgreSQL only when a server answers (or fails under CI=true). */
export async function onEachBackend(title: string, register: (backend: Backend) => void): Promise<void> {
  // Asked before any suite starts: their `kms` commands (spawnSync) would stall this connect.
  const { backends, problem, drop } = await availableBackends();
  for (const backend of backends) register(backend);
  if (problem !== undefined) {
    if (process.env.CI === 'true') test(`${title} (PostgreSQL)`, () => assert.fail(`${problem} (required under CI=true)`));
    else test(`${title} (PostgreSQL)`, { skip: `skipped: ${problem}` }, () => {});
    return;
  }
  after(drop);
}

/** One HTTP request of the clients: the node it went to, its messages, and once settled how. */
export interface Sent {
  node: number;
  messages: string[];
  /** `answered`: an HTTP answer came; `failed`: the connection failed (refused, reset). */
  outcome?: 'answered' | 'failed';
}

/** What a test may set of a client's own options (the rest is the cluster's). */
export type ClientOptions = Pick<KmsClientOptions, 'clientId' | 'maxBatch' | 'timeoutMs'>;

export interface Nodes {
  dir: string;
  /** The KMS folder's kms.json. */
  config: string;
  authority: string;
  nodes: Served[];
  /** A development token for `user`. */
  token(user: string): string;
  /** Every batch of messages the clients sent, with the node it went to, in order. */
  sent: Sent[];
  /** An SDK client whose every HTTP request goes to node `route()` (read at each request). */
  client(user: string, route: () => number, options?: ClientOptions): KmsClient;
  /** Starts node `i` again on the same folder and database (after it stopped or was killed); its clients follow it. */
  restart(i: number): Promise<Served>;
  /** `kms audit verify` of the nodes' database. */
  verifyAudit(): RunResult;
  /** Stops the clients and the nodes. */
  stop(): Promise<void>;
}

/**
 * `kms init` in a fresh folder, then `count` nodes of it on the backend's database. `settings`:
 * top-level members written into kms.json before the nodes start (e.g. `{ limits: {…} }`).
 */
export async function startNodes(backend: Backend, count: number, authority = 'kms.nodes.example', domain = 'nodes.example', settings: Record<string, unknown> = {}): Promise<Nodes> {
  const dir = mkdtempSync(join(tmpdir(), 'kms-nodes-'));
  const config = join(dir, 'kms.json');
  const init = runKms(['init', '--dir', dir, '--authority', authority, '--domain', domain]);
  assert.equal(init.code, 0, init.stderr);
  if (Object.keys(settings).length) writeFileSync(config, JSON.stringify({ ...(JSON.parse(readFileSync(config, 'utf8')) as object), ...settings }, null, 2));
  const nodes: Served[] = [];
  const clients: KmsClient[] = [];
  const sent: Nodes['sent'] = [];
  const start = () => serve(['--config', config, '--port', '0', ...backend.dbArgs]);
  // One after the other: the first creates the database's first CMK, the others find it.
  for (let i = 0; i < count; i++) nodes.push(await start());
  // Clients are made for the first node's URL and routed from it: it stays their base when a node
  // is started again (on another port).
  const base = nodes[0]!.url;
  const token = (user: string) => {
    const r = runKms(['token', '--config', config, '--user', user]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  };
  // One `kms token` run per user (a process start each): a user's clients share it.
  const tokens = new Map<string, string>();
  return {
    dir,
    config,
    authority,
    nodes,
    token,
    sent,
    client(user, route, options = {}) {
      const routed: FetchLike = (input, init) => {
        const node = route();
        const answer = fetch(input.replace(base, nodes[node]!.url), init);
        if (typeof init?.body !== 'string' || !input.endsWith('/kms/messages')) return answer;
        const entry: Sent = { node, messages: (JSON.parse(init.body) as { kmsMessages: string[] }).kmsMessages };
        sent.push(entry);
        return answer.then(
          (res) => ((entry.outcome = 'answered'), res),
          (err: unknown) => {
            entry.outcome = 'failed';
            throw err;
          },
        );
      };
      const c = new KmsClient({
        ...options,
        url: base,
        authority,
        token: tokens.get(user) ?? tokens.set(user, token(user)).get(user)!,
        trustAnchors: [readFileSync(join(dir, 'ca.pem'), 'utf8')],
        fetch: routed,
        debounceMs: 0,
      });
      clients.push(c);
      return c;
    },
    async restart(i) {
      nodes[i] = await start();
      return nodes[i];
    },
    verifyAudit: () => runKms(['audit', 'verify', '--config', config, ...backend.dbArgs]),
    async stop() {
      await Promise.all(clients.map((c) => c.close().catch(() => {})));
      await Promise.all(nodes.map((n) => n.stop()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls `cond` every 20 ms until it holds; resolves with the ms it took, or fails after `limitMs`. */
export async function within(limitMs: number, what: string, cond: () => Promise<boolean>): Promise<number> {
  const started = performance.now();
  for (;;) {
    if (await cond()) return performance.now() - started;
    if (performance.now() - started > limitMs) assert.fail(`${what}: not within ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
