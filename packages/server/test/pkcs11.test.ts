/**
 * The PKCS#11 root key on SoftHSMv2: the keys it creates never leave the token (checked through
 * the token itself, not through our code), a second open finds them, CMKs wrap and unwrap inside
 * the token in the keyring's format, bound to their row and to their token, and every problem an
 * operator can cause (PIN, token, key) is a ConfigError naming it. Skipped only where SoftHSM is
 * absent and CI is not set.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ConfigError } from '../src/config.js';
import { Keyring, sealedUnder, type RootKey } from '../src/keyring/keyring.js';
import { openPkcs11RootKey, type Pkcs11Options } from '../src/keyring/pkcs11.js';
import { SqliteStore } from '../src/store/sqlite.js';
import { softHsm, withoutSoftHsm, type SoftHsm } from '../src/testing/softhsm.js';

const PIN = `pin-${randomBytes(6).toString('hex')}`;

await describe('the PKCS#11 root key', async () => {
  if (withoutSoftHsm()) return;
  let hsm: SoftHsm;
  const options = (more: Partial<Pkcs11Options> = {}): Pkcs11Options => ({ module: hsm.module, token: 'kms-a', key: 'root', pin: PIN, ...more });
  const opened: RootKey[] = [];
  const open = async (more: Partial<Pkcs11Options> = {}) => {
    const o = await openPkcs11RootKey(options(more));
    opened.push(o.root);
    return o;
  };
  const closeAll = () => opened.splice(0).forEach((r) => r.close());

  before(() => {
    hsm = softHsm();
    // The module reads its configuration at C_Initialize, the first open of this process.
    process.env.SOFTHSM2_CONF = hsm.env.SOFTHSM2_CONF;
    hsm.initToken('kms-a', PIN);
    hsm.initToken('kms-b', PIN);
  });
  after(() => {
    closeAll();
    hsm.remove();
  });

  test('create makes a non-extractable, sensitive AES-256 key and an HMAC key; a second open finds them', async () => {
    const first = await open({ create: true });
    assert.deepEqual(first.created.sort(), ['root', 'root-audit']);
    const second = await open({ create: true });
    assert.deepEqual(second.created, [], 'found, not made again');
    // The same key: what one open wrapped, the other unwraps.
    const cmk = randomBytes(32);
    assert.deepEqual(Buffer.from(second.root.unwrap(first.root.wrap(cmk, 'cmk:1'), 'cmk:1')), cmk);
    assert.deepEqual(first.root.auditKey(), second.root.auditKey(), 'the audit key is derived, the same at every open');
    assert.equal(first.root.auditKey().length, 32);
    closeAll();

    // Read back through pkcs11js directly, with every root key of this process closed.
    // Untyped: the binding is an optional package, its types no dependency of the build.
    const p = createRequire(import.meta.url)('pkcs11js') as any;
    const lib = new p.PKCS11();
    lib.load(hsm.module);
    lib.C_Initialize();
    try {
      const slot = lib.C_GetSlotList(true).find((s: Buffer) => lib.C_GetTokenInfo(s).label.trim() === 'kms-a');
      const session = lib.C_OpenSession(slot, p.CKF_SERIAL_SESSION | p.CKF_RW_SESSION);
      lib.C_Login(session, p.CKU_USER, PIN);
      for (const [label, keyType] of [['root', p.CKK_AES], ['root-audit', p.CKK_GENERIC_SECRET]] as const) {
        lib.C_FindObjectsInit(session, [{ type: p.CKA_LABEL, value: label }]);
        const found = lib.C_FindObjects(session, 5) as Buffer[];
        lib.C_FindObjectsFinal(session);
        assert.equal(found.length, 1, `one object labelled ${label}`);
        const names = ['CKA_KEY_TYPE', 'CKA_VALUE_LEN', 'CKA_TOKEN', 'CKA_PRIVATE', 'CKA_SENSITIVE', 'CKA_EXTRACTABLE', 'CKA_ALWAYS_SENSITIVE', 'CKA_NEVER_EXTRACTABLE', 'CKA_WRAP', 'CKA_UNWRAP'];
        const values = lib.C_GetAttributeValue(session, found[0], names.map((n) => ({ type: p[n] }))) as { value: Buffer }[];
        const attr = Object.fromEntries(names.map((n, i) => [n, values[i]!.value.readUIntLE(0, Math.min(values[i]!.value.length, 6))]));
        assert.deepEqual(attr, { CKA_KEY_TYPE: keyType, CKA_VALUE_LEN: 32, CKA_TOKEN: 1, CKA_PRIVATE: 1, CKA_SENSITIVE: 1, CKA_EXTRACTABLE: 0, CKA_ALWAYS_SENSITIVE: 1, CKA_NEVER_EXTRACTABLE: 1, CKA_WRAP: 0, CKA_UNWRAP: 0 }, label);
        assert.throws(() => lib.C_GetAttributeValue(session, found[0], [{ type: p.CKA_VALUE }]), /CKR_ATTRIBUTE_SENSITIVE/, `${label}'s value cannot be read`);
      }
      lib.C_CloseSession(session);
    } finally {
      lib.C_Finalize();
      lib.close();
    }
  });

  test('a CMK wrapped in the token unwraps only there, for its own row, untampered', async () => {
    const a = (await open({ create: true })).root;
    const b = (await open({ token: 'kms-b', create: true })).root;
    const cmk = randomBytes(32);
    const sealed = a.wrap(cmk, 'cmk:x');
    assert.equal(sealed[0], 1, "the keyring's sealed format");
    assert.equal(sealed.length, 1 + 12 + 16 + 32);
    assert.equal(Buffer.from(sealed).includes(cmk), false);
    assert.deepEqual(Buffer.from(a.unwrap(sealed, 'cmk:x')), cmk);
    assert.throws(() => a.unwrap(sealed, 'cmk:y'), 'bound to its row');
    const tampered = Buffer.from(sealed);
    tampered[tampered.length - 1]! ^= 1;
    assert.throws(() => a.unwrap(tampered, 'cmk:x'), 'tampered');
    assert.throws(() => b.unwrap(sealed, 'cmk:x'), "another token's key of the same label");
    assert.equal(sealedUnder(a, { id: 'x', sealed }), true);
    assert.equal(sealedUnder(b, { id: 'x', sealed }), false);
    assert.notDeepEqual(a.auditKey(), b.auditKey(), 'each token derives its own audit key');
    // After a refused unwrap the session is usable again.
    assert.deepEqual(Buffer.from(a.unwrap(sealed, 'cmk:x')), cmk);
    closeAll();
  });

  test('the keyring over the HSM root: CMKs made, rotated and reopened; material stays readable', async () => {
    const root = (await open({ create: true })).root;
    const file = join(mkdtempSync(join(tmpdir(), 'kms-hsm-keyring-')), 'kms.db');
    let store = new SqliteStore(file);
    const ring = await Keyring.open(root, store, Date.now());
    const first = ring.activeCmk();
    const sealed = ring.seal(first.id, Buffer.from('old'), 'key:old');
    await ring.createCmk(null, Date.now());
    await store.close();
    store = new SqliteStore(file);
    const reopened = await Keyring.open(root, store, Date.now());
    assert.equal(Buffer.from((await reopened.unseal(first.id, sealed, 'key:old')).reveal()).toString(), 'old');
    const other = (await open({ token: 'kms-b', create: true })).root;
    await assert.rejects(Keyring.open(other, store, Date.now()), /cannot be unsealed under the key 'root' of PKCS#11 token 'kms-b': wrong root key\?/);
    await store.close();
    closeAll();
  });

  test('a wrong or missing PIN, an unknown token, a missing key: a ConfigError naming it', async () => {
    const refused = async (more: Partial<Pkcs11Options>, message: RegExp) =>
      assert.rejects(openPkcs11RootKey(options(more)), (err: unknown) => err instanceof ConfigError && message.test(err.message) && !err.message.includes(PIN) && !err.message.includes('\n'));
    await refused({ pin: 'wrong-pin' }, /^login to PKCS#11 token 'kms-a' refused: CKR_PIN_INCORRECT \(the PIN is KMS_HSM_PIN\)$/);
    await refused({ pin: undefined }, /^KMS_HSM_PIN is not set/);
    await refused({ token: 'nope' }, /^no PKCS#11 token labelled 'nope' in .* \(tokens: .*'kms-a'/);
    await refused({ key: 'absent' }, /^there is no AES-256 key 'absent' of PKCS#11 token 'kms-a': kms init --hsm-module .* --hsm-token kms-a --hsm-key absent creates it$/);
    await refused({ module: join(tmpdir(), `${randomUUID()}.so`) }, /^PKCS#11 module .* cannot be loaded/);
    // A failed open left nothing initialised behind: the next one works.
    const ok = await open();
    assert.equal(ok.created.length, 0);
    closeAll();
  });
});
