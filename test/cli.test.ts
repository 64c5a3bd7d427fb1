/**
 * The `kms` command as a person uses it (OPERATING.md): every bad input gets one clear line on
 * stderr and a non-zero exit, never a stack trace; `kms token` prints only the token; `kms audit
 * verify` detects altered, removed and reordered records.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { nodeKmsSession } from './support/node-kms.js';
import { runKms, serve } from './support/cli.js';

let dir: string;
let config: string;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kms-cli-'));
  config = join(dir, 'kms.json');
  const r = runKms(['init', '--dir', dir, '--authority', 'kms.a.example', '--domain', 'a.example', '--domain', 'A.Example.Org']);
  assert.equal(r.code, 0, r.stderr);
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** One line on stderr, no stack trace. */
function oneClearLine(stderr: string): void {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got: ${stderr}`);
  assert.match(lines[0]!, /^kms: /);
  assert.doesNotMatch(stderr, /\n\s+at |Error: /);
}

describe('kms init', () => {
  test('writes the folder with secrets owner-only and relative paths', () => {
    const written = JSON.parse(readFileSync(config, 'utf8'));
    assert.equal(written.authority, 'kms.a.example');
    assert.deepEqual(written.domains, ['a.example', 'a.example.org']);
    assert.equal(written.staticKey.key, 'static-key.pem');
    for (const f of ['static-key.pem', 'ca-key.pem', 'root.key', 'dev-issuer-key.json']) {
      assert.equal(statSync(join(dir, f)).mode & 0o077, 0, `${f} is owner-only`);
    }
    assert.match(readFileSync(join(dir, 'ca.pem'), 'utf8'), /BEGIN CERTIFICATE/);
  });

  test('refuses to overwrite without --force', () => {
    const r = runKms(['init', '--dir', dir, '--authority', 'kms.a.example', '--domain', 'a.example']);
    assert.notEqual(r.code, 0);
    oneClearLine(r.stderr);
    assert.match(r.stderr, /--force/);
  });

  test('refuses a bad authority', () => {
    const r = runKms(['init', '--dir', join(dir, 'x'), '--authority', 'not a name', '--domain', 'a.example']);
    assert.notEqual(r.code, 0);
    oneClearLine(r.stderr);
  });
});

describe('bad input', () => {
  test('unknown command and unknown flag', () => {
    for (const args of [['frobnicate'], ['serve', '--config', 'x', '--bogus'], ['token', '--nope']]) {
      const r = runKms(args);
      assert.notEqual(r.code, 0);
      oneClearLine(r.stderr);
    }
  });

  test('missing and malformed config files', () => {
    const missing = runKms(['serve', '--config', join(dir, 'absent.json')]);
    assert.notEqual(missing.code, 0);
    oneClearLine(missing.stderr);
    assert.match(missing.stderr, /absent\.json/);
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{"authority": 42');
    const r1 = runKms(['serve', '--config', bad]);
    oneClearLine(r1.stderr);
    writeFileSync(bad, JSON.stringify({ authority: 'kms.a.example', domains: [] }));
    const r2 = runKms(['serve', '--config', bad]);
    assert.notEqual(r2.code, 0);
    oneClearLine(r2.stderr);
    assert.match(r2.stderr, /domains|staticKey/);
  });

  test('port in use', async () => {
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    const port = (blocker.address() as { port: number }).port;
    try {
      const r = runKms(['serve', '--config', config, '--port', String(port)]);
      assert.notEqual(r.code, 0);
      oneClearLine(r.stderr);
      assert.match(r.stderr, /in use/);
    } finally {
      blocker.close();
    }
  });

  test('unreachable database', () => {
    const r = runKms(['serve', '--config', config, '--db', 'sqlite:/nonexistent/dir/kms.db']);
    assert.notEqual(r.code, 0);
    oneClearLine(r.stderr);
  });
});

describe('kms token', () => {
  test('prints the token alone on stdout', () => {
    const r = runKms(['token', '--config', config, '--user', 'alice@a.example', '--roles', 'kmsAdmin', '--ttl', '60']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$/);
    const claims = JSON.parse(Buffer.from(r.stdout.split('.')[1]!, 'base64url').toString());
    assert.equal(claims.sub, 'alice@a.example');
    assert.deepEqual(claims.roles, ['kmsAdmin']);
    assert.equal(claims.exp - claims.iat, 60);
  });

  test('environment variables stand in for flags', () => {
    const r = runKms(['token', '--user', 'bob@a.example'], { KMS_CONFIG: config });
    assert.equal(r.code, 0, r.stderr);
  });

  test('refuses without --user', () => {
    const r = runKms(['token', '--config', config]);
    assert.notEqual(r.code, 0);
    oneClearLine(r.stderr);
  });
});

describe('kms audit verify', () => {
  before(async () => {
    const server = await serve(['--config', config, '--port', '0']);
    try {
      const token = runKms(['token', '--config', config, '--user', 'alice@a.example']).stdout.trim();
      const alice = await nodeKmsSession(server.url, token, 'cli-test');
      for (let i = 0; i < 5; i++) await alice.call({ method: 'update', uri: '/ping' });
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });

  const tamper = (sql: string) => {
    const copy = join(dir, `tampered-${Math.random().toString(36).slice(2)}.db`);
    const db = new Database(join(dir, 'kms.db'));
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    writeFileSync(copy, readFileSync(join(dir, 'kms.db')));
    const t = new Database(copy);
    t.exec(sql);
    t.close();
    return copy;
  };

  test('an intact log verifies', () => {
    const r = runKms(['audit', 'verify', '--config', config]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /intact: \d+ records/);
    const count = Number(/intact: (\d+)/.exec(r.stdout)![1]);
    assert.ok(count >= 6, 'handshake and pings are recorded');
    assert.equal(statSync(join(dir, 'kms.db')).mode & 0o077, 0, 'the database is owner-only');
  });

  test('an altered record is named', () => {
    const r = runKms(['audit', 'verify', '--config', config, '--db', `sqlite:${tamper('UPDATE audit SET principal = \'mallory@a.example\' WHERE seq = 3')}`]);
    assert.notEqual(r.code, 0);
    oneClearLine(r.stderr);
    assert.match(r.stderr, /record 3 was altered/);
  });

  test('a removed record is named', () => {
    const r = runKms(['audit', 'verify', '--config', config, '--db', `sqlite:${tamper('DELETE FROM audit WHERE seq = 2')}`]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /record 2 is missing/);
  });

  test('reordered records are named', () => {
    const r = runKms([
      'audit',
      'verify',
      '--config',
      config,
      '--db',
      `sqlite:${tamper('UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = -1')}`,
    ]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /record 2 does not follow record 1/);
  });
});
