/**
 * `kms peer add|list|remove` as an operator uses it (OPERATING.md, PROTOCOL.md §6 "Peers"): works
 * offline on kms.json, copies the peer's CA certificates into it, replaces an entry for the same
 * authority, refuses a domain this KMS or another peer serves, edits only `peers`, and answers every
 * bad input with one `kms: …` line and a non-zero exit, leaving kms.json as it was.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { oneClearLine, runKms } from './support/cli.js';

let root: string;
let dirA: string;
let dirB: string;
let configA: string;
let caB: string;
let original: Record<string, unknown>;

before(() => {
  root = mkdtempSync(join(tmpdir(), 'kms-cli-peer-'));
  dirA = join(root, 'a');
  dirB = join(root, 'b');
  for (const [dir, authority, domain] of [
    [dirA, 'kms.a.example', 'a.example'],
    [dirB, 'kms.b.example', 'b.example'],
  ] as const) {
    const r = runKms(['init', '--dir', dir, '--authority', authority, '--domain', domain]);
    assert.equal(r.code, 0, r.stderr);
  }
  configA = join(dirA, 'kms.json');
  caB = join(dirB, 'ca.pem');
  original = JSON.parse(readFileSync(configA, 'utf8'));
});
after(() => rmSync(root, { recursive: true, force: true }));

function readA(): Record<string, unknown> & { peers: Array<{ authority: string; domains: string[]; endpoint: string; trustAnchors: string[] }> } {
  return JSON.parse(readFileSync(configA, 'utf8'));
}

/** Everything but `peers` is as `kms init` wrote it (no defaults filled in), and no temp file is left. */
function othersUnchanged(): void {
  const { peers: _p, ...rest } = readA();
  const { peers: _q, ...before } = original;
  assert.deepEqual(rest, before);
  assert.deepEqual(readdirSync(dirA).filter((f) => f.endsWith('.tmp')), []);
}

function derOf(pem: string): string {
  return new X509Certificate(pem).raw.toString('base64');
}

/** Runs a command that must be refused: non-zero exit, one line, kms.json byte for byte as it was. */
function refused(args: string[], pattern?: RegExp, env: Record<string, string> = {}): string {
  const beforeText = readFileSync(configA, 'utf8');
  const r = runKms(args, env);
  assert.notEqual(r.code, 0, `${args.join(' ')} should fail`);
  assert.equal(r.stdout, '');
  oneClearLine(r.stderr);
  if (pattern) assert.match(r.stderr, pattern);
  assert.equal(readFileSync(configA, 'utf8'), beforeText, 'kms.json untouched');
  return r.stderr;
}

const addB = (...extra: string[]) => [
  'peer', 'add', '--config', configA, '--authority', 'kms.b.example', '--domain', 'b.example', '--endpoint', 'https://kms.b.example:7002', '--ca', caB, ...extra,
];

