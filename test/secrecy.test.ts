/**
 * Secrecy: after a run that handled keys, bearer tokens, anonymous bearers and channel keys, none
 * of them, nor the root key, appears in the server's logs (at debug level), in the audit log, or
 * anywhere in the raw SQLite files (database and WAL): key material and channel keys are only ever
 * stored sealed, bearers and the root key not at all. The metrics name none of them, nor any user, key or resource.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { nodeKmsSession } from './support/node-kms.js';
import { runKms, serve } from './support/cli.js';

/** The forms a secret could leak in: as sent, raw bytes as base64/hex, JWT signature alone. */
function forms(secret: string): string[] {
  const out = [secret];
  if (/^[A-Za-z0-9_-]+$/.test(secret)) {
    const bytes = Buffer.from(secret, 'base64url');
    out.push(bytes.toString('base64'), bytes.toString('hex'));
  }
  const parts = secret.split('.');
  if (parts.length === 3) out.push(parts[2]!);
  return out.filter((s) => s.length >= 16);
}

test('no key value, bearer or channel key in logs, audit log or raw database', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kms-secrecy-'));
  try {
    assert.equal(runKms(['init', '--dir', dir, '--authority', 'kms.a.example', '--domain', 'a.example']).code, 0);
    const config = join(dir, 'kms.json');
    const server = await serve(['--config', config, '--port', '0', '--log-level', 'debug']);
    const tokens = ['alice', 'bob'].map((u) => runKms(['token', '--config', config, '--user', `${u}@a.example`]).stdout.trim());
    const secrets: string[] = [...tokens];
    let metrics = '';
    const named: string[] = [];
    const keyBytes: Buffer[] = [];
    // The root key seals the CMKs: it is read from its file, never written anywhere else.
    const rootKey = readFileSync(join(dir, 'root.key'), 'utf8').trim();
    secrets.push(rootKey);
    keyBytes.push(Buffer.from(rootKey, 'base64'));
    try {
      const alice = await nodeKmsSession(server.url, tokens[0]!, 'alice-web');
      secrets.push(...alice.secrets);
      const created = await alice.call({ method: 'create', uri: '/keys', count: 3 });
      const keys = created.keys as { uri: string; jwk: { k: string } }[];
      for (const k of keys) {
        secrets.push(k.jwk.k);
        keyBytes.push(Buffer.from(k.jwk.k, 'base64url'));
      }
      const made = await alice.call({ method: 'create', uri: '/resources', authIds: ['bob@a.example'], keyUris: keys.slice(0, 2).map((k) => k.uri), anonymous: 1 });
      assert.equal(made.status, 201);
      const anonymous = (made.authorizations as { bearer?: string; uri: string }[]).find((a) => a.bearer)!;
      secrets.push(anonymous.bearer!);

      const bob = await nodeKmsSession(server.url, tokens[1]!, 'bob-web');
      secrets.push(...bob.secrets);
      assert.equal((await bob.call({ method: 'retrieve', uri: keys[0]!.uri })).status, 200);
      const guest = await nodeKmsSession(server.url, anonymous.bearer!, 'guest');
      secrets.push(...guest.secrets);
      assert.equal((await guest.call({ method: 'retrieve', uri: `${(made.resource as { uri: string }).uri}/keys` })).status, 200);
      // Failures are logged and audited too: a forbidden request and a revoked bearer.
      assert.equal((await guest.call({ method: 'create', uri: '/keys', count: 1 })).status, 403);
      assert.equal((await alice.call({ method: 'delete', uri: anonymous.uri })).status, 200);
      assert.equal((await guest.call({ method: 'update', uri: '/ping' })).status, 401);
      // The metrics count by bounded labels: no secret, and no user, key or resource either.
      metrics = await (await fetch(`${server.url}/metrics`)).text();
      named.push('alice@a.example', 'bob@a.example', (made.resource as { uri: string }).uri, anonymous.uri, ...keys.map((k) => k.uri));
    } finally {
      assert.equal(await server.stop(), 0);
    }

    const logs = server.stdout.join('') + server.stderr.join('');
    assert.match(logs, /"msg":"request"/, 'debug logging was on');
    const db = new Database(join(dir, 'kms.db'), { readonly: true });
    const audit = JSON.stringify(db.prepare('SELECT * FROM audit').all());
    db.close();
    assert.ok(audit.includes('alice@a.example'), 'the audit log names principals');
    const raw = Buffer.concat(['kms.db', 'kms.db-wal'].map((f) => join(dir, f)).filter(existsSync).map((f) => readFileSync(f)));
    const rawText = raw.toString('latin1');

    assert.match(metrics, /^kms_requests_total\{/m, 'the metrics were read');
    for (const name of named) assert.ok(!metrics.includes(name), 'a user, key or resource named in the metrics');
    for (const secret of secrets) {
      for (const form of forms(secret)) {
        assert.ok(!metrics.includes(form), `a secret leaked into the metrics`);
        assert.ok(!logs.includes(form), `a secret leaked into the logs`);
        assert.ok(!audit.includes(form), `a secret leaked into the audit log`);
        assert.ok(!rawText.includes(form), 'a key value, bearer or channel key found in the database files');
      }
    }
    for (const bytes of keyBytes) {
      assert.equal(raw.indexOf(bytes), -1, 'raw key bytes found in the database files');
      for (const form of forms(bytes.toString('base64url'))) assert.ok(!rawText.includes(form), 'an encoded key value found in the database files');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
