/**
 * `npm run bench` works: the compiled benchmark runs in its quick mode against real `kms serve`
 * processes and writes a report of the expected shape (the issue's JSON contract), a table and a
 * chart. Only the shape is checked — every figure present and positive, every ratio computed —
 * never a time or a throughput: this machine's speed is not a test outcome (ARCHITECTURE.md
 * "Measure, don't guess").
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

test('npm run bench --quick: kms serve measured per server CPU-second, as ratios to the limit (shape only)', { timeout: 300_000 }, async () => {
  assert.ok(existsSync(script), `${script} is missing: did tsc -b build bench/?`);
  const dir = mkdtempSync(join(tmpdir(), 'kms-bench-test-'));
  try {
    const out = join(dir, 'latest.json');
    const { code, stdout, stderr } = await run(['--quick', '--json', '--out', out]);
    assert.equal(code, 0, `bench exited ${code}\n${stderr}`);
    // --json: the report is the only thing on stdout; the table went to stderr.
    const report = JSON.parse(stdout.trim()) as Record<string, any>;
    assert.deepEqual(JSON.parse(readFileSync(out, 'utf8')), report, 'the file holds the same report');
    assert.match(stderr, /crypto limit/);
    assert.match(readFileSync(join(dir, 'latest.txt'), 'utf8'), /per srv CPU s/);
    assert.match(readFileSync(join(dir, 'latest.svg'), 'utf8'), /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);

    assert.equal(report.quick, true);
    assert.equal(report.errors, 0);
    positive(report.limit?.handshakesPerCore, 'limit.handshakesPerCore');
    positive(report.limit?.commonMessagesPerCore, 'limit.commonMessagesPerCore');

    const results = report.results as Record<string, any>[];
    const has = (what: string, pick: (r: Record<string, any>) => boolean) => assert.ok(results.some(pick), `${what} in ${results.map((r) => `${r.name}/${r.transport}/${r.concurrency}/${r.workers}`).join(', ')}`);
    for (const name of ['handshake', 'retrieve key', 'create keys count 1', 'create keys count 100', 'bind', 'retrieve resource keys count 10', 'federated retrieve key (warm)']) {
      has(`${name} over HTTP`, (r) => r.name === name && r.transport === 'http');
      has(`${name} over WebSocket`, (r) => r.name === name && r.transport === 'websocket');
    }
    for (const c of [1, 16, 64]) has(`retrieve key at concurrency ${c}`, (r) => r.name === 'retrieve key' && r.concurrency === c);
    has('handshakes on --workers 2', (r) => r.name === 'handshake' && r.workers === 2);
    for (const transport of ['http', 'websocket']) has(`the SDK over ${transport}, with its client CPU`, (r) => r.name === 'SDK retrieveKey' && r.transport === transport && r.clientCpuMsPerOp > 0);
    for (const r of results) {
      const id = `${r.name}/${r.backend}/${r.transport}/c${r.concurrency}/w${r.workers}`;
      assert.equal(typeof r.name, 'string');
      assert.ok(['sqlite', 'postgres'].includes(r.backend), `${id}: backend`);
      assert.ok(['http', 'websocket'].includes(r.transport), `${id}: transport`);
      for (const k of ['concurrency', 'workers', 'opsPerSec', 'opsPerServerCpuSec', 'p50Ms', 'p99Ms', 'ratioToLimit']) positive(r[k], `${id}.${k}`);
      assert.equal(r.errors, 0, `${id}: ${r.firstError}`);
      assert.ok(r.p50Ms <= r.p99Ms, `${id}: percentiles in order`);
      if (r.workers === 1) assert.ok(r.serverP50Ms <= r.serverP99Ms, `${id}: server percentiles in order`);
    }
    // Cost growth: retrieve key at each number of keys stored, and RSS with the channels open.
    assert.ok(Array.isArray(report.growth) && report.growth.length >= 2, 'growth points');
    for (const g of report.growth) positive(g.opsPerServerCpuSec, `growth ${g.keys}`);
    positive(report.channels?.channels, 'channels.channels');
    positive(report.channels?.rssBytes, 'channels.rssBytes');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
