import assert from 'node:assert/strict';
import { createCipheriv, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { inspect } from 'node:util';
import { KeptMaterial } from '../src/keyring/kept-material.js';
import { Keyring, generateRootKey, localRootKey, parseRootKey, sealedUnder } from '../src/keyring/keyring.js';
import { Secret } from '../src/secret.js';
import { SqliteStore } from '../src/store/sqlite.js';

const local = (bytes: Uint8Array) => localRootKey(bytes, 'a test key');
const path = () => join(mkdtempSync(join(tmpdir(), 'kms-keyring-')), 'kms.db');

test('root key parsing', () => {
  assert.equal(parseRootKey(generateRootKey()).length, 32);
  assert.throws(() => parseRootKey(randomBytes(16).toString('base64')), /32 bytes/);
  assert.throws(() => parseRootKey('not base64 at all!'), /base64/);
});

test('sealed material opens only under its CMK and its own identity', async () => {
  const store = new SqliteStore(path());
  const ring = await Keyring.open(local(randomBytes(32)), store, Date.now());
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
  const ring = await Keyring.open(local(root), store, Date.now());
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
  const reopened = await Keyring.open(local(root), store, Date.now());
  assert.equal(Buffer.from((await reopened.unseal(first.id, sealed, 'key:old')).reveal()).toString(), 'old');
  await assert.rejects(Keyring.open(local(randomBytes(32)), store, Date.now()), /wrong root key/);
  await store.close();
});

test('a CMK row written before root keys became providers still opens under a file root key', async () => {
  // The layout every CMK row on disk has: version 1 | iv | tag | AES-256-GCM body, AAD cmk:<id>.
  const root = randomBytes(32);
  const cmk = randomBytes(32);
  const id = randomUUID();
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', root, iv).setAAD(Buffer.from(`cmk:${id}`));
  const body = Buffer.concat([cipher.update(cmk), cipher.final()]);
  const sealed = new Uint8Array(Buffer.concat([Buffer.from([1]), iv, cipher.getAuthTag(), body]));
  const store = new SqliteStore(path());
  await store.insertCmk({ id, state: 'active', assignedOrgId: null, createdAt: Date.now(), sealed });
  assert.equal(sealedUnder(local(root), { id, sealed }), true);
  assert.equal(sealedUnder(local(randomBytes(32)), { id, sealed }), false);
  assert.equal(sealedUnder(local(root), { id: randomUUID(), sealed }), false, 'bound to its row');
  const ring = await Keyring.open(local(root), store, Date.now());
  assert.equal(ring.activeCmk().id, id, 'the existing CMK is used, no new one made');
  const material = ring.seal(id, Buffer.from('m'), 'key:1');
  assert.equal(Buffer.from((await ring.unseal(id, material, 'key:1')).reveal()).toString(), 'm');
  await store.close();
});

test('unsealKept: the same sealed bytes give the same material, each caller its own copy; other bytes, another CMK or aad are unsealed for themselves', async () => {
  const store = new SqliteStore(path());
  const ring = await Keyring.open(local(randomBytes(32)), store, Date.now());
  const first = ring.activeCmk();
  const sealed = ring.seal(first.id, Buffer.from('material one'), 'key:1');
  const a = await ring.unsealKept(first.id, sealed, 'key:1');
  const b = await ring.unsealKept(first.id, sealed, 'key:1');
  assert.equal(Buffer.from(b.reveal()).toString(), 'material one');
  assert.notEqual(a.reveal(), b.reveal(), 'not one shared buffer');
  a.wipe(); // a caller wiping its copy does not touch what the next one gets
  assert.equal(Buffer.from((await ring.unsealKept(first.id, sealed, 'key:1')).reveal()).toString(), 'material one');
  // The row re-sealed (new bytes, or under a new CMK): what it holds now, never what was kept.
  const resealed = ring.seal(first.id, Buffer.from('material two'), 'key:1');
  assert.equal(Buffer.from((await ring.unsealKept(first.id, resealed, 'key:1')).reveal()).toString(), 'material two');
  const second = await ring.createCmk(null, Date.now());
  const underSecond = ring.seal(second.id, Buffer.from('material three'), 'key:1');
  assert.equal(Buffer.from((await ring.unsealKept(second.id, underSecond, 'key:1')).reveal()).toString(), 'material three');
  // Still bound to its row and authenticated: moved or tampered bytes are refused as by unseal.
  await assert.rejects(ring.unsealKept(second.id, underSecond, 'key:2'));
  const tampered = Buffer.from(underSecond);
  tampered[tampered.length - 1]! ^= 1;
  await assert.rejects(ring.unsealKept(second.id, tampered, 'key:1'));
  await store.close();
});

test('KeptMaterial: bounded, oldest dropped first, aged out, and wiped when dropped', () => {
  const clock = { t: 0 };
  const kept = new KeptMaterial(2, 1000, () => clock.t);
  const sealed = (n: number) => new Uint8Array([n, n, n]);
  const held: Uint8Array[] = [];
  for (const n of [1, 2, 3]) {
    const bytes = n === 3 ? Buffer.from([n]) : new Uint8Array([n]); // a Buffer too: its slice() is a view
    held.push(bytes);
    kept.set(`key:${n}`, 'cmk', sealed(n), bytes);
  }
  assert.equal(kept.size, 2);
  assert.equal(kept.get('key:1', 'cmk', sealed(1)), undefined, 'the oldest went first');
  assert.deepEqual(kept.get('key:3', 'cmk', sealed(3)), new Uint8Array([3]));
  assert.equal(kept.get('key:3', 'other', sealed(3)), undefined, 'another CMK');
  assert.equal(kept.get('key:3', 'cmk', sealed(4)), undefined, 'other bytes');
  held[2]!.fill(9); // the caller's bytes were copied when kept
  assert.deepEqual(kept.get('key:3', 'cmk', sealed(3)), new Uint8Array([3]));
  const copy = kept.get('key:3', 'cmk', sealed(3))!;
  copy.fill(7); // and copied when given out
  assert.deepEqual(kept.get('key:3', 'cmk', sealed(3)), new Uint8Array([3]));
  clock.t = 999;
  assert.ok(kept.get('key:2', 'cmk', sealed(2)));
  clock.t = 1000;
  assert.equal(kept.get('key:2', 'cmk', sealed(2)), undefined, 'aged out');
  assert.equal(kept.size, 1);
  kept.clear();
  assert.equal(kept.size, 0);
});

test('Secret redacts itself', () => {
  const s = new Secret(Buffer.from('top secret'));
  assert.equal(JSON.stringify({ s }), '{"s":"[redacted]"}');
  assert.equal(String(s), '[redacted]');
  assert.doesNotMatch(inspect({ s }), /top secret/);
});
