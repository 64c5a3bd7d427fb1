/**
 * `startDevKms`, the testing entry point's one way to run a development KMS (tests, examples,
 * benchmark): what it hands back works as a user's client needs it, and each option does what it
 * says, against the default it replaces.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { KmsClient } from '@openkms/client';
import { FILES } from '../src/cli/init.js';
import type { Logger } from '../src/index.js';
import { kmsFolder, manualClock, startDevKms } from '../src/testing/harness.js';

const DEV_ISSUER_NOTICE = 'the development token issuer is enabled';

function claims(token: string): { sub: string; iat: number; exp: number; roles?: string[] } {
  return JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')) as { sub: string; iat: number; exp: number; roles?: string[] };
}

test('startDevKms: a user with its token and trust anchors talks to it; every log line is kept', async () => {
  const kms = await startDevKms();
  try {
    assert.equal(kms.authority, 'kms.a.example');
    assert.equal(kms.dir, await kmsFolder('kms.a.example', ['a.example']), 'the folder is the one made once per process');
    assert.deepEqual(kms.trustAnchors, [readFileSync(join(kms.dir, FILES.ca), 'utf8')]);
    assert.match(kms.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    const client = new KmsClient({ url: kms.url, authority: kms.authority, trustAnchors: kms.trustAnchors, token: await kms.token('alice@a.example'), clientId: 'harness-test' });
    try {
      await client.ping();
      const [key] = await client.createKeys(1);
      assert.ok(key?.uri.startsWith('kms://kms.a.example/keys/'));
    } finally {
      await client.close();
    }
    const logs = kms.logs.join('');
    assert.ok(logs.includes(DEV_ISSUER_NOTICE), 'the warning at start is kept');
    assert.match(logs, /"op":"createKeys","status":201[^\n]*"msg":"request"/, 'the request lines are kept');
  } finally {
    await kms.close();
  }
});

test('startDevKms: authority, domains, clock, config and port are the ones given', async () => {
  const clock = manualClock(Date.parse('2030-01-01T00:00:00Z'));
  const probe = await startDevKms({ authority: 'kms.c.example', domains: ['c.example'] });
  const port = Number(new URL(probe.url).port);
  await probe.close();
  const kms = await startDevKms({ authority: 'kms.c.example', domains: ['c.example'], now: clock.now, port, config: { lifetimes: { channel: 123 } } });
  try {
    assert.equal(kms.authority, 'kms.c.example');
    assert.deepEqual(kms.config.domains, ['c.example']);
    assert.equal(kms.url, `http://127.0.0.1:${port}`);
    assert.equal(kms.config.lifetimes.channel, 123, 'the override is merged in');
    assert.equal(kms.config.staticKey.key, FILES.staticKey, 'the rest of kms.json is kept');
    const token = claims(await kms.token('carol@c.example', { roles: ['admin'], ttlSeconds: 60 }));
    assert.equal(token.sub, 'carol@c.example');
    assert.equal(token.iat, clock.now() / 1000, "issued at the KMS's clock");
    assert.equal(token.exp - token.iat, 60);
    assert.deepEqual(token.roles, ['admin']);
  } finally {
    await kms.close();
  }
});

test('startDevKms: a restart on the same database keeps what was there', async () => {
  const first = await startDevKms();
  let uri: string;
  try {
    const client = new KmsClient({ url: first.url, authority: first.authority, trustAnchors: first.trustAnchors, token: await first.token('alice@a.example'), clientId: 'harness-test' });
    uri = (await client.createKeys(1))[0]!.uri;
    await client.close();
  } finally {
    await first.close();
  }
  const second = await startDevKms({ dbPath: first.dbPath });
  try {
    assert.equal(second.dbPath, first.dbPath);
    const client = new KmsClient({ url: second.url, authority: second.authority, trustAnchors: second.trustAnchors, token: await second.token('alice@a.example'), clientId: 'harness-test' });
    try {
      assert.equal((await client.retrieveKey(uri)).uri, uri);
    } finally {
      await client.close();
    }
  } finally {
    await second.close();
  }
  const other = await startDevKms();
  try {
    assert.notEqual(other.dbPath, first.dbPath, 'by default each KMS gets a fresh database');
  } finally {
    await other.close();
  }
});

test('startDevKms: logLevel keeps only that level and above; logTo receives the same lines', async () => {
  const out = new PassThrough();
  const written: string[] = [];
  out.on('data', (d: Buffer) => written.push(d.toString('utf8')));
  const kms = await startDevKms({ logLevel: 'warn', logTo: out });
  try {
    const client = new KmsClient({ url: kms.url, authority: kms.authority, trustAnchors: kms.trustAnchors, token: await kms.token('alice@a.example'), clientId: 'harness-test' });
    await client.ping();
    await client.close();
    assert.ok(kms.logs.join('').includes(DEV_ISSUER_NOTICE));
    assert.ok(kms.logs.every((line) => /"level":(40|50|60)/.test(line)), kms.logs.join(''));
    assert.equal(written.join(''), kms.logs.join(''));
  } finally {
    await kms.close();
  }
  const quiet = await startDevKms({ logLevel: 'error' });
  try {
    assert.deepEqual(quiet.logs, [], 'a warning is below error');
  } finally {
    await quiet.close();
  }
});

test('startDevKms: a logger of its own gets the lines instead', async () => {
  const seen: string[] = [];
  const logger: Logger = { debug() {}, info() {}, warn: (_obj, msg) => seen.push(msg ?? ''), error: (_obj, msg) => seen.push(msg ?? '') };
  const kms = await startDevKms({ logger });
  try {
    assert.ok(seen.some((m) => m.startsWith(DEV_ISSUER_NOTICE)), seen.join('\n'));
    assert.deepEqual(kms.logs, []);
  } finally {
    await kms.close();
  }
});

test('startDevKms: a configuration without the development issuer is refused, naming why', async () => {
  await assert.rejects(startDevKms({ config: { identity: { dev: { enabled: false } } } }), /has no development token issuer \(identity\.dev\.enabled is false\)/);
});
