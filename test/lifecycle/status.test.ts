/**
 * What an operator reads off a running KMS: `kms_build_info` and the start time in
 * /metrics, the request log at info (operation, status, principal, peer, latency; no credential),
 * and `kms status` both ways — healthy (exit 0, text and --json) and needing attention (storage
 * missing or unreachable, a peer that does not answer, a certificate about to expire: exit 1 with
 * the reason).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../../packages/server/dist/src/config.js';
import { CERTIFICATE_WARNING_DAYS, kmsStatus } from '../../packages/server/dist/src/cli/status.js';
import { nodeKmsSession } from '../support/node-kms.js';
import { runKms, serve, type Served } from '../support/cli.js';

const TEST = { timeout: 60_000 };
const VERSION = (JSON.parse(readFileSync(new URL('../../packages/server/package.json', import.meta.url), 'utf8')) as { version: string }).version;

let dir: string;
let config: string;
let a: Served;
let b: Served;
let token: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kms-life-status-'));
  config = join(dir, 'a', 'kms.json');
  assert.equal(runKms(['init', '--dir', join(dir, 'a'), '--authority', 'kms.a.example', '--domain', 'a.example']).code, 0);
  assert.equal(runKms(['init', '--dir', join(dir, 'b'), '--authority', 'kms.b.example', '--domain', 'b.example']).code, 0);
  b = await serve(['--config', join(dir, 'b', 'kms.json'), '--port', '0']);
  const added = runKms(['peer', 'add', '--config', config, '--authority', 'kms.b.example', '--domain', 'b.example', '--endpoint', b.url, '--ca', join(dir, 'b', 'ca.pem')]);
  assert.equal(added.code, 0, added.stderr);
  a = await serve(['--config', config, '--port', '0']);
  token = runKms(['token', '--config', config, '--user', 'alice@a.example']).stdout.trim();
});
after(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  rmSync(dir, { recursive: true, force: true });
});

describe('what runs', () => {
  test('/metrics has kms_build_info (version, node) = 1 and the process start time', TEST, async () => {
    const text = await (await fetch(`${a.url}/metrics`)).text();
    assert.match(text, new RegExp(`^kms_build_info\\{version="${VERSION.replaceAll('.', '\\.')}",node="${process.versions.node.replaceAll('.', '\\.')}"\\} 1$`, 'm'));
    const started = Number(/^process_start_time_seconds (\d+(\.\d+)?)$/m.exec(text)?.[1]);
    assert.ok(started > 0 && started <= Date.now() / 1000, `process_start_time_seconds ${started}`);
    assert.match(text, /^kms_leader 1$/m, 'the only node on its database leads');
  });
});

describe('the request log', () => {
  test('at info: op, status, principal, peer and latency; never the bearer', TEST, async () => {
    const alice = await nodeKmsSession(a.url, token, 'status-test');
    await alice.call({ method: 'create', uri: '/keys', count: 1 });
    let line: Record<string, unknown> | undefined;
    for (let i = 0; i < 100 && !line; i++) {
      line = a.stdout
        .join('')
        .split('\n')
        .filter((l) => l.includes('"msg":"request"'))
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .find((l) => l.op === 'createKeys');
      if (!line) await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(line, `a request line for createKeys in:\n${a.stdout.join('')}`);
    assert.equal(line.level, 30, 'info');
    assert.equal(line.status, 201);
    assert.equal(line.principal, 'alice@a.example');
    assert.equal(line.peer, null);
    assert.equal(typeof line.latencyMs, 'number');
    assert.ok(!a.stdout.join('').includes(token.split('.')[2]!), 'no bearer in the log');
  });
});

describe('kms status', () => {
  test('healthy: exit 0, every check reported, --json for scripts', TEST, () => {
    const r = runKms(['status', '--config', config]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(r.stderr, '');
    assert.match(r.stdout, new RegExp(`^kms ${VERSION.replaceAll('.', '\\.')} \\(kms\\.a\\.example\\)$`, 'm'));
    assert.match(r.stdout, /^storage: sqlite:kms\.db: reachable$/m);
    assert.match(r.stdout, /^audit head: seq [1-9]\d* at \d{4}-/m);
    assert.match(r.stdout, /^static certificate: valid until .*, \d+ days left$/m);
    assert.match(r.stdout, /^ {2}kms\.b\.example http:\/\/127\.0\.0\.1:\d+: reachable$/m);
    assert.match(r.stdout, /^nodes: 1 seen in the last 15 s$/m);
    assert.match(r.stdout, /^ {2}\S+\/\d+\/\S+ \(leads\): kms \S+, pid \d+ on \S+, up since \d{4}-.*, seen \d+ s ago$/m);
    assert.match(r.stdout, /^invalidation pushes waiting: \d+$/m);
    assert.match(r.stdout, /^status: ok$/m);

    const json = runKms(['status', '--config', config, '--json']);
    assert.equal(json.code, 0, json.stderr);
    const s = JSON.parse(json.stdout);
    assert.equal(s.version, VERSION);
    assert.equal(s.storage.ok, true);
    assert.ok(s.audit.seq > 0);
    assert.ok(s.certificate.daysLeft > CERTIFICATE_WARNING_DAYS);
    assert.deepEqual(s.peers.map((p: { authority: string; ok: boolean }) => [p.authority, p.ok]), [['kms.b.example', true]]);
    assert.deepEqual(s.attention, []);
    assert.equal(s.nodes.length, 1);
    assert.equal(s.nodes[0].version, VERSION);
    assert.equal(s.nodes[0].leading, true);
    assert.equal(s.leader, s.nodes[0].id);
    assert.equal(typeof s.pushOutbox, 'number');
  });

  test('two nodes on the database: both seen, exactly one leads; a node that stops is no longer listed', TEST, async () => {
    const second = await serve(['--config', config, '--port', '0']);
    let stopped = false;
    try {
      const first = JSON.parse(runKms(['status', '--config', config, '--json']).stdout);
      assert.equal(first.nodes.length, 2, JSON.stringify(first.nodes));
      assert.equal(first.nodes.filter((n: { leading: boolean }) => n.leading).length, 1, 'exactly one leads');
      assert.equal(new Set(first.nodes.map((n: { pid: number }) => n.pid)).size, 2, 'two processes');
      assert.equal(await second.stop(), 0);
      stopped = true;
      const after = JSON.parse(runKms(['status', '--config', config, '--json']).stdout);
      assert.deepEqual(after.nodes.map((n: { id: string }) => n.id), [first.leader], 'the one left, which led all along');
    } finally {
      if (!stopped) await second.stop();
    }
  });

  test('a database that is not there, or unreachable: exit 1 with the reason; nothing created', TEST, () => {
    const absent = join(dir, 'absent.db');
    const missing = runKms(['status', '--config', config, '--db', `sqlite:${absent}`]);
    assert.equal(missing.code, 1);
    assert.match(missing.stdout, /^storage: sqlite:.*absent\.db: NEEDS ATTENTION: no database at .*absent\.db$/m);
    assert.match(missing.stderr, /^kms: storage: no database at .*absent\.db$/m);
    assert.ok(!existsSync(absent), 'status created no database');

    const down = runKms(['status', '--config', config, '--json', '--db', 'postgres://kms:secret@127.0.0.1:1/kms']);
    assert.equal(down.code, 1);
    const s = JSON.parse(down.stdout);
    assert.equal(s.storage.ok, false);
    assert.deepEqual(s.attention, ['storage: cannot reach PostgreSQL at 127.0.0.1:1: ECONNREFUSED']);
    assert.doesNotMatch(down.stdout + down.stderr, /secret/);
  });

  test('a peer that does not answer: exit 1 naming it', TEST, async () => {
    await b.stop();
    const r = runKms(['status', '--config', config]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stdout, /^ {2}kms\.b\.example .*: NEEDS ATTENTION: unreachable: ECONNREFUSED$/m);
    assert.match(r.stderr, /^kms: peer kms\.b\.example: unreachable: ECONNREFUSED$/m);
    assert.match(r.stdout, /^status: 1 problem$/m);
  });

  test(`a static certificate with fewer than ${CERTIFICATE_WARNING_DAYS} days left needs attention`, TEST, async () => {
    const cfg = loadConfig(config);
    const soon = (await kmsStatus(cfg, 'sqlite:kms.db')).certificate;
    const notAfter = Date.parse(soon.notAfter!);
    const near = await kmsStatus({ ...cfg, peers: [] }, 'sqlite:kms.db', notAfter - 10 * 86_400_000);
    assert.equal(near.certificate.ok, false);
    assert.deepEqual(near.attention, ['static certificate: expires in 10 days (kms init --renew-certificates)']);
    const fine = await kmsStatus({ ...cfg, peers: [] }, 'sqlite:kms.db', notAfter - (CERTIFICATE_WARNING_DAYS + 1) * 86_400_000);
    assert.deepEqual(fine.attention, []);
    const gone = await kmsStatus({ ...cfg, peers: [] }, 'sqlite:kms.db', notAfter + 86_400_000);
    assert.match(gone.attention[0]!, /^static certificate: expired on /);
  });
});
