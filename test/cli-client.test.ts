/**
 * `kms client …` against `kms serve`: Alice encrypts a file for a resource, Bob (authorized)
 * decrypts it, Carol cannot and no partial output is left; removing Bob stops him; key values
 * appear only with --json. Files are checked before the KMS is asked anything, and no output file
 * is overwritten without --force.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { auditedRequests, oneClearLine, runKms, serve, type Served } from './support/cli.js';

let dir: string;
let server: Served;
let env: Record<string, string>;
const as = (user: string) => ({ ...env, KMS_TOKEN: runKms(['token', '--config', join(dir, 'kms.json'), '--user', user]).stdout.trim() });

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kms-cli-client-'));
  assert.equal(runKms(['init', '--dir', dir, '--authority', 'kms.a.example', '--domain', 'a.example']).code, 0);
  server = await serve(['--config', join(dir, 'kms.json'), '--port', '0']);
  env = { KMS_URL: server.url, KMS_CA: join(dir, 'ca.pem') };
});
after(async () => {
  assert.equal(await server.stop(), 0);
  rmSync(dir, { recursive: true, force: true });
});

test('keys: created, retrieved, values only with --json', () => {
  const alice = as('alice@a.example');
  const text = runKms(['client', 'keys', 'create', '--count', '2'], alice);
  assert.equal(text.code, 0, text.stderr);
  assert.equal(text.stdout.match(/^kms:\/\/kms\.a\.example\/keys\//gm)?.length, 2);
  const json = runKms(['client', 'keys', 'create', '--json'], alice);
  const [key] = JSON.parse(json.stdout) as { uri: string; jwk: { k: string } }[];
  assert.equal(Buffer.from(key!.jwk.k, 'base64url').length, 32);
  const got = runKms(['client', 'key', 'get', key!.uri], alice);
  assert.equal(got.code, 0, got.stderr);
  assert.ok(got.stdout.startsWith(key!.uri));
  assert.ok(!got.stdout.includes(key!.jwk.k), 'no key value without --json');
  assert.equal(JSON.parse(runKms(['client', 'key', 'get', key!.uri, '--json'], alice).stdout).jwk.k, key!.jwk.k);
});

test('encrypt for a resource, decrypt as an authorized user only', () => {
  const alice = as('alice@a.example');
  const made = runKms(['client', 'resource', 'create', '--authorize', 'bob@a.example', '--json'], alice);
  assert.equal(made.code, 0, made.stderr);
  const resource = (JSON.parse(made.stdout) as { resource: { uri: string } }).resource.uri;
  const plain = join(dir, 'report.bin');
  const content = randomBytes(300_000);
  writeFileSync(plain, content);
  const encrypted = runKms(['client', 'encrypt', plain, '--resource', resource], alice);
  assert.equal(encrypted.code, 0, encrypted.stderr);
  const sealed = readFileSync(`${plain}.jwe`);
  assert.equal(sealed.indexOf(content.subarray(0, 64)), -1, 'the output is ciphertext');

  const bobOut = join(dir, 'bob.bin');
  const bob = runKms(['client', 'decrypt', `${plain}.jwe`, '--out', bobOut], as('bob@a.example'));
  assert.equal(bob.code, 0, bob.stderr);
  assert.deepEqual(readFileSync(bobOut), content);

  const carolOut = join(dir, 'carol.bin');
  const carol = runKms(['client', 'decrypt', `${plain}.jwe`, '--out', carolOut], as('carol@a.example'));
  assert.notEqual(carol.code, 0);
  assert.match(carol.stderr, /^kms: 403 /);
  assert.ok(!existsSync(carolOut) && !existsSync(`${carolOut}.partial`), 'nothing written for a refused user');

  assert.equal(runKms(['client', 'deauthorize', '--resource', resource, '--user', 'bob@a.example'], alice).code, 0);
  const again = runKms(['client', 'decrypt', `${plain}.jwe`, '--out', join(dir, 'bob2.bin')], as('bob@a.example'));
  assert.notEqual(again.code, 0);
  assert.match(again.stderr, /403/);

  assert.equal(runKms(['client', 'authorize', '--resource', resource, '--user', 'carol@a.example'], alice).code, 0);
  assert.equal(runKms(['client', 'decrypt', `${plain}.jwe`, '--out', carolOut], as('carol@a.example')).code, 0);
  assert.deepEqual(readFileSync(carolOut), content);
});

test('a tampered file is refused and leaves no output', () => {
  const alice = as('alice@a.example');
  const resource = (JSON.parse(runKms(['client', 'resource', 'create', '--json'], alice).stdout) as { resource: { uri: string } }).resource.uri;
  const plain = join(dir, 'note.txt');
  writeFileSync(plain, 'x'.repeat(200_000));
  assert.equal(runKms(['client', 'encrypt', plain, '--resource', resource], alice).code, 0);
  const lines = readFileSync(`${plain}.jwe`, 'utf8').trim().split('\n');
  assert.ok(lines.length >= 3, 'several chunks');
  writeFileSync(join(dir, 'cut.jwe'), lines.slice(0, -1).join('\n') + '\n');
  const r = runKms(['client', 'decrypt', join(dir, 'cut.jwe'), '--out', join(dir, 'cut.txt')], alice);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /truncated/);
  assert.ok(!existsSync(join(dir, 'cut.txt')));
});

test('usage errors are one clear line', () => {
  for (const args of [['client', 'frobnicate'], ['client', 'key', 'get', '--count', '2'], ['client', 'keys', 'create']]) {
    const r = runKms(args, args[2] === 'create' ? env : as('alice@a.example'));
    assert.notEqual(r.code, 0);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^kms: /);
  }
});

/** A resource of Alice's, and a file she encrypted for it. */
function aliceFile(name: string, content: string): { alice: Record<string, string>; resource: string; plain: string; sealed: string } {
  const alice = as('alice@a.example');
  const resource = (JSON.parse(runKms(['client', 'resource', 'create', '--json'], alice).stdout) as { resource: { uri: string } }).resource.uri;
  const plain = join(dir, name);
  writeFileSync(plain, content);
  const r = runKms(['client', 'encrypt', plain, '--resource', resource], alice);
  assert.equal(r.code, 0, r.stderr);
  return { alice, resource, plain, sealed: `${plain}.jwe` };
}

