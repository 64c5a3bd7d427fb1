/**
 * The audit log proves itself complete: a serving KMS signs checkpoints of the chain's head into
 * audit.checkpoints (on its interval, and a last one when it stops), `kms audit verify` checks the
 * newest against the chain (removed newest records are named, a forged checkpoint is refused, a
 * database that is not there is refused and not created), and `kms audit export` writes the
 * records as JSON lines. On SQLite and on PostgreSQL.
 */
import assert from 'node:assert/strict';
import { appendFileSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { oneClearLine, runKms, serve } from '../support/cli.js';
import { nodeKmsSession } from '../support/node-kms.js';
import { onEachBackend, within } from '../support/nodes.js';

const seqOf = (jws: string) => (JSON.parse(Buffer.from(jws.split('.')[1]!, 'base64url').toString()) as { seq: number }).seq;

await onEachBackend('kms audit checkpoints and export', (backend) => {
  describe(`kms audit checkpoints and export on ${backend.name}`, () => {
    let dir: string;
    let config: string;
    let checkpoints: string;
    const lines = () => readFileSync(checkpoints, 'utf8').trim().split('\n');
    const verify = (...more: string[]) => runKms(['audit', 'verify', '--config', config, ...backend.dbArgs, ...more]);
    let records: number;

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'kms-audit-'));
      config = join(dir, 'kms.json');
      checkpoints = join(dir, 'audit.checkpoints');
      const init = runKms(['init', '--dir', dir, '--authority', 'kms.a.example', '--domain', 'a.example']);
      assert.equal(init.code, 0, init.stderr);
      const json = JSON.parse(readFileSync(config, 'utf8')) as Record<string, unknown>;
      writeFileSync(config, JSON.stringify({ ...json, audit: { checkpoints: { intervalSeconds: 1 } } }));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    test('a serving KMS writes checkpoints on its interval and a last one when it stops', async (t) => {
      const server = await serve(['--config', config, '--port', '0', ...backend.dbArgs]);
      try {
        const token = runKms(['token', '--config', config, '--user', 'alice@a.example']).stdout.trim();
        const alice = await nodeKmsSession(server.url, token, 'audit-test');
        for (let i = 0; i < 5; i++) await alice.call({ method: 'update', uri: '/ping' });
        // Two written while serving: the interval runs, not only the start or the stop.
        const ms = await within(30_000, 'two checkpoints while serving', async () => existsSync(checkpoints) && lines().length >= 2);
        t.diagnostic(`two checkpoints after ${Math.round(ms)} ms`);
        await within(10_000, 'a checkpoint in the log stream', async () => server.stdout.some((l) => l.includes('"msg":"audit checkpoint"')));
        const logged = server.stdout.find((l) => l.includes('"msg":"audit checkpoint"'))!;
        assert.match(logged, /"level":30/, 'at info');
        assert.match(logged, /"seq":\d+,"hash":"[0-9a-f]{64}"/);
      } finally {
        assert.equal(await server.stop(), 0);
      }
      assert.equal(statSync(checkpoints).mode & 0o777, 0o600);
      const r = verify();
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '');
      records = Number(/intact: (\d+) records/.exec(r.stdout)![1]);
      assert.ok(records >= 6, 'the handshake and the pings are recorded');
      assert.equal(seqOf(lines().at(-1)!), records, 'the last checkpoint, at stop, names the last record');
    });

    test('export writes every record as a JSON line in seq order, owner-only; --since leaves out the records up to it', () => {
      const out = join(dir, 'audit.jsonl');
      const all = runKms(['audit', 'export', '--config', config, ...backend.dbArgs, '--out', out]);
      assert.equal(all.code, 0, all.stderr);
      assert.equal(statSync(out).mode & 0o777, 0o600);
      const rows = readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.deepEqual(rows.map((r) => r.seq), Array.from({ length: records }, (_, i) => i + 1));
      assert.deepEqual(Object.keys(rows[0]!).sort(), ['clientId', 'hash', 'method', 'node', 'onBehalfOf', 'peer', 'prevHash', 'principal', 'requestId', 'seq', 'status', 'time', 'uri']);
      assert.ok(rows.some((r) => r.principal === 'alice@a.example' && r.uri === '/ping'));
      const since = runKms(['audit', 'export', '--config', config, ...backend.dbArgs, '--out', out, '--since', '3']);
      assert.equal(since.code, 0, since.stderr);
      const later = readFileSync(out, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { seq: number }).seq);
      assert.deepEqual(later, Array.from({ length: records - 3 }, (_, i) => i + 4), 'replaced whole, after record 3');
      const bad = runKms(['audit', 'export', '--config', config, ...backend.dbArgs, '--out', out, '--since=three']);
      assert.notEqual(bad.code, 0);
      oneClearLine(bad.stderr);
      const noOut = runKms(['audit', 'export', '--config', config, ...backend.dbArgs]);
      assert.notEqual(noOut.code, 0);
      oneClearLine(noOut.stderr);
    });

    test('a forged checkpoint is refused', () => {
      const forged = join(dir, 'forged.checkpoints');
      copyFileSync(checkpoints, forged);
      const [h, , s] = lines().at(-1)!.split('.');
      const payload = Buffer.from(JSON.stringify({ seq: records, hash: '0'.repeat(64), time: Date.now() })).toString('base64url');
      appendFileSync(forged, `${h}.${payload}.${s}\n`);
      const r = verify('--checkpoints', forged);
      assert.equal(r.code, 1);
      oneClearLine(r.stderr);
      assert.match(r.stderr, /newest checkpoint in .*forged\.checkpoints is refused: its signature does not verify/);
    });

    test('an absent checkpoint file is a warning, unless --checkpoints names it', () => {
      const r = verify('--checkpoints', join(dir, 'none'));
      assert.equal(r.code, 1);
      oneClearLine(r.stderr);
      const moved = join(dir, 'moved.checkpoints');
      copyFileSync(checkpoints, moved);
      rmSync(checkpoints);
      try {
        const w = verify();
        assert.equal(w.code, 0, w.stderr);
        assert.match(w.stderr, /^kms: warning: no audit checkpoint in .*audit\.checkpoints/);
      } finally {
        copyFileSync(moved, checkpoints);
      }
    });

    test('a database that does not exist is refused, and nothing is created', async () => {
      if (backend.name === 'SQLite') {
        const absent = join(dir, 'no-such.db');
        for (const sub of [['verify'], ['export', '--out', join(dir, 'x.jsonl')]]) {
          const r = runKms(['audit', ...sub, '--config', config, '--db', `sqlite:${absent}`]);
          assert.equal(r.code, 1);
          oneClearLine(r.stderr);
          assert.match(r.stderr, /no database at .*no-such\.db: nothing to/);
          assert.ok(!existsSync(absent));
          assert.ok(!existsSync(join(dir, 'x.jsonl')));
        }
      } else {
        const url = new URL(backend.dbArgs[1]!);
        url.pathname = '/kms_no_such_database';
        const r = runKms(['audit', 'verify', '--config', config, '--db', url.href]);
        assert.equal(r.code, 1);
        oneClearLine(r.stderr);
        const schema = `kms_absent_${Date.now()}`;
        const absent = new URL(backend.dbArgs[1]!);
        absent.searchParams.set('schema', schema);
        for (const sub of [['verify'], ['export', '--out', join(dir, 'x.jsonl')]]) {
          const s = runKms(['audit', ...sub, '--config', config, '--db', absent.href]);
          assert.equal(s.code, 1);
          oneClearLine(s.stderr);
          assert.match(s.stderr, new RegExp(`no KMS database at .* in schema ${schema}: nothing to`));
        }
        const made = await backend.sql(dir, 'SELECT 1 FROM information_schema.schemata WHERE schema_name = $1', [schema]);
        assert.deepEqual(made, [], 'the schema was not created');
        assert.ok(!existsSync(join(dir, 'x.jsonl')));
      }
    });

    test('the newest records removed, head moved back too: verify names the truncation at the checkpoint', async () => {
      const keep = records - 2;
      await backend.sql(dir, 'DELETE FROM audit WHERE seq > $1', [keep]);
      // An intruder who also moves the head leaves a chain that verifies on its own.
      await backend.sql(dir, 'UPDATE audit_head SET seq = $1, hash = (SELECT hash FROM audit WHERE seq = $2)', [keep, keep]);
      const r = verify();
      assert.equal(r.code, 1);
      oneClearLine(r.stderr);
      assert.match(r.stderr, new RegExp(`audit log truncated: the checkpoint of record ${records} \\(.*\\) in .*audit\\.checkpoints proves records ${keep + 1} to ${records} existed; the log ends at record ${keep}`));
    });
  });
});
