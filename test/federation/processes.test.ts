/**
 * Federation between separate `kms serve` processes on loopback (draft 3.3): each KMS made with
 * `kms init`, trusting the other with `kms peer add`. Bob (b.example) reads Alice's key through
 * his own KMS; Carol is refused; revocation reaches B at once; a KMS the peer does not list is
 * refused; a B token is worthless at A; A down is a 502 while B stays healthy.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { KmsClient, KmsError } from '@openkms/client';
import { runKms, serve, type Served } from '../support/cli.js';
import { reservablePort } from '../support/ports.js';


interface Domain {
  name: string;
  authority: string;
  dir: string;
  port: number;
  server?: Served;
}

let root: string;
const a: Domain = { name: 'a.example', authority: 'kms.a.example', dir: '', port: 0 };
const b: Domain = { name: 'b.example', authority: 'kms.b.example', dir: '', port: 0 };
const c: Domain = { name: 'c.example', authority: 'kms.c.example', dir: '', port: 0 };
/** Claims to be kms.b.example, with a certificate from a CA of its own (not the one A trusts for B). */
const impostor: Domain = { name: 'b.example', authority: 'kms.b.example', dir: '', port: 0 };
const url = (d: Domain) => `http://127.0.0.1:${d.port}`;
const config = (d: Domain) => join(d.dir, 'kms.json');
const ca = (d: Domain) => readFileSync(join(d.dir, 'ca.pem'), 'utf8');
const token = (d: Domain, user: string) => runKms(['token', '--config', config(d), '--user', user]).stdout.trim();
const clients: KmsClient[] = [];
const client = (d: Domain, user: string, at: Domain = d) => {
  const k = new KmsClient({ url: url(at), token: token(d, user), trustAnchors: [ca(at)], timeoutMs: 15_000 });
  clients.push(k);
  return k;
};
const statusOf = async (p: Promise<unknown>) => {
  try {
    await p;
    return 200;
  } catch (err) {
    if (err instanceof KmsError) return err.status;
    throw err;
  }
};
const peerAdd = (from: Domain, to: Domain) => {
  const r = runKms(['peer', 'add', '--config', config(from), '--authority', to.authority, '--domain', to.name, '--endpoint', url(to), '--ca', join(to.dir, 'ca.pem')]);
  assert.equal(r.code, 0, r.stderr);
};

before(async () => {
  root = mkdtempSync(join(tmpdir(), 'kms-federation-'));
  for (const d of [a, b, c, impostor]) {
    d.dir = join(root, d === impostor ? 'impostor' : d.name);
    d.port = await reservablePort();
    const r = runKms(['init', '--dir', d.dir, '--authority', d.authority, '--domain', d.name, '--port', String(d.port)]);
    assert.equal(r.code, 0, r.stderr);
  }
  peerAdd(a, b);
  peerAdd(b, a);
  peerAdd(c, a); // C trusts A, but A does not list C
  peerAdd(impostor, a);
  for (const d of [a, b, c, impostor]) d.server = await serve(['--config', config(d)]);
});

after(async () => {
  await Promise.all(clients.map((k) => k.close()));
  for (const d of [a, b, c, impostor]) if (d.server) assert.equal(await d.server.stop(), 0, `${d.authority} shuts down cleanly`);
  rmSync(root, { recursive: true, force: true });
});

test('Bob reads Alice\'s key through his own KMS; Carol is refused; revocation reaches B at once', async (t) => {
  const alice = client(a, 'alice@a.example');
  const [key] = await alice.createKeys(1);
  const { resource } = await alice.createResource({ authIds: ['bob@b.example'], keyUris: [key!.uri] });
  const secret = await alice.encrypt(key!, 'the file Alice shares');

  const bob = client(b, 'bob@b.example');
  let started = performance.now();
  assert.equal(new TextDecoder().decode(await bob.decrypt(secret)), 'the file Alice shares');
  t.diagnostic(`cold federated fetch (Bob's request through B to A): ${Math.round(performance.now() - started)} ms`);
  started = performance.now();
  await bob.retrieveKey(key!.uri);
  t.diagnostic(`warm fetch (from B's copy): ${Math.round(performance.now() - started)} ms`);

  assert.equal(await statusOf(client(b, 'carol@b.example').retrieveKey(key!.uri)), 403);

  started = performance.now();
  await alice.deauthorize(resource.uri, 'bob@b.example');
  let delay = -1;
  for (let i = 0; i < 100; i++) {
    if ((await statusOf(bob.retrieveKey(key!.uri))) === 403) {
      delay = performance.now() - started;
      break;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(delay >= 0, 'Bob is refused after revocation');
  t.diagnostic(`revocation delay (Alice's deauthorize returns → B refuses Bob): ${Math.round(delay)} ms`);
});

test('a B token is worthless at A; a KMS that A does not list is refused (502)', async () => {
  const alice = client(a, 'alice@a.example');
  const [key] = await alice.createKeys(1);
  await alice.createResource({ authIds: ['bob@b.example', 'cora@c.example'], keyUris: [key!.uri] });
  const bobAtA = new KmsClient({ url: url(a), token: token(b, 'bob@b.example'), trustAnchors: [ca(a)] });
  clients.push(bobAtA);
  assert.ok([401, 403].includes(await statusOf(bobAtA.retrieveKey(key!.uri))));
  assert.equal(await statusOf(client(c, 'cora@c.example').retrieveKey(key!.uri)), 502);
});

test('A refuses a KRO without a b.example principal, and an impostor of B', async () => {
  const alice = client(a, 'alice@a.example');
  const [key] = await alice.createKeys(1);
  await alice.createResource({ authIds: ['zoe@a.example'], keyUris: [key!.uri] });
  assert.equal(await statusOf(client(b, 'bob@b.example').retrieveKey(key!.uri)), 403, 'no B user on the KRO: A refuses B');
  const [shared] = await alice.createKeys(1);
  await alice.createResource({ authIds: ['bob@b.example'], keyUris: [shared!.uri] });
  assert.equal(await statusOf(client(impostor, 'bob@b.example').retrieveKey(shared!.uri)), 502, 'the impostor is refused the channel');
  assert.equal(await statusOf(client(b, 'bob@b.example').retrieveKey(shared!.uri)), 200, 'the real B is served');
});

test('A down: 502 for an uncached read, B stays healthy', async () => {
  const alice = client(a, 'alice@a.example');
  const [key] = await alice.createKeys(1);
  await alice.createResource({ authIds: ['bob@b.example'], keyUris: [key!.uri] });
  assert.equal(await a.server!.stop(), 0);
  a.server = undefined;
  assert.equal(await statusOf(client(b, 'bob@b.example').retrieveKey(key!.uri)), 502);
  const health = await fetch(`${url(b)}/healthz`);
  assert.equal(health.status, 200);
  await health.arrayBuffer();
});
