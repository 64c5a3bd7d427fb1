/**
 * A KMS whose root key is in an HSM (SoftHSMv2 over PKCS#11), through the real `kms` command:
 * `kms init --hsm-*` creates the keys in the token and writes no root key file, a second init
 * finds them, `kms serve` wraps and unwraps its CMKs in the token (keys created before a restart
 * are read after it), `kms audit verify`, `kms backup` and `kms restore` work with the HSM config
 * (a restore under another token's key is refused), and a wrong PIN, a missing key or a root key
 * given twice is one clear line and a non-zero exit. The PIN is never printed. Skipped only where
 * SoftHSM is absent and CI is not set.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { KmsClient } from '@openkms/client';
import { softHsm, withoutSoftHsm, type SoftHsm } from '@openkms/server/testing';
import { oneClearLine, runKms, serve } from '../support/cli.js';

const AUTHORITY = 'kms.hsm.example';
const INIT = ['--authority', AUTHORITY, '--domain', 'hsm.example'];
const TEST = { timeout: 90_000 };
const PIN = `pin-${randomBytes(8).toString('hex')}`;

await describe('the root key in an HSM', async () => {
  if (withoutSoftHsm()) return;
  let hsm: SoftHsm;
  let work: string;
  let dir: string;
  let env: Record<string, string>;
  const config = (d: string) => join(d, 'kms.json');
  const hsmInit = (d: string, token: string, more: string[] = [], extra: Record<string, string> = {}) =>
    runKms(['init', '--dir', d, ...INIT, '--hsm-module', hsm.module, '--hsm-token', token, ...more], { ...env, ...extra });
  const token = (d: string, user: string) => {
    // kmsAdmin: the test also rotates the global CMK.
    const r = runKms(['token', '--config', config(d), '--user', user, '--roles', 'kmsAdmin']);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  };
  const client = (url: string, d: string) =>
    new KmsClient({ url, token: token(d, 'alice@hsm.example'), trustAnchors: [readFileSync(join(d, 'ca.pem'), 'utf8')], authority: AUTHORITY, clientId: 'hsm-test' });
  const noPin = (...outputs: string[]) => {
    for (const out of outputs) assert.equal(out.includes(PIN), false, 'the PIN is never printed');
  };
  let keys: { uri: string; k: string }[];

  before(() => {
    hsm = softHsm();
    hsm.initToken('kms', PIN);
    hsm.initToken('other', PIN);
    env = { ...hsm.env, KMS_HSM_PIN: PIN };
    work = mkdtempSync(join(tmpdir(), 'kms-hsm-'));
    dir = join(work, 'a');
  });
  after(() => {
    rmSync(work, { recursive: true, force: true });
    hsm.remove();
  });

  test('kms init --hsm-* creates the keys in the token and writes no root key file; a second init finds them', TEST, () => {
    const r = hsmInit(dir, 'kms');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /PKCS#11 token 'kms': created 'openkms-root' and 'openkms-root-audit' \(non-extractable\); no root key file is written/);
    noPin(r.stdout, r.stderr);
    assert.equal(existsSync(join(dir, 'root.key')), false);
    const written = JSON.parse(readFileSync(config(dir), 'utf8'));
    assert.deepEqual(written.rootKey, { pkcs11: { module: hsm.module, token: 'kms', key: 'openkms-root' } });
    assert.equal(readFileSync(config(dir), 'utf8').includes(PIN), false, 'the PIN is not in kms.json');

    const again = hsmInit(join(work, 'again'), 'kms');
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /PKCS#11 token 'kms': found 'openkms-root' and 'openkms-root-audit'/);
  });

  test('kms serve wraps its CMKs in the token: keys made before a restart are read after it', TEST, async () => {
    let server = await serve(['--config', config(dir), '--port', '0'], env);
    let alice = client(server.url, dir);
    try {
      keys = (await alice.createKeys(2)).map((key) => ({ uri: key.uri, k: key.jwk.k }));
      await alice.createCmk();
    } finally {
      await alice.close();
      assert.equal(await server.stop(), 0);
    }
    noPin(server.stdout.join(''), server.stderr.join(''));
    server = await serve(['--config', config(dir), '--port', '0'], env);
    alice = client(server.url, dir);
    try {
      for (const key of keys) assert.equal((await alice.retrieveKey(key.uri)).jwk.k, key.k);
      assert.equal((await alice.listCmks()).length >= 2, true, 'the initial CMK and the rotated one');
    } finally {
      await alice.close();
      assert.equal(await server.stop(), 0);
    }
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('root')), [], 'no root key file, ever');
  });

  test('a wrong PIN, no PIN, a missing key, a root key given twice: one clear line and a non-zero exit', TEST, () => {
    const wrong = runKms(['serve', '--config', config(dir), '--port', '0'], { ...env, KMS_HSM_PIN: 'not-the-pin' });
    assert.equal(wrong.code, 1);
    oneClearLine(wrong.stderr);
    assert.match(wrong.stderr, /^kms: login to PKCS#11 token 'kms' refused: CKR_PIN_INCORRECT \(the PIN is KMS_HSM_PIN\)$/m);

    const none = runKms(['audit', 'verify', '--config', config(dir)], { ...hsm.env, KMS_HSM_PIN: '' });
    assert.equal(none.code, 1);
    oneClearLine(none.stderr);
    assert.match(none.stderr, /KMS_HSM_PIN is not set/);

    const missing = join(work, 'missing');
    assert.equal(hsmInit(missing, 'kms', ['--hsm-key', 'elsewhere']).code, 0);
    const cfg = JSON.parse(readFileSync(config(missing), 'utf8'));
    writeFileSync(config(missing), JSON.stringify({ ...cfg, rootKey: { pkcs11: { ...cfg.rootKey.pkcs11, key: 'never-made' } } }));
    const absent = runKms(['serve', '--config', config(missing), '--port', '0'], env);
    assert.equal(absent.code, 1);
    oneClearLine(absent.stderr);
    assert.match(absent.stderr, /there is no AES-256 key 'never-made' of PKCS#11 token 'kms': kms init .* creates it/);

    const twice = runKms(['serve', '--config', config(dir), '--port', '0'], { ...env, KMS_ROOT_KEY: randomBytes(32).toString('base64') });
    assert.equal(twice.code, 1);
    oneClearLine(twice.stderr);
    assert.match(twice.stderr, /KMS_ROOT_KEY is set, but the root key of this config is in an HSM/);

    const both = join(dir, 'both.json');
    writeFileSync(both, JSON.stringify({ ...JSON.parse(readFileSync(config(dir), 'utf8')), rootKey: { file: 'root.key', pkcs11: JSON.parse(readFileSync(config(dir), 'utf8')).rootKey.pkcs11 } }));
    const fileToo = runKms(['serve', '--config', both, '--port', '0'], env);
    rmSync(both);
    assert.equal(fileToo.code, 1);
    oneClearLine(fileToo.stderr);
    assert.match(fileToo.stderr, /rootKey\.file and rootKey\.pkcs11 name two root keys: keep one/);

    const badInit = join(work, 'bad-init');
    const refused = hsmInit(badInit, 'kms', [], { KMS_HSM_PIN: 'not-the-pin' });
    assert.equal(refused.code, 1);
    oneClearLine(refused.stderr);
    assert.match(refused.stderr, /CKR_PIN_INCORRECT/);
    assert.equal(existsSync(badInit), false, 'a refused init writes nothing');
    for (const r of [wrong, none, absent, twice, fileToo, refused]) noPin(r.stdout, r.stderr);
  });

  test('kms audit verify, kms backup and kms restore work with the HSM root; a restore under another token is refused', TEST, async () => {
    const verify = runKms(['audit', 'verify', '--config', config(dir)], env);
    assert.equal(verify.code, 0, verify.stderr);

    const file = join(work, 'backup.kms');
    const backup = runKms(['backup', '--config', config(dir), '--out', file], env);
    assert.equal(backup.code, 0, backup.stderr);

    const restored = join(work, 'restored.db');
    const restore = runKms(['restore', '--config', config(dir), '--db', `sqlite:${restored}`, '--from', file], env);
    assert.equal(restore.code, 0, restore.stderr);
    assert.match(restore.stdout, /audit log intact/);
    const server = await serve(['--config', config(dir), '--port', '0', '--db', `sqlite:${restored}`], env);
    const alice = client(server.url, dir);
    try {
      for (const key of keys) assert.equal((await alice.retrieveKey(key.uri)).jwk.k, key.k, 'the restored keys open under the same HSM key');
    } finally {
      await alice.close();
      assert.equal(await server.stop(), 0);
    }

    // The same authority and key label, in another token: a different key.
    const other = join(work, 'other');
    assert.equal(hsmInit(other, 'other').code, 0);
    const foreign = runKms(['restore', '--config', config(other), '--db', `sqlite:${join(work, 'foreign.db')}`, '--from', file], env);
    assert.equal(foreign.code, 1);
    oneClearLine(foreign.stderr);
    assert.match(foreign.stderr, /was not sealed under this config's root key/);
    assert.equal(existsSync(join(work, 'foreign.db')), false, 'nothing written');
  });
});
