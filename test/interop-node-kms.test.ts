/**
 * Interop: the real node-kms@0.4.1 client, unchanged, against `kms serve` over HTTP — the ECDHE
 * handshake, then create keys -> create resource -> retrieve as another user, and a refusal.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { nodeKmsSession } from './support/node-kms.js';
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

test('node-kms: handshake, create keys, create resource, retrieve as another user', async () => {
  const alice = await nodeKmsSession(server.url, token('alice@a.example'), 'alice-web');
  assert.match(alice.channelUri, /^kms:\/\/kms\.a\.example\/ecdhe\/[0-9a-f-]{36}$/);

  const created = await alice.call({ method: 'create', uri: '/keys', count: 2 });
  assert.equal(created.status, 201);
  const keys = created.keys as { uri: string; jwk: { k: string; kid: string; kty: string }; userId: string; clientId: string }[];
  assert.equal(keys.length, 2);
  assert.equal(keys[0]!.jwk.kty, 'oct');
  assert.equal(Buffer.from(keys[0]!.jwk.k, 'base64url').length, 32);
  assert.equal(keys[0]!.userId, 'alice@a.example');
  assert.equal(keys[0]!.clientId, 'alice-web');

  const resource = await alice.call({ method: 'create', uri: '/resources', userIds: ['bob@a.example'], keyUris: [keys[0]!.uri] });
  assert.equal(resource.status, 201);
  const rep = resource.resource as { uri: string; keyUris: string[]; authorizationUris: string[] };
  assert.deepEqual(rep.keyUris, [keys[0]!.uri]);
  assert.equal(rep.authorizationUris.length, 2);

  const bob = await nodeKmsSession(server.url, token('bob@a.example'), 'bob-phone');
  const got = await bob.call({ method: 'retrieve', uri: keys[0]!.uri });
  assert.equal(got.status, 200);
  const key = got.key as { jwk: { k: string }; resourceUri: string; bindDate: string };
  assert.equal(key.jwk.k, keys[0]!.jwk.k, 'Bob reads the key Alice bound');
  assert.equal(key.resourceUri, rep.uri);
  assert.match(key.bindDate, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);

  const all = await bob.call({ method: 'retrieve', uri: `${rep.uri}/keys` });
  assert.equal(all.status, 200);
  assert.deepEqual((all.keys as { uri: string }[]).map((k) => k.uri), [keys[0]!.uri]);

  const carol = await nodeKmsSession(server.url, token('carol@a.example'), 'carol-web');
  const refused = await carol.call({ method: 'retrieve', uri: keys[0]!.uri });
  assert.equal(refused.status, 403);

  // The unbound second key stays Alice's alone.
  assert.equal((await bob.call({ method: 'retrieve', uri: keys[1]!.uri })).status, 403);
  assert.equal((await alice.call({ method: 'retrieve', uri: keys[1]!.uri })).status, 200);
  assert.equal((await bob.call({ method: 'update', uri: '/ping' })).status, 200);
});
