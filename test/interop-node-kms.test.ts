/**
 * Interop: the real node-kms@0.4.1 client, unchanged, against `kms serve` over HTTP — the ECDHE
 * handshake, then create keys -> create resource -> retrieve as another user, and a refusal.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { nodeKmsFlow } from './support/node-kms.js';
import { runKms, serve, type Served } from './support/cli.js';

let dir: string;
let server: Served;
const token = (user: string) => runKms(['token', '--config', join(dir, 'kms.json'), '--user', user]).stdout.trim();

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kms-interop-'));
  const init = runKms(['init', '--dir', dir, '--authority', 'kms.a.example', '--domain', 'a.example']);
  assert.equal(init.code, 0, init.stderr);
  server = await serve(['--config', join(dir, 'kms.json'), '--port', '0']);
});

after(async () => {
  assert.equal(await server.stop(), 0, 'graceful shutdown exits 0');
  rmSync(dir, { recursive: true, force: true });
});

test('node-kms: handshake, create keys, create resource, retrieve as another user', () => nodeKmsFlow(server.url, token));
