/**
 * `kms init` over a KMS that has run: `--force` refuses while a database of the folder holds data
 * (the default kms.db, a SQLite file kms.json names, a PostgreSQL database kms.json names), names
 * what holds it and leaves every file as it was; it still works on a folder that holds only
 * certificates. `--renew-certificates` issues a new static certificate from the same CA and keeps
 * the root key, the CA and the data: keys created before it are retrieved after it by a client
 * that trusts the same ca.pem.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { KmsClient } from '@openkms/client';
import { postgresProblem, TEST_POSTGRES_URL } from '@openkms/server/testing';
import { oneClearLine, runKms, serve } from '../support/cli.js';

const AUTHORITY = 'kms.life.example';
const INIT = ['--authority', AUTHORITY, '--domain', 'life.example'];
const TEST = { timeout: 60_000 };

/** Every file of the folder with a hash of its content: any write shows. */
const contents = (dir: string): Record<string, string> =>
  Object.fromEntries(readdirSync(dir).sort().map((f) => [f, createHash('sha256').update(readFileSync(join(dir, f))).digest('hex')]));

const token = (config: string, user: string) => {
  const r = runKms(['token', '--config', config, '--user', user]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim();
};

const client = (url: string, dir: string, user: string) =>
  new KmsClient({ url, token: token(join(dir, 'kms.json'), user), trustAnchors: [readFileSync(join(dir, 'ca.pem'), 'utf8')], authority: AUTHORITY, clientId: 'life-test' });

/** Starts the folder's KMS, lets alice create `n` keys, stops it; returns the keys. */
async function keysCreatedIn(dir: string, n = 2): Promise<{ uri: string; k: string }[]> {
  const server = await serve(['--config', join(dir, 'kms.json'), '--port', '0']);
  const alice = client(server.url, dir, 'alice@life.example');
  try {
    return (await alice.createKeys(n)).map((key) => ({ uri: key.uri, k: key.jwk.k }));
  } finally {
    await alice.close();
    assert.equal(await server.stop(), 0);
  }
}

/** Runs `check` on a copy of the served folder (removed afterwards), so each test changes its own. */
async function inCopy(check: (copy: string) => void | Promise<void>): Promise<void> {
  const copy = mkdtempSync(join(tmpdir(), 'kms-life-copy-'));
  try {
    cpSync(used, copy, { recursive: true });
    await check(copy);
  } finally {
    rmSync(copy, { recursive: true, force: true });
  }
}

let used: string;
let keys: { uri: string; k: string }[];

before(async () => {
  used = mkdtempSync(join(tmpdir(), 'kms-life-init-'));
  assert.equal(runKms(['init', '--dir', used, ...INIT]).code, 0);
  keys = await keysCreatedIn(used);
});
after(() => rmSync(used, { recursive: true, force: true }));

describe('kms init --force', () => {
  test('refuses over a folder whose kms.db holds data, naming it; nothing is written', TEST, () => {
    const before = contents(used);
    for (const args of [['--force'], []]) {
      const r = runKms(['init', '--dir', used, ...INIT, ...args]);
      assert.equal(r.code, 2);
      oneClearLine(r.stderr);
      if (args.length) assert.match(r.stderr, /refusing to write a new root key: .*kms\.db holds data \(tables .*\); nothing was written/);
    }
    assert.deepEqual(contents(used), before, 'root key, certificates, config and database untouched');
  });

  test('refuses when kms.json is gone but its kms.db is still there', TEST, () =>
    inCopy(async (copy) => {
      rmSync(join(copy, 'kms.json'));
      const before = contents(copy);
      const r = runKms(['init', '--dir', copy, ...INIT]);
      assert.equal(r.code, 2);
      oneClearLine(r.stderr);
      assert.match(r.stderr, /kms\.db holds data/);
      assert.deepEqual(contents(copy), before);
    }));

  test('refuses when the SQLite file kms.json names holds data, though there is no kms.db', TEST, () =>
    inCopy(async (copy) => {
      for (const f of readdirSync(copy).filter((f) => f.startsWith('kms.db'))) cpSync(join(copy, f), join(copy, f.replace('kms.db', 'elsewhere.db')));
      for (const f of readdirSync(copy).filter((f) => f.startsWith('kms.db'))) rmSync(join(copy, f));
      const cfg = JSON.parse(readFileSync(join(copy, 'kms.json'), 'utf8'));
      writeFileSync(join(copy, 'kms.json'), JSON.stringify({ ...cfg, storage: { url: 'sqlite:elsewhere.db' } }));
      const before = contents(copy);
      const r = runKms(['init', '--dir', copy, ...INIT, '--force']);
      assert.equal(r.code, 2);
      oneClearLine(r.stderr);
      assert.match(r.stderr, /elsewhere\.db holds data/);
      assert.deepEqual(contents(copy), before);
    }));

  test('works on a folder that holds only certificates and keys (never served): a new root key', TEST, () => {
    const fresh = mkdtempSync(join(tmpdir(), 'kms-life-fresh-'));
    try {
      assert.equal(runKms(['init', '--dir', fresh, ...INIT]).code, 0);
      const rootKey = readFileSync(join(fresh, 'root.key'), 'utf8');
      const r = runKms(['init', '--dir', fresh, ...INIT, '--force']);
      assert.equal(r.code, 0, r.stderr);
      assert.notEqual(readFileSync(join(fresh, 'root.key'), 'utf8'), rootKey);
    } finally {
      rmSync(fresh, { recursive: true, force: true });
    }
  });
});

describe('kms init --force and a PostgreSQL database', async () => {
  const problem = await postgresProblem(TEST_POSTGRES_URL);
  if (problem !== undefined) {
    if (process.env.CI === 'true') test('PostgreSQL', () => assert.fail(`${problem} (required under CI=true)`));
    else test('PostgreSQL', { skip: `skipped: ${problem}` }, () => {});
    return;
  }
  const schema = `kms_life_${randomBytes(6).toString('hex')}`;
  const url = `${TEST_POSTGRES_URL}${TEST_POSTGRES_URL.includes('?') ? '&' : '?'}schema=${schema}`;
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'kms-life-pg-'));
    assert.equal(runKms(['init', '--dir', dir, ...INIT]).code, 0);
    const cfg = JSON.parse(readFileSync(join(dir, 'kms.json'), 'utf8'));
    writeFileSync(join(dir, 'kms.json'), JSON.stringify({ ...cfg, storage: { url } }));
  });
  after(async () => {
    rmSync(dir, { recursive: true, force: true });
    const c = new pg.Client({ connectionString: TEST_POSTGRES_URL });
    await c.connect();
    await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).finally(() => c.end());
  });

  test('an empty database (no schema yet) lets --force through; once served, it refuses', TEST, async () => {
    const again = runKms(['init', '--dir', dir, ...INIT, '--force']);
    assert.equal(again.code, 0, again.stderr);
    const cfg = JSON.parse(readFileSync(join(dir, 'kms.json'), 'utf8'));
    writeFileSync(join(dir, 'kms.json'), JSON.stringify({ ...cfg, storage: { url } }));
    await keysCreatedIn(dir, 1);
    const before = contents(dir);
    const r = runKms(['init', '--dir', dir, ...INIT, '--force']);
    assert.equal(r.code, 2);
    oneClearLine(r.stderr);
    assert.match(r.stderr, /the PostgreSQL database at 127\.0\.0\.1:5432 \(storage\.url of .*kms\.json\) holds data \(tables .*\)/);
    assert.deepEqual(contents(dir), before);
  });

  test('an unreachable PostgreSQL cannot be shown empty: refused', TEST, () => {
    const copy = mkdtempSync(join(tmpdir(), 'kms-life-pg-down-'));
    try {
      cpSync(dir, copy, { recursive: true });
      const cfg = JSON.parse(readFileSync(join(copy, 'kms.json'), 'utf8'));
      writeFileSync(join(copy, 'kms.json'), JSON.stringify({ ...cfg, storage: { url: 'postgres://postgres:secret@127.0.0.1:1/test' } }));
      const r = runKms(['init', '--dir', copy, ...INIT, '--force']);
      assert.equal(r.code, 2);
      oneClearLine(r.stderr);
      assert.match(r.stderr, /cannot tell whether the database holds data: cannot reach PostgreSQL at 127\.0\.0\.1:1: ECONNREFUSED/);
      assert.doesNotMatch(r.stderr, /secret/);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  });
});

