/**
 * SIGHUP to `kms serve` re-reads kms.json and never stops the server: the log level and the peers
 * take effect at once (a peer added to the file is federated with; the request log goes quiet at
 * `warn`), the TLS certificate is replaced for new connections, and an invalid file (malformed, or
 * a peer claiming one of this KMS's domains) is refused with a warning while the server goes on
 * with the settings it had. The server exits 0 on SIGTERM afterwards: it was never killed.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { nodeKmsSession } from '../support/node-kms.js';
import { runKms, serve, servedCertificate, type Served } from '../support/cli.js';

const TEST = { timeout: 60_000 };
let dir: string;
let config: string;
let original: string;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kms-life-hup-'));
  config = join(dir, 'kms.json');
  assert.equal(runKms(['init', '--dir', dir, '--authority', 'kms.a.example', '--domain', 'a.example']).code, 0);
  assert.equal(runKms(['init', '--dir', join(dir, 'b'), '--authority', 'kms.b.example', '--domain', 'b.example']).code, 0);
  original = readFileSync(config, 'utf8');
});
after(() => rmSync(dir, { recursive: true, force: true }));

const edit = (change: (c: Record<string, unknown>) => Record<string, unknown>) => writeFileSync(config, JSON.stringify(change(JSON.parse(readFileSync(config, 'utf8'))), null, 2));

/** Resolves with the `count`th log line matching `pattern`, once there is one. */
async function logged(server: Served, pattern: RegExp, count = 1): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const lines = server.stdout.join('').split('\n').filter((l) => pattern.test(l));
    if (lines.length >= count) return lines[count - 1]!;
    await new Promise((r) => setTimeout(r, 50));
  }
  return assert.fail(`no log line ${pattern} (×${count}) in:\n${server.stdout.join('')}`);
}

const count = (server: Served, pattern: RegExp) => server.stdout.join('').split('\n').filter((l) => pattern.test(l)).length;
const REQUEST = /"msg":"request"/;
const REFUSED = /SIGHUP: kms\.json refused, keeping the running settings/;
const RELOADED = /SIGHUP: reloaded kms\.json/;

describe('SIGHUP', () => {
  test('reloads peers and log level; an invalid kms.json is refused and the old settings stay', TEST, async () => {
    writeFileSync(config, original);
    const server = await serve(['--config', config, '--port', '0']);
    try {
      const token = runKms(['token', '--config', config, '--user', 'alice@a.example']).stdout.trim();
      const alice = await nodeKmsSession(server.url, token, 'hup');
      const federated = { method: 'retrieve', uri: 'kms://kms.b.example/keys/00000000-0000-4000-8000-000000000000' };
      assert.equal((await alice.call(federated)).status, 404, 'kms.b.example is no peer yet');

      // A malformed file: refused; the server serves on at the level it had (info: request lines).
      writeFileSync(config, '{"authority": ');
      server.signal('SIGHUP');
      assert.match(await logged(server, REFUSED), /"level":40.*"problem":".*kms\.json/);
      let requests = count(server, REQUEST);
      assert.equal((await alice.call({ method: 'update', uri: '/ping' })).status, 200);
      await logged(server, REQUEST, requests + 1);

      // A peer that claims this KMS's own domain, and a quieter level: refused as a whole.
      writeFileSync(config, original);
      const ca = readFileSync(join(dir, 'b', 'ca.pem'), 'utf8');
      edit((c) => ({ ...c, log: { level: 'warn' }, peers: [{ authority: 'kms.b.example', domains: ['a.example'], endpoint: 'http://127.0.0.1:1', trustAnchors: [ca] }] }));
      server.signal('SIGHUP');
      assert.match(await logged(server, REFUSED, 2), /domain a\.example is one of this KMS's own domains/);
      requests = count(server, REQUEST);
      assert.equal((await alice.call(federated)).status, 404, 'the refused peer was not taken');
      await logged(server, REQUEST, requests + 1);

      // Valid: the peer (added as an operator would) and log level warn take effect at once.
      writeFileSync(config, original);
      const added = runKms(['peer', 'add', '--config', config, '--authority', 'kms.b.example', '--domain', 'b.example', '--endpoint', 'http://127.0.0.1:1', '--ca', join(dir, 'b', 'ca.pem')]);
      assert.equal(added.code, 0, added.stderr);
      edit((c) => ({ ...c, log: { level: 'warn' } }));
      server.signal('SIGHUP');
      const line = JSON.parse(await logged(server, RELOADED)) as { applied: string[]; peers: string[]; logLevel: string; atNextStart: string[] };
      assert.deepEqual(line.peers, ['kms.b.example']);
      assert.equal(line.logLevel, 'warn');
      assert.deepEqual(line.atNextStart, []);
      requests = count(server, REQUEST);
      const answer = await alice.call(federated);
      assert.equal(answer.status, 502, `kms.b.example is a peer now (and unreachable): ${JSON.stringify(answer)}`);
      assert.equal(count(server, REQUEST), requests, 'at warn, no request lines');

      // A setting that needs a restart is named, and the rest is still taken.
      edit((c) => ({ ...c, log: { level: 'info' }, listen: { host: '127.0.0.1', port: 1 } }));
      server.signal('SIGHUP');
      assert.match(await logged(server, /these settings changed in kms\.json and take effect at the next start/), /"settings":\["listen"\]/);
      requests = count(server, REQUEST);
      assert.equal((await alice.call({ method: 'update', uri: '/ping' })).status, 200);
      await logged(server, REQUEST, requests + 1);
    } finally {
      assert.equal(await server.stop(), 0, 'the server was never killed and stops cleanly');
    }
  });

  test('replaces the TLS certificate for new connections; a key that does not match is refused', TEST, async () => {
    const pair = (name: string) => {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '2', '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.crt`)], { stdio: 'ignore' });
    };
    pair('one');
    pair('two');
    const use = (cert: string, key: string) => {
      writeFileSync(join(dir, 'tls.crt'), readFileSync(join(dir, cert)));
      writeFileSync(join(dir, 'tls.key'), readFileSync(join(dir, key)));
    };
    use('one.crt', 'one.key');
    writeFileSync(config, original);
    edit((c) => ({ ...c, tls: { cert: 'tls.crt', key: 'tls.key' } }));
    // The certificates are self-signed: only read here.
    const served = servedCertificate;
    const fingerprint = (file: string) => new X509Certificate(readFileSync(join(dir, file))).fingerprint256;
    const server = await serve(['--config', config, '--port', '0']);
    try {
      assert.match(server.url, /^https:/);
      assert.equal(await served(server.url), fingerprint('one.crt'));
      use('two.crt', 'two.key');
      server.signal('SIGHUP');
      assert.deepEqual((JSON.parse(await logged(server, RELOADED)) as { applied: string[] }).applied, ['peers', 'tls', 'log.level']);
      assert.equal(await served(server.url), fingerprint('two.crt'));
      use('one.crt', 'two.key');
      server.signal('SIGHUP');
      await logged(server, REFUSED);
      assert.equal(await served(server.url), fingerprint('two.crt'), 'the running certificate stays');
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });
});
