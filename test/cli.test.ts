/**
 * The `kms` command as a person uses it (OPERATING.md): every bad input gets one clear line on
 * stderr and a non-zero exit, never a stack trace — a number out of range names its flag and range,
 * an unknown key in kms.json is named by every command that reads the file; `--help` on any command
 * prints its usage and does nothing else; `kms token` prints only the token; `kms audit verify`
 * detects altered, removed and reordered records and refuses a database that does not exist.
 */
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { nodeKmsSession } from './support/node-kms.js';
import { oneClearLine, runKms, serve } from './support/cli.js';

let dir: string;
let config: string;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kms-cli-'));
  config = join(dir, 'kms.json');
  const r = runKms(['init', '--dir', dir, '--authority', 'kms.a.example', '--domain', 'a.example', '--domain', 'A.Example.Org']);
  assert.equal(r.code, 0, r.stderr);
});
after(() => rmSync(dir, { recursive: true, force: true }));

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

describe('--help on every command prints its usage and does nothing else', () => {
  /** Each command with arguments that, without --help, would act: write, serve, mint, verify, call a KMS. */
  const commands = (kmsDir: string, cfg: string): { args: string[]; usage: RegExp; where?: 'stderr' }[] => [
    { args: ['init', '--dir', join(kmsDir, 'new'), '--authority', 'kms.n.example', '--domain', 'n.example'], usage: /^usage: kms init / },
    { args: ['init', '--renew-certificates', '--dir', kmsDir], usage: /^usage: kms init / },
    { args: ['serve', '--config', cfg, '--port', '0'], usage: /^usage: kms serve / },
    { args: ['status', '--config', cfg], usage: /^usage: kms status / },
    { args: ['status'], usage: /^usage: kms status / },
    { args: ['serve'], usage: /^usage: kms serve / },
    { args: ['token', '--config', cfg, '--user', 'alice@a.example'], usage: /^usage: kms token / },
    { args: ['peer'], usage: /^usage: kms peer add / },
    { args: ['peer', 'add', '--config', cfg, '--authority', 'kms.b.example', '--domain', 'b.example', '--endpoint', 'https://kms.b.example', '--ca', join(kmsDir, 'ca.pem')], usage: /^usage: kms peer add / },
    { args: ['peer', 'list', '--config', cfg], usage: /^usage: kms peer add / },
    { args: ['peer', 'remove', '--config', cfg, '--authority', 'kms.b.example'], usage: /^usage: kms peer add / },
    { args: ['audit'], usage: /^usage: kms audit verify / },
    { args: ['audit', 'verify', '--config', cfg], usage: /^usage: kms audit verify / },
    { args: ['backup', '--config', cfg, '--out', join(kmsDir, 'kms.backup')], usage: /^usage: kms backup / },
    { args: ['restore', '--config', cfg, '--db', `sqlite:${join(kmsDir, 'restored.db')}`, '--from', join(kmsDir, 'kms.backup')], usage: /^usage: kms restore / },
    { args: ['client'], usage: /^usage: kms client / },
    { args: ['client', 'keys', 'create', '--config', cfg, '--token', 't'], usage: /^usage: kms client / },
    { args: ['client', 'key', 'get', 'kms://kms.a.example/keys/x', '--config', cfg, '--token', 't'], usage: /^usage: kms client / },
    { args: ['client', 'resource', 'create', '--config', cfg, '--token', 't'], usage: /^usage: kms client / },
    { args: ['client', 'authorize', '--resource', 'kms://kms.a.example/resources/x', '--user', 'b@a.example', '--config', cfg, '--token', 't'], usage: /^usage: kms client / },
    { args: ['client', 'deauthorize', '--resource', 'kms://kms.a.example/resources/x', '--user', 'b@a.example', '--config', cfg, '--token', 't'], usage: /^usage: kms client / },
    { args: ['client', 'encrypt', cfg, '--resource', 'kms://kms.a.example/resources/x', '--config', cfg, '--token', 't'], usage: /^usage: kms client / },
    { args: ['client', 'decrypt', cfg, '--config', cfg, '--token', 't'], usage: /^usage: kms client / },
    { args: ['demo'], usage: /^usage: kms demo /, where: 'stderr' },
  ];

  /** Every file under `root` with its size and modification time: any write shows. */
  const snapshot = (root: string): string[] =>
    (readdirSync(root, { recursive: true }) as string[]).sort().map((f) => {
      const st = statSync(join(root, f));
      return `${f} ${st.size} ${st.mtimeMs}`;
    });

  test('--help, -h and `kms help <command>`', () => {
    const kmsDir = mkdtempSync(join(tmpdir(), 'kms-cli-help-'));
    const cwd = mkdtempSync(join(tmpdir(), 'kms-cli-help-cwd-'));
    try {
      cpSync(dir, kmsDir, { recursive: true });
      const cfg = join(kmsDir, 'kms.json');
      const before = snapshot(kmsDir);
      for (const { args, usage, where } of commands(kmsDir, cfg)) {
        const variants = [[...args, '--help'], [args[0]!, '-h', ...args.slice(1)]];
        if (args.length === 1) variants.push(['help', args[0]!]);
        for (const argv of variants) {
          const r = runKms(argv, { KMS_URL: 'http://127.0.0.1:1', KMS_CA: cfg }, { cwd });
          const what = `kms ${argv.join(' ')}`;
          assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.stderr}`);
          assert.match(where === 'stderr' ? r.stderr : r.stdout, usage, `${what} prints its usage`);
          if (where !== 'stderr') assert.equal(r.stderr, '', `${what}: nothing on stderr`);
          assert.doesNotMatch(r.stdout + r.stderr, /listening|intact|wrote|renewed|added|status: |eyJ|\(1\) /, `${what} did not act`);
        }
      }
      assert.deepEqual(snapshot(kmsDir), before, 'no file of the KMS folder was written');
      assert.deepEqual(readdirSync(cwd), [], 'nothing was created in the working directory (serve would make .kms)');
    } finally {
      rmSync(kmsDir, { recursive: true, force: true });
      rmSync(cwd, { recursive: true, force: true });
    }
  });

  test('kms --help goes to stdout with exit 0; a bare kms is a usage error on stderr', () => {
    const help = runKms(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^usage: kms <command>/);
    const bare = runKms([]);
    assert.equal(bare.code, 2);
    assert.equal(bare.stdout, '');
    assert.match(bare.stderr, /^usage: kms <command>/);
  });

  test('kms version and kms --version', () => {
    const pkg = JSON.parse(readFileSync(new URL('../packages/server/package.json', import.meta.url), 'utf8')) as { version: string };
    for (const args of [['version'], ['--version']]) {
      const r = runKms(args);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `kms ${pkg.version}\n`);
    }
  });
});

describe('numbers out of range name the flag and its range', () => {
  // parseArgs reads `--ttl -5` as an ambiguous option; both spellings must reach the range check.
  const cases: { args: string[]; message: RegExp }[] = [
    { args: ['token', '--user', 'alice@a.example', '--ttl', '-5'], message: /--ttl must be a whole number of seconds, from 1 to 2592000, got -5$/ },
    { args: ['token', '--user', 'alice@a.example', '--ttl=-5'], message: /--ttl must be a whole number of seconds, from 1 to 2592000, got -5$/ },
    { args: ['token', '--user', 'alice@a.example', '--ttl', '0'], message: /--ttl .* from 1 to 2592000, got 0$/ },
    { args: ['token', '--user', 'alice@a.example', '--ttl', '2592001'], message: /--ttl .* from 1 to 2592000, got 2592001$/ },
    { args: ['token', '--user', 'alice@a.example', '--ttl', '1.5'], message: /--ttl .* got 1\.5$/ },
    { args: ['token', '--user', 'alice@a.example', '--ttl', 'soon'], message: /--ttl .* got soon$/ },
    { args: ['serve', '--port', '-1'], message: /--port must be a whole number, from 0 to 65535, got -1$/ },
    { args: ['serve', '--port=70000'], message: /--port .* from 0 to 65535, got 70000$/ },
    { args: ['serve', '--federation-max-staleness', '-30'], message: /--federation-max-staleness must be a whole number of seconds, at least 1, got -30$/ },
    { args: ['client', 'keys', 'create', '--count', '-2', '--token', 't'], message: /--count must be a whole number, from 1 to 100, got -2$/ },
    { args: ['client', 'resource', 'create', '--ttl', '-1', '--token', 't'], message: /--ttl must be a whole number of seconds, at least 0, got -1$/ },
  ];
  for (const { args, message } of cases) {
    test(`kms ${args.join(' ')}`, () => {
      const r = runKms([...args, '--config', config]);
      assert.equal(r.code, 2);
      oneClearLine(r.stderr);
      assert.match(r.stderr.trim(), message);
      assert.equal(r.stdout, '');
    });
  }

  test('a value flag followed by another flag, or by nothing, lacks its value', () => {
    const before = runKms(['token', '--config', config, '--ttl', '--user', 'alice@a.example']);
    assert.equal(before.code, 2);
    oneClearLine(before.stderr);
    assert.match(before.stderr, /--ttl needs a value before --user/);
    const last = runKms(['token', '--config', config, '--user', 'alice@a.example', '--ttl']);
    assert.equal(last.code, 2);
    assert.match(last.stderr, /--ttl needs a value$/m);
  });

  test('a value that starts with a dash is written with =: --roles -x is refused, --roles=-x is taken', () => {
    const refused = runKms(['token', '--config', config, '--user', 'alice@a.example', '--roles', '-x']);
    assert.equal(refused.code, 2);
    oneClearLine(refused.stderr);
    assert.match(refused.stderr, /--roles needs a value before -x \(write --roles=-x if that is the value\)/);
    const ok = runKms(['token', '--config', config, '--user', 'alice@a.example', '--roles=-x']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(JSON.parse(Buffer.from(ok.stdout.split('.')[1]!, 'base64url').toString()).roles, ['-x']);
  });
});

describe('an unknown key in kms.json is refused by every command that reads it', () => {
  test('serve, token, audit verify, peer list, peer add, client --config: one line naming the key', () => {
    const typo = mkdtempSync(join(tmpdir(), 'kms-cli-typo-'));
    try {
      cpSync(dir, typo, { recursive: true });
      const cfg = join(typo, 'kms.json');
      const written = JSON.parse(readFileSync(cfg, 'utf8'));
      writeFileSync(cfg, JSON.stringify({ ...written, limits: { maxAuthorisations: 5 } }, null, 2));
      const text = readFileSync(cfg, 'utf8');
      for (const args of [
        ['serve', '--config', cfg, '--port', '0'],
        ['token', '--config', cfg, '--user', 'alice@a.example'],
        ['audit', 'verify', '--config', cfg],
        ['peer', 'list', '--config', cfg],
        ['peer', 'add', '--config', cfg, '--authority', 'kms.b.example', '--domain', 'b.example', '--endpoint', 'https://kms.b.example', '--ca', join(typo, 'ca.pem')],
        ['client', 'keys', 'create', '--config', cfg, '--token', 't'],
      ]) {
        const r = runKms(args);
        assert.notEqual(r.code, 0, `kms ${args.join(' ')}`);
        oneClearLine(r.stderr);
        assert.match(r.stderr, /kms\.json: unknown key limits\.maxAuthorisations \(limits takes maxAuthorizationsPerResource, requestsPerMinutePerPrincipal, handshakesPerMinutePerAddress\)$/m, `kms ${args.join(' ')}`);
      }
      assert.equal(readFileSync(cfg, 'utf8'), text, 'kms peer add left the file as it was');
    } finally {
      rmSync(typo, { recursive: true, force: true });
    }
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

  test('a database that does not exist is refused, and not created', () => {
    const absent = join(dir, 'no-such.db');
    const r = runKms(['audit', 'verify', '--config', config, '--db', `sqlite:${absent}`]);
    assert.equal(r.code, 1);
    oneClearLine(r.stderr);
    assert.match(r.stderr, /no database at .*no-such\.db: nothing to verify/);
    assert.equal(r.stdout, '');
    assert.ok(!existsSync(absent), 'verification did not create the database');
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
