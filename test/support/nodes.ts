/**
 * Several `kms serve` processes on ONE database, for the tests of what nodes share: one KMS folder
 * (`kms init`), its SQLite file or a fresh PostgreSQL schema (127.0.0.1:5432, database `test`;
 * KMS_TEST_POSTGRES_URL overrides it; dropped afterwards; skipped without a server, except under
 * CI=true), the nodes started one after the other, and SDK clients pinned to a node of the test's
 * choosing (as a load balancer would route them).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import pg from 'pg';
import { KmsClient, type FetchLike } from '@openkms/client';
import { postgresProblem, TEST_POSTGRES_URL } from '@openkms/server/testing';
import { runKms, serve, type Served } from './cli.js';

export interface Backend {
  name: 'SQLite' | 'PostgreSQL';
  /** `kms serve` arguments naming the database (none: the config's SQLite file). */
  dbArgs: string[];
  /** Runs SQL on the nodes' database directly (tables unqualified), as an operator or intruder would. */
  sql<T = Record<string, unknown>>(dir: string, text: string, params?: unknown[]): Promise<T[]>;
}

/** Runs `register` once per backend; PostgreSQL only when a server answers (or fails under CI=true). */
export async function onEachBackend(title: string, register: (backend: Backend) => void): Promise<void> {
  // Asked before any suite starts: their `kms` commands (spawnSync) would stall this connect.
  const problem = await postgresProblem(TEST_POSTGRES_URL);
  register({
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
  });
  if (problem !== undefined) {
    if (process.env.CI === 'true') test(`${title} (PostgreSQL)`, () => assert.fail(`${problem} (required under CI=true)`));
    else test(`${title} (PostgreSQL)`, { skip: `skipped: ${problem}` }, () => {});
    return;
  }
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
  after(() => query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`));
  register({
    name: 'PostgreSQL',
    dbArgs: ['--db', `${TEST_POSTGRES_URL}${TEST_POSTGRES_URL.includes('?') ? '&' : '?'}schema=${schema}`],
    sql: (_dir, text, params) => query(text, params, schema),
  });
}

export interface Nodes {
  dir: string;
  authority: string;
  nodes: Served[];
  /** A development token for `user`. */
  token(user: string): string;
  /** Every batch of messages the clients sent, with the node it went to, in order. */
  sent: { node: number; messages: string[] }[];
  /** An SDK client whose every HTTP request goes to node `route()` (read at each request). */
  client(user: string, route: () => number): KmsClient;
  /** Stops the clients and the nodes. */
  stop(): Promise<void>;
}

/** `kms init` in a fresh folder, then `count` nodes of it on the backend's database. */
export async function startNodes(backend: Backend, count: number, authority = 'kms.nodes.example', domain = 'nodes.example'): Promise<Nodes> {
  const dir = mkdtempSync(join(tmpdir(), 'kms-nodes-'));
  const config = join(dir, 'kms.json');
  const init = runKms(['init', '--dir', dir, '--authority', authority, '--domain', domain]);
  assert.equal(init.code, 0, init.stderr);
  const nodes: Served[] = [];
  const clients: KmsClient[] = [];
  const sent: Nodes['sent'] = [];
  // One after the other: the first creates the database's first CMK, the others find it.
  for (let i = 0; i < count; i++) nodes.push(await serve(['--config', config, '--port', '0', ...backend.dbArgs]));
  const token = (user: string) => {
    const r = runKms(['token', '--config', config, '--user', user]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  };
  return {
    dir,
    authority,
    nodes,
    token,
    sent,
    client(user, route) {
      const routed: FetchLike = (input, init) => {
        const node = route();
        if (typeof init?.body === 'string' && input.endsWith('/kms/messages')) sent.push({ node, messages: (JSON.parse(init.body) as { kmsMessages: string[] }).kmsMessages });
        return fetch(input.replace(nodes[0]!.url, nodes[node]!.url), init);
      };
      const c = new KmsClient({
        url: nodes[0]!.url,
        authority,
        token: token(user),
        trustAnchors: [readFileSync(join(dir, 'ca.pem'), 'utf8')],
        fetch: routed,
        debounceMs: 0,
      });
      clients.push(c);
      return c;
    },
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