describe('kms peer', () => {
  test('add copies the CA certificate into the config', () => {
    const r = runKms(addB());
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, 'peer kms.b.example added: domains b.example; takes effect on the next start\n');
    const { peers } = readA();
    assert.equal(peers.length, 1);
    assert.equal(peers[0]!.authority, 'kms.b.example');
    assert.deepEqual(peers[0]!.domains, ['b.example']);
    assert.equal(peers[0]!.endpoint, 'https://kms.b.example:7002');
    assert.equal(peers[0]!.trustAnchors.length, 1);
    assert.equal(derOf(peers[0]!.trustAnchors[0]!), derOf(readFileSync(caB, 'utf8')));
    othersUnchanged();
  });

  test('list shows the peer, one line each; --json prints the entries', () => {
    const r = runKms(['peer', 'list', '--config', configA]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /^kms\.b\.example\s.*b\.example.*https:\/\/kms\.b\.example:7002.*1 trust anchor/);
    const j = runKms(['peer', 'list', '--json'], { KMS_CONFIG: configA });
    assert.equal(j.code, 0, j.stderr);
    const listed = JSON.parse(j.stdout);
    assert.deepEqual(listed, readA().peers);
  });

  test('adding the same authority again replaces the entry', () => {
    const bundle = join(root, 'bundle.pem');
    writeFileSync(bundle, readFileSync(caB, 'utf8') + readFileSync(join(dirA, 'ca.pem'), 'utf8'));
    const r = runKms([
      'peer', 'add', '--config', configA, '--authority', 'KMS.B.Example', '--domain', 'B.Example', '--domain', 'b.example.org',
      '--endpoint', 'https://b.example/kms', '--ca', bundle, '--ca', caB,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, 'peer kms.b.example replaced: domains b.example, b.example.org; takes effect on the next start\n');
    const { peers } = readA();
    assert.equal(peers.length, 1);
    assert.deepEqual(peers[0], {
      authority: 'kms.b.example',
      domains: ['b.example', 'b.example.org'],
      endpoint: 'https://b.example/kms',
      trustAnchors: peers[0]!.trustAnchors,
    });
    // Two certificates from the bundle, the repeated one not copied twice.
    assert.deepEqual(peers[0]!.trustAnchors.map(derOf), [derOf(readFileSync(caB, 'utf8')), derOf(readFileSync(join(dirA, 'ca.pem'), 'utf8'))]);
    othersUnchanged();
    // Back to the plain entry.
    assert.equal(runKms(addB()).code, 0);
  });

  test('only certificate blocks are copied, never a private key in the same file', () => {
    const mixed = join(root, 'mixed.pem');
    writeFileSync(mixed, readFileSync(join(dirB, 'ca-key.pem'), 'utf8') + readFileSync(caB, 'utf8'));
    const r = runKms(addB('--ca', mixed));
    assert.equal(r.code, 0, r.stderr);
    const text = readFileSync(configA, 'utf8');
    assert.doesNotMatch(text, /PRIVATE KEY/);
    assert.equal(readA().peers[0]!.trustAnchors.length, 1);
  });

  test("a peer claiming this KMS's domain is refused", () => {
    refused(['peer', 'add', '--config', configA, '--authority', 'kms.c.example', '--domain', 'A.Example', '--endpoint', 'https://kms.c.example', '--ca', caB], /a\.example.*this KMS/);
  });

  test("a second peer claiming another peer's domain is refused", () => {
    refused(
      ['peer', 'add', '--config', configA, '--authority', 'kms.c.example', '--domain', 'c.example', '--domain', 'B.EXAMPLE', '--endpoint', 'https://kms.c.example', '--ca', caB],
      /b\.example.*kms\.b\.example/,
    );
  });

  test("this KMS's own authority is refused as a peer", () => {
    refused(['peer', 'add', '--config', configA, '--authority', 'kms.a.example', '--domain', 'x.example', '--endpoint', 'https://kms.a.example', '--ca', caB], /own authority/);
  });

  test('every bad input is one line and a non-zero exit', () => {
    const garbage = join(root, 'garbage.pem');
    writeFileSync(garbage, 'this is not a certificate\n');
    const badBase64 = join(root, 'bad-base64.pem');
    writeFileSync(badBase64, '-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n');
    const base = ['peer', 'add', '--config', configA, '--authority', 'kms.c.example', '--domain', 'c.example'];
    const cases: Array<[string[], RegExp]> = [
      [[...base, '--endpoint', 'not a url', '--ca', caB], /--endpoint/],
      [[...base, '--endpoint', 'ftp://kms.c.example', '--ca', caB], /--endpoint/],
      [['peer', 'add', '--config', configA, '--authority', 'not an authority!', '--domain', 'c.example', '--endpoint', 'https://kms.c.example', '--ca', caB], /--authority/],
      [['peer', 'add', '--config', configA, '--authority', 'kms.c.example', '--domain', 'bad domain', '--endpoint', 'https://kms.c.example', '--ca', caB], /--domain/],
      [[...base, '--endpoint', 'https://kms.c.example', '--ca', join(root, 'absent.pem')], /absent\.pem/],
      [[...base, '--endpoint', 'https://kms.c.example', '--ca', garbage], /garbage\.pem/],
      [[...base, '--endpoint', 'https://kms.c.example', '--ca', badBase64], /bad-base64\.pem/],
      [[...base, '--endpoint', 'https://kms.c.example', '--ca', join(dirB, 'static-cert.pem')], /not a CA/],
      [[...base, '--endpoint', 'https://kms.c.example'], /--ca/],
      [['peer', 'add', '--config', configA, '--authority', 'kms.c.example', '--endpoint', 'https://kms.c.example', '--ca', caB], /--domain/],
      [['peer', 'add', '--config', configA, '--domain', 'c.example', '--endpoint', 'https://kms.c.example', '--ca', caB], /--authority/],
      [[...base, '--ca', caB], /--endpoint/],
      [[...base, '--endpoint', 'https://kms.c.example', '--ca', caB, '--bogus'], /bogus/],
      [['peer', 'add', '--config', join(root, 'absent.json'), '--authority', 'kms.c.example', '--domain', 'c.example', '--endpoint', 'https://kms.c.example', '--ca', caB], /absent\.json/],
      [['peer'], /add, list or remove/],
      [['peer', 'frob'], /frob/],
      [['peer', 'list', '--config', join(root, 'absent.json')], /absent\.json/],
      [['peer', 'remove', '--config', configA], /--authority/],
      [['peer', 'remove', '--config', configA, '--authority', 'kms.unknown.example'], /no peer kms\.unknown\.example/],
    ];
    for (const [args, pattern] of cases) refused(args, pattern);
    // Nothing was added by any of them.
    assert.deepEqual(readA().peers.map((p) => p.authority), ['kms.b.example']);
  });

  test('a malformed kms.json is refused, not overwritten', () => {
    const bad = join(root, 'bad.json');
    writeFileSync(bad, '{"authority": 42');
    const r = runKms(['peer', 'add', '--config', bad, '--authority', 'kms.c.example', '--domain', 'c.example', '--endpoint', 'https://kms.c.example', '--ca', caB]);
    assert.notEqual(r.code, 0);
    oneClearLine(r.stderr);
    assert.equal(readFileSync(bad, 'utf8'), '{"authority": 42');
  });

  test('remove takes the peer out, case-insensitively, and leaves the rest as it was', () => {
    const r = runKms(['peer', 'remove', '--config', configA, '--authority', 'KMS.B.EXAMPLE']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, 'peer kms.b.example removed; takes effect on the next start\n');
    assert.deepEqual(readA().peers, []);
    othersUnchanged();
    assert.deepEqual(readA(), original);
    const list = runKms(['peer', 'list', '--config', configA]);
    assert.equal(list.code, 0, list.stderr);
    assert.equal(list.stdout, '');
    refused(['peer', 'remove', '--config', configA, '--authority', 'kms.b.example'], /no peer kms\.b\.example/);
  });
});
