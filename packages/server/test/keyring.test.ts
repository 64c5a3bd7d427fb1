import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { inspect } from 'node:util';
import { Keyring, generateRootKey, parseRootKey } from '../src/keyring/keyring.js';
import { Secret } from '../src/secret.js';
import { SqliteStore } from '../src/store/sqlite.js';

const path = () => join(mkdtempSync(join(tmpdir(), 'kms-keyring-')), 'kms.db');

test('root key parsing', () => {
  assert.equal(parseRootKey(generateRootKey()).length, 32);
  assert.throws(() => parseRootKey(randomBytes(16).toString('base64')), /32 bytes/);
  assert.throws(() => parseRootKey('not base64 at all!'), /base64/);
});

test('sealed material opens only under its CMK and its own identity', async () => {
  const store = new SqliteStore(path());
  const ring = await Keyring.open(randomBytes(32), store, Date.now());
  const cmk = ring.activeCmk();
  const sealed = ring.seal(cmk.id, Buffer.from('secret material'), 'key:1');
  assert.equal(Buffer.from(sealed).includes(Buffer.from('secret material')), false);
  assert.equal(Buffer.from((await ring.unseal(cmk.id, sealed, 'key:1')).reveal()).toString(), 'secret material');
  await assert.rejects(ring.unseal(cmk.id, sealed, 'key:2'), 'moved to another row');
  const tampered = Buffer.from(sealed);
  tampered[tampered.length - 1]! ^= 1;
  await assert.rejects(ring.unseal(cmk.id, tampered, 'key:1'));
  await store.close();
});

test('rotation keeps old material readable; a wrong root key is refused clearly', async () => {
  const file = path();
  const root = randomBytes(32);
  let store = new SqliteStore(file);
  const ring = await Keyring.open(root, store, Date.now());
  const first = ring.activeCmk();
  const sealed = ring.seal(first.id, Buffer.from('old'), 'key:old');
  const second = await ring.createCmk(null, Date.now());
  assert.notEqual(second.id, first.id);
  assert.equal(ring.activeCmk().id, second.id);
  assert.equal((await store.getCmk(first.id))!.state, 'inactive');
  assert.equal(Buffer.from((await ring.unseal(first.id, sealed, 'key:old')).reveal()).toString(), 'old');
  const org = await ring.createCmk('org1', Date.now());
  assert.equal(ring.activeCmk('org1').id, org.id);
  assert.equal(ring.activeCmk('org2').id, second.id, 'other organisations use the global CMK');
  await store.close();

  store = new SqliteStore(file);
  const reopened = await Keyring.open(root, store, Date.now());
  assert.equal(Buffer.from((await reopened.unseal(first.id, sealed, 'key:old')).reveal()).toString(), 'old');
  await assert.rejects(Keyring.open(randomBytes(32), store, Date.now()), /wrong root key/);
  await store.close();
});

test('Secret redacts itself', () => {
  const s = new Secret(Buffer.from('top secret'));
  assert.equal(JSON.stringify({ s }), '{"s":"[redacted]"}');
  assert.equal(String(s), '[redacted]');
  assert.doesNotMatch(inspect({ s }), /top secret/);
});
