/**
 * `kms serve` on PostgreSQL, as a person runs it: `kms init`, then `kms serve --db postgres://…`,
 * the SDK flow (Alice creates keys and a resource authorizing Bob, Bob retrieves them), a clean
 * SIGTERM, and `kms audit verify --db postgres://…` finds the chain intact.
 *
 * The server is 127.0.0.1:5432, database `test` (OPERATING.md, "CI"; KMS_TEST_POSTGRES_URL
 * overrides it). The run gets a fresh schema through the URL's `schema=NAME` query parameter, which
 * the KMS takes out of the URL, creates if missing and uses as the connection's search_path; it is
 * dropped afterwards. Without a reachable server the flow is skipped and says why, except under
 * CI=true, where that is a failure. The unreachable-database message is checked either way.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { postgresProblem, shownUrl, TEST_POSTGRES_URL } from '@openkms/server/testing';
import { KmsClient } from '@openkms/client';
import { runKms, serve } from './support/cli.js';

const PG_URL = TEST_POSTGRES_URL;
const AUTHORITY = 'kms.pg.example';
const TEST = { timeout: 60_000 };
const shown = shownUrl(PG_URL);


const problem = await postgresProblem(PG_URL);

test('an unreachable PostgreSQL is one clear line and a non-zero exit', TEST, () => {
  const dir = mkdtempSync(join(tmpdir(), 'kms-pg-bad-'));
  try {
    assert.equal(runKms(['init', '--dir', dir, '--authority', AUTHORITY, '--domain', 'pg.example']).code, 0);
    // Port 1 on loopback: nothing listens there.
    for (const args of [
      ['serve', '--config', join(dir, 'kms.json'), '--port', '0', '--db', 'postgres://postgres:secret@127.0.0.1:1/test'],
      ['audit', 'verify', '--config', join(dir, 'kms.json'), '--db', 'postgres://postgres:secret@127.0.0.1:1/test'],
    ]) {
      const r = runKms(args);
      assert.notEqual(r.code, 0);
      assert.equal(r.stderr.trim(), 'kms: cannot reach PostgreSQL at 127.0.0.1:1: ECONNREFUSED');
      assert.doesNotMatch(r.stderr, /secret/);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

if (problem !== undefined) {
  if (process.env.CI === 'true') {
    test('kms serve on PostgreSQL', () => assert.fail(`${problem} (required under CI=true)`));
  } else {
    test('kms serve on PostgreSQL', { skip: `skipped: ${problem}` }, () => {});
  }
} else {
  describe('kms serve on PostgreSQL', () => {
    const schema = `kms_serve_${randomBytes(6).toString('hex')}`;
    const db = `${PG_URL}${PG_URL.includes('?') ? '&' : '?'}schema=${schema}`;
    let dir: string;
    let config: string;

    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'kms-pg-'));
      config = join(dir, 'kms.json');
      const r = runKms(['init', '--dir', dir, '--authority', AUTHORITY, '--domain', 'pg.example']);
      assert.equal(r.code, 0, r.stderr);
    });
    after(async () => {
      rmSync(dir, { recursive: true, force: true });
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      try {
        await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      } finally {
        await client.end();
      }
    });

    test('init, serve --db postgres://, the SDK flow, SIGTERM, audit verify', TEST, async () => {
      const server = await serve(['--config', config, '--port', '0', '--db', db]);
      const clients: KmsClient[] = [];
      let stopped = false;
      try {
        const token = (user: string) => {
          const r = runKms(['token', '--config', config, '--user', user]);
          assert.equal(r.code, 0, r.stderr);
          return r.stdout.trim();
        };
        const make = (user: string) => {
          const c = new KmsClient({ url: server.url, token: token(user), trustAnchors: [readFileSync(join(dir, 'ca.pem'), 'utf8')], authority: AUTHORITY });
          clients.push(c);
          return c;
        };
        const alice = make('alice@pg.example');
        const bob = make('bob@pg.example');
        const keys = await alice.createKeys(2);
        const { resource } = await alice.createResource({ authIds: ['bob@pg.example'], keyUris: keys.map((k) => k.uri) });
        for (const key of keys) {
          const got = await bob.retrieveKey(key.uri);
          assert.equal(got.jwk.k, key.jwk.k);
          assert.equal(got.resourceUri, resource.uri);
        }
        assert.deepEqual((await bob.retrieveResourceKeys(resource.uri)).map((k) => k.uri).sort(), keys.map((k) => k.uri).sort());
        await Promise.all(clients.map((c) => c.close()));
        clients.length = 0;
        stopped = true;
        assert.equal(await server.stop(), 0, server.stderr.join(''));
      } finally {
        await Promise.all(clients.map((c) => c.close().catch(() => {})));
        if (!stopped) await server.stop();
      }

      // The tables really are in the schema the URL named.
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      try {
        const n = await client.query(`SELECT COUNT(*)::int AS n FROM ${schema}.keys`);
        assert.equal(n.rows[0].n, 2);
      } finally {
        await client.end();
      }

      const verify = runKms(['audit', 'verify', '--config', config, '--db', db]);
      assert.equal(verify.code, 0, verify.stderr);
      const m = /audit log intact: (\d+) records/.exec(verify.stdout);
      assert.ok(m && Number(m[1]) > 0, verify.stdout);
    });
  });
}