/** Runs a command that must be refused before the KMS is asked anything. */
function refusedLocally(args: string[], env: Record<string, string>, pattern: RegExp): void {
  const before = auditedRequests(join(dir, 'kms.db'));
  const r = runKms(args, env);
  assert.notEqual(r.code, 0);
  oneClearLine(r.stderr);
  assert.match(r.stderr, pattern);
  assert.equal(r.stdout, '');
  assert.equal(auditedRequests(join(dir, 'kms.db')), before, `the KMS saw no request for: kms ${args.join(' ')}`);
}

describe('encrypt checks its input before the KMS makes a key', () => {
  test('a missing file, a folder, a second file', () => {
    const alice = as('alice@a.example');
    const resource = (JSON.parse(runKms(['client', 'resource', 'create', '--json'], alice).stdout) as { resource: { uri: string } }).resource.uri;
    refusedLocally(['client', 'encrypt', join(dir, 'absent.txt'), '--resource', resource], alice, /absent\.txt: no such file/);
    assert.ok(!existsSync(join(dir, 'absent.txt.jwe')));
    refusedLocally(['client', 'encrypt', dir, '--resource', resource], alice, /is not a file/);
    writeFileSync(join(dir, 'one.txt'), 'one');
    refusedLocally(['client', 'encrypt', join(dir, 'one.txt'), join(dir, 'two.txt'), '--resource', resource], alice, /takes one argument; unexpected '.*two\.txt'/);
  });

  test('an output in a folder that does not exist', () => {
    const alice = as('alice@a.example');
    writeFileSync(join(dir, 'three.txt'), 'three');
    refusedLocally(
      ['client', 'encrypt', join(dir, 'three.txt'), '--resource', 'kms://kms.a.example/resources/x', '--out', join(dir, 'nowhere', 'three.jwe')],
      alice,
      /cannot write .*no folder/,
    );
  });

  test('an existing output is kept without --force and replaced with it', () => {
    const { alice, resource, plain, sealed } = aliceFile('kept.txt', 'first');
    const first = readFileSync(sealed, 'utf8');
    writeFileSync(plain, 'second');
    refusedLocally(['client', 'encrypt', plain, '--resource', resource], alice, /kept\.txt\.jwe exists; use --force/);
    assert.equal(readFileSync(sealed, 'utf8'), first, 'the existing output is untouched');

    const forced = runKms(['client', 'encrypt', plain, '--resource', resource, '--force'], alice);
    assert.equal(forced.code, 0, forced.stderr);
    assert.notEqual(readFileSync(sealed, 'utf8'), first);
    const out = join(dir, 'kept.out');
    assert.equal(runKms(['client', 'decrypt', sealed, '--out', out], alice).code, 0);
    assert.equal(readFileSync(out, 'utf8'), 'second');
  });
});

describe('decrypt never overwrites a file without --force', () => {
  test('the default output (the name without .jwe) exists: refused, untouched; --force replaces it', () => {
    const { alice, plain, sealed } = aliceFile('report.txt', 'the report');
    writeFileSync(plain, 'edited since');
    refusedLocally(['client', 'decrypt', sealed], alice, /report\.txt exists; use --force/);
    assert.equal(readFileSync(plain, 'utf8'), 'edited since');

    const forced = runKms(['client', 'decrypt', sealed, '--force'], alice);
    assert.equal(forced.code, 0, forced.stderr);
    assert.equal(readFileSync(plain, 'utf8'), 'the report');
  });

  test('--out naming an existing file, a folder, or the input itself', () => {
    const { alice, sealed } = aliceFile('memo.txt', 'memo');
    const taken = join(dir, 'taken.txt');
    writeFileSync(taken, 'mine');
    refusedLocally(['client', 'decrypt', sealed, '--out', taken], alice, /taken\.txt exists; use --force/);
    assert.equal(readFileSync(taken, 'utf8'), 'mine');
    mkdirSync(join(dir, 'a-folder'), { recursive: true });
    refusedLocally(['client', 'decrypt', sealed, '--out', join(dir, 'a-folder'), '--force'], alice, /exists and is not a file/);
    refusedLocally(['client', 'decrypt', sealed, '--out', sealed, '--force'], alice, /is the input file/);
    refusedLocally(['client', 'decrypt', join(dir, 'absent.jwe')], alice, /absent\.jwe: no such file/);

    assert.equal(runKms(['client', 'decrypt', sealed, '--out', taken, '--force'], alice).code, 0);
    assert.equal(readFileSync(taken, 'utf8'), 'memo');
  });

  test('--force is documented in the usage', () => {
    const r = runKms(['client', 'decrypt', '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /decrypt FILE \[--out F\] \[--force\]/);
    assert.match(r.stdout, /never overwrite an existing output file unless --force/);
  });
});
