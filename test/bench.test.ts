/**
 * `npm run bench` works: the compiled benchmark runs in its quick mode and writes a report of the
 * expected shape. Only the shape is checked — every figure positive, every ratio present — never a
 * time or a throughput: this machine's speed is not a test outcome (ARCHITECTURE.md "Measure,
 * don't guess").
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const root = fileURLToPath(new URL('..', import.meta.url));
const script = join(root, 'dist-bench', 'bench.js');

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const positive = (value: unknown, what: string) => assert.ok(typeof value === 'number' && Number.isFinite(value) && value > 0, `${what} = ${String(value)}`);

test('npm run bench --quick reports ratios against the crypto limit (shape only)', { timeout: 300_000 }, async () => {
  assert.ok(existsSync(script), `${script} is missing: did tsc -b build bench/?`);
  const dir = mkdtempSync(join(tmpdir(), 'kms-bench-test-'));
  try {
    const out = join(dir, 'report.json');
    const { code, stdout, stderr } = await run(['--quick', '--json', '--out', out]);
    assert.equal(code, 0, `bench exited ${code}\n${stderr}`);
    // --json: the report is the only thing on stdout; the table went to stderr.
    const report = JSON.parse(stdout.trim()) as Record<string, any>;
    assert.deepEqual(JSON.parse(readFileSync(out, 'utf8')), report, 'the file holds the same report');
    assert.match(stderr, /crypto limit/);
    assert.match(stderr, /ratio/);

    assert.equal(report.schema, 'openkms-bench/1');
    assert.equal(report.quick, true);
    assert.equal(report.errors, 0);
    for (const name of ['common', 'handshake']) {
      positive(report.cryptoLimit?.[name]?.opsPerSec, `cryptoLimit.${name}.opsPerSec`);
      assert.ok(Array.isArray(report.cryptoLimit[name].runs) && report.cryptoLimit[name].runs.length > 0);
    }
    for (const name of ['retrieveRequest', 'retrieveAnswer', 'handshakeRequest', 'handshakeAnswer']) positive(report.payloadBytes?.[name], `payloadBytes.${name}`);

    const results = report.results as Record<string, any>[];
    const ids = results.map((r) => r.id as string);
    for (const id of ['core.retrieveKey', 'core.ping', 'core.handshake']) assert.ok(ids.includes(id), `${id} in ${ids.join(', ')}`);
    assert.ok(ids.some((id) => id.startsWith('http.retrieveKey.')), 'an HTTP measurement through the SDK');
    assert.ok(ids.some((id) => id.startsWith('http.raw.retrieveKey.')), 'an HTTP measurement of pre-sealed batches');
    assert.ok(ids.some((id) => id.startsWith('ws.retrieveKey.')), 'a WebSocket measurement');
    for (const r of results) {
      assert.ok(['common', 'handshake'].includes(r.limit), `${r.id}.limit`);
      assert.equal(r.limit, r.id === 'core.handshake' ? 'handshake' : 'common');
      positive(r.concurrency, `${r.id}.concurrency`);
      positive(r.opsPerSec, `${r.id}.opsPerSec`);
      positive(r.ratio, `${r.id}.ratio`);
      positive(r.ops, `${r.id}.ops`);
      assert.equal(r.errors, 0, `${r.id}: ${r.firstError}`);
      for (const p of ['p50', 'p95', 'p99']) positive(r.latencyMs?.[p], `${r.id}.latencyMs.${p}`);
      positive(r.eventLoop, `${r.id}.eventLoop`);
      positive(r.cpu, `${r.id}.cpu`);
      assert.ok(r.latencyMs.p50 <= r.latencyMs.p95 && r.latencyMs.p95 <= r.latencyMs.p99, `${r.id}: percentiles in order`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