describe('kms init --renew-certificates', () => {
  test('a new certificate from the same CA; root key, CA and data kept; stored keys read after it', TEST, async () => {
    const kept = ['root.key', 'ca.pem', 'ca-key.pem', 'static-key.pem', 'kms.json'];
    const before = contents(used);
    const oldCert = new X509Certificate(readFileSync(join(used, 'static-cert.pem')));
    const r = runKms(['init', '--renew-certificates', '--dir', used]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /renewed the static certificate .* valid until /);
    const after = contents(used);
    for (const f of kept) assert.equal(after[f], before[f], `${f} kept`);
    const cert = new X509Certificate(readFileSync(join(used, 'static-cert.pem')));
    assert.notEqual(cert.serialNumber, oldCert.serialNumber, 'a new certificate');
    assert.ok(cert.checkIssued(new X509Certificate(readFileSync(join(used, 'ca.pem')))), 'issued by the same CA');

    const server = await serve(['--config', join(used, 'kms.json'), '--port', '0']);
    const alice = client(server.url, used, 'alice@life.example');
    try {
      for (const key of keys) assert.equal((await alice.retrieveKey(key.uri)).jwk.k, key.k);
    } finally {
      await alice.close();
      assert.equal(await server.stop(), 0);
    }
  });

  test('--new-static-key replaces the key too; the data stays readable', TEST, () =>
    inCopy(async (copy) => {
      const before = contents(copy);
      const r = runKms(['init', '--renew-certificates', '--new-static-key', '--dir', copy]);
      assert.equal(r.code, 0, r.stderr);
      const after = contents(copy);
      assert.notEqual(after['static-key.pem'], before['static-key.pem']);
      assert.equal(after['root.key'], before['root.key']);
      const server = await serve(['--config', join(copy, 'kms.json'), '--port', '0']);
      const alice = client(server.url, copy, 'alice@life.example');
      try {
        assert.equal((await alice.retrieveKey(keys[0]!.uri)).jwk.k, keys[0]!.k);
      } finally {
        await alice.close();
        assert.equal(await server.stop(), 0);
      }
    }));

  test('refused without a folder, with flags that name a new identity, or without the CA key', TEST, () =>
    inCopy(async (copy) => {
      rmSync(join(copy, 'ca-key.pem'));
      const cfg = JSON.parse(readFileSync(join(copy, 'kms.json'), 'utf8'));
      writeFileSync(join(copy, 'kms.json'), JSON.stringify({ ...cfg, ca: { cert: 'ca.pem' } }));
      const before = contents(copy);
      for (const [args, message] of [
        [['--renew-certificates', '--dir', join(copy, 'absent')], /kms\.json does not exist: nothing to renew/],
        [['--renew-certificates', '--dir', copy, '--force'], /--force does not go with --renew-certificates/],
        [['--renew-certificates', '--dir', copy, '--authority', AUTHORITY], /--authority does not go with --renew-certificates/],
        [['--renew-certificates', '--dir', copy], /names no CA key .*--ca-key/],
        [['--new-static-key', '--dir', copy, ...INIT], /--new-static-key goes with --renew-certificates/],
      ] as const) {
        const r = runKms(['init', ...args]);
        assert.notEqual(r.code, 0, args.join(' '));
        oneClearLine(r.stderr);
        assert.match(r.stderr, message);
      }
      assert.deepEqual(contents(copy), before);
      // With the CA key given, the renewal goes through.
      const r = runKms(['init', '--renew-certificates', '--dir', copy, '--ca-key', join(used, 'ca-key.pem')]);
      assert.equal(r.code, 0, r.stderr);
      assert.notEqual(contents(copy)['static-cert.pem'], before['static-cert.pem']);
    }));
});
