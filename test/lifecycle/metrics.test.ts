/**
 * What `kms serve` exposes at /metrics for an operator (docs/metrics.md): every metric listed
 * there, after a run that handled users, keys, resources and a peer that is down; no label value
 * names a user, a key, a resource or any URI; and the certificate gauges — the static
 * certificate, and the TLS certificate, which follows a SIGHUP that replaces it.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { nodeKmsSession } from '../support/node-kms.js';
import { runKms, serve, type Served } from '../support/cli.js';

const TEST = { timeout: 60_000 };
/** Every metric docs/metrics.md lists, as /metrics must name it (HELP line). */
const DOCUMENTED = [
  'kms_build_info',
  'kms_requests_total',
  'kms_request_duration_seconds',
  'kms_channels_open',
  'kms_storage_call_duration_seconds',
  'kms_storage_errors_total',
  'kms_audit_write_failures_total',
  'kms_federation_calls_total',
  'kms_federation_call_duration_seconds',
  'kms_identity_provider_failures_total',
  'kms_sweeper_runs_total',
  'kms_sweeper_destroyed_total',
  'kms_sweeper_last_success_timestamp_seconds',
  'kms_certificate_expires_in_seconds',
  'process_start_time_seconds',
];

let dir: string;
let config: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kms-life-metrics-'));
  config = join(dir, 'kms.json');
  assert.equal(runKms(['init', '--dir', dir, '--authority', 'kms.a.example', '--domain', 'a.example']).code, 0);
});
after(() => rmSync(dir, { recursive: true, force: true }));

const edit = (change: (c: Record<string, unknown>) => Record<string, unknown>) => writeFileSync(config, JSON.stringify(change(JSON.parse(readFileSync(config, 'utf8'))), null, 2));

/** Every label value in Prometheus text. */
function labelValues(text: string): string[] {
  return text
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .flatMap((l) => [...l.matchAll(/[a-zA-Z_][a-zA-Z0-9_]*="((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]!));
}

function gauge(text: string, certificate: string): number | undefined {
  const m = new RegExp(`^kms_certificate_expires_in_seconds\\{certificate="${certificate}"\\} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

const notAfter = (file: string) => Date.parse(new X509Certificate(readFileSync(join(dir, file))).validTo);

describe('kms serve /metrics', () => {
  test('names every documented metric; no label carries a user, a key, a resource or a URI', TEST, async () => {
    const withPeer = JSON.parse(readFileSync(config, 'utf8')) as Record<string, unknown>;
    writeFileSync(
      join(dir, 'peered.json'),
      JSON.stringify({ ...withPeer, peers: [{ authority: 'kms.b.example', domains: ['b.example'], endpoint: 'http://127.0.0.1:9', trustAnchors: [readFileSync(join(dir, 'ca.pem'), 'utf8')] }] }),
    );
    const server: Served = await serve(['--config', join(dir, 'peered.json'), '--port', '0']);
    try {
      const token = runKms(['token', '--config', config, '--user', 'alice@a.example']).stdout.trim();
      const alice = await nodeKmsSession(server.url, token, 'metrics-test');
      const created = await alice.call({ method: 'create', uri: '/keys', count: 2 });
      const keys = (created.keys as { uri: string }[]).map((k) => k.uri);
      const made = await alice.call({ method: 'create', uri: '/resources', authIds: ['bob@a.example'], keyUris: keys });
      assert.equal(made.status, 201);
      const resource = (made.resource as { uri: string }).uri;
      assert.equal((await alice.call({ method: 'retrieve', uri: keys[0]!.replace('kms.a.example', 'kms.b.example') })).status, 502, 'the peer is down');
      assert.equal(Number((await alice.call({ method: 'retrieve', uri: `${resource}/nothing` })).status) >= 400, true);

      const res = await fetch(`${server.url}/metrics`);
      assert.equal(res.status, 200);
      const text = await res.text();
      for (const name of DOCUMENTED) assert.match(text, new RegExp(`^# HELP ${name} `, 'm'), `${name} is exposed`);
      assert.match(text, /^kms_federation_calls_total\{peer="kms\.b\.example",outcome="unreachable"\} 1$/m);
      assert.match(text, /^kms_storage_call_duration_seconds_count\{method="insertKeys"\} [1-9]/m);
      assert.match(text, /^kms_requests_total\{op="createKeys",status="201"\} 1$/m);
      const static_ = gauge(text, 'static')!;
      const expected = (notAfter('static-cert.pem') - Date.now()) / 1000;
      assert.ok(Math.abs(static_ - expected) < 60, `static certificate: ${static_} s left, expected about ${expected}`);

      const values = labelValues(text);
      assert.ok(values.length > 50, 'labels were read');
      const named = ['alice@a.example', 'bob@a.example', resource, ...keys, alice.channelUri];
      for (const value of values) {
        assert.ok(!/@|:\/\/|\/|[0-9a-f]{8}-[0-9a-f]{4}-/i.test(value), `a label value that names someone or something: ${value}`);
        for (const n of named) assert.ok(!value.includes(n), `label value ${value} names ${n}`);
      }
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });

  test('the TLS certificate gauge follows a SIGHUP that replaces the certificate', TEST, async () => {
    const pair = (name: string, days: number) =>
      execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', String(days), '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.crt`)], { stdio: 'ignore' });
    pair('short', 2);
    pair('long', 30);
    const use = (name: string) => {
      writeFileSync(join(dir, 'tls.crt'), readFileSync(join(dir, `${name}.crt`)));
      writeFileSync(join(dir, 'tls.key'), readFileSync(join(dir, `${name}.key`)));
    };
    use('short');
    edit((c) => ({ ...c, tls: { cert: 'tls.crt', key: 'tls.key' } }));
    // The certificates are self-signed: read here only, not trusted.
    const scrape = (url: string) =>
      new Promise<string>((resolve, reject) => {
        const req = request(`${url}/metrics`, { rejectUnauthorized: false, agent: false }, (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (d: string) => (body += d));
          res.on('end', () => resolve(body));
        });
        req.on('error', reject);
        req.end();
      });
    const server = await serve(['--config', config, '--port', '0']);
    try {
      let left = gauge(await scrape(server.url), 'tls')!;
      let expected = (notAfter('short.crt') - Date.now()) / 1000;
      assert.ok(Math.abs(left - expected) < 60, `TLS certificate: ${left} s left, expected about ${expected}`);
      use('long');
      server.signal('SIGHUP');
      expected = (notAfter('long.crt') - Date.now()) / 1000;
      for (let i = 0; i < 100 && Math.abs(left - expected) >= 60; i++) {
        await new Promise((r) => setTimeout(r, 50));
        left = gauge(await scrape(server.url), 'tls')!;
      }
      assert.ok(Math.abs(left - expected) < 60, `after SIGHUP: ${left} s left, expected about ${expected}`);
      assert.ok(gauge(await scrape(server.url), 'static')! > 0, 'the static certificate gauge is there too');
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });
});
