/**
 * The administrative API (src/operations/admin.ts): CMK listing, rotation and state, for kmsAdmin
 * and orgAgent. Its own KMS, since it rotates the global CMK.
 *
 * End-to-end on a real KMS (real SQLite file, real keys, a real socket) driven by TestClient over
 * HTTP batch; time from manual clocks, never wall-clock timings.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { KeyRep } from '@openkms/protocol';
import type { TestClient } from '../support/client.js';
import { manualClock, startDevKms, type DevKms } from '../../src/testing/harness.js';
import {
  bind,
  connect,
  count,
  expectOk,
  expectStatus,
  getKey,
  idOf,
  newKeys,
  newResource,
  ping,
  resourceKeys,
  send,
  unknownUri,
  uriRe,
} from '../support/operations.js';

describe('admin: CMKs (Administrative API)', () => {
  const aclock = manualClock();
  let admin: DevKms;
  let root: TestClient;
  let agent: TestClient;
  let user: TestClient;

  interface CmkRep {
    uri: string;
    state: string;
    assignedOrgId: string | null;
  }
  const listAll = async () => (await expectOk(root, { method: 'retrieve', uri: '/cmk' })).keys as CmkRep[];
  const globalActive = async () => (await listAll()).filter((c) => c.assignedOrgId === null && c.state === 'active');

  before(async () => {
    admin = await startDevKms({ now: aclock.now });
    [root, agent, user] = await Promise.all([
      connect(admin, 'root@a.example', { roles: ['kmsAdmin'] }),
      connect(admin, 'agent@a.example', { roles: ['orgAgent'] }),
      connect(admin, 'alice@a.example'),
    ]);
  });

  after(async () => {
    await admin?.close();
  });

  test('list /cmk by kmsAdmin → 200: one global active CMK at start', async () => {
    const keys = await listAll();
    assert.equal(keys.length, 1);
    assert.match(keys[0]!.uri, uriRe('cmk'));
    assert.equal(keys[0]!.state, 'active');
    assert.equal(keys[0]!.assignedOrgId, null);
  });

  test('a plain user may not list, create or update CMKs → 403', async () => {
    expectStatus(await send(user, { method: 'retrieve', uri: '/cmk' }), 403);
    expectStatus(await send(user, { method: 'create', uri: '/cmk' }), 403);
    expectStatus(await send(user, { method: 'create', uri: '/cmk', assignedOrgId: 'a.example' }), 403);
    const [global] = await listAll();
    expectStatus(await send(user, { method: 'update', uri: global!.uri, state: 'active' }), 403);
  });

  test('rotation by kmsAdmin → 201; the previous CMK turns inactive; old keys stay readable, new keys work and use the new CMK', async () => {
    const [oldCmk] = await globalActive();
    const [unbound, toBind] = await newKeys(user, 2);
    const resource = await newResource(user, { keyUris: [toBind!.uri] });
    aclock.advance(1);

    const r = await expectOk(root, { method: 'create', uri: '/cmk' }, 201);
    const rep = (r.key ?? r) as CmkRep;
    assert.match(rep.uri, uriRe('cmk'));
    assert.equal(rep.state, 'active');
    assert.equal(rep.assignedOrgId, null);
    assert.notEqual(rep.uri, oldCmk!.uri);
    const all = await listAll();
    assert.equal(all.find((c) => c.uri === oldCmk!.uri)!.state, 'inactive');
    assert.deepEqual((await globalActive()).map((c) => c.uri), [rep.uri]);

    assert.equal((await expectOk(user, { method: 'retrieve', uri: unbound!.uri })).key.jwk.k, unbound!.jwk.k);
    assert.equal((await expectOk(user, { method: 'retrieve', uri: toBind!.uri })).key.jwk.k, toBind!.jwk.k);
    const [fresh] = await newKeys(user);
    expectStatus(await bind(user, fresh!.uri, resource.uri), 200);
    const listed = (await resourceKeys(user, resource.uri)).keys as KeyRep[];
    assert.deepEqual(listed.map((k) => k.jwk.k).sort(), [toBind!.jwk.k, fresh!.jwk.k].sort());
    assert.equal(count(admin, 'SELECT count(*) AS n FROM keys WHERE id = ? AND cmk_id = ?', idOf(fresh!.uri), idOf(rep.uri)), 1, 'sealed under the new CMK');
    assert.equal(count(admin, 'SELECT count(*) AS n FROM keys WHERE id = ? AND cmk_id = ?', idOf(unbound!.uri), idOf(oldCmk!.uri)), 1);
    expectStatus(await send(user, ping), 200, 'channels made before the rotation keep working');
    const c = await connect(admin, 'alice@a.example', { clientId: user.clientId });
    expectStatus(await getKey(c, unbound!.uri), 200, 'and new channels work');
  });

  test('kmsAdmin may create a CMK for any organisation → 201', async () => {
    const r = await expectOk(root, { method: 'create', uri: '/cmk', assignedOrgId: 'b.example' }, 201);
    assert.equal((r.key ?? r).assignedOrgId, 'b.example');
  });

  test('orgAgent: own organisation → 201 and used for its users\' new keys; another organisation or the global CMK → 403', async () => {
    const r = await expectOk(agent, { method: 'create', uri: '/cmk', assignedOrgId: 'a.example' }, 201);
    const orgCmk = (r.key ?? r) as CmkRep;
    assert.equal(orgCmk.assignedOrgId, 'a.example');
    assert.equal(orgCmk.state, 'active');
    expectStatus(await send(agent, { method: 'create', uri: '/cmk', assignedOrgId: 'b.example' }), 403);
    expectStatus(await send(agent, { method: 'create', uri: '/cmk' }), 403);
    const [key] = await newKeys(user);
    assert.equal(count(admin, 'SELECT count(*) AS n FROM keys WHERE id = ? AND cmk_id = ?', idOf(key!.uri), idOf(orgCmk.uri)), 1);
    expectStatus(await getKey(user, key!.uri), 200);
  });

  test('a second CMK for the organisation → 201; the previous one of that organisation turns inactive, the global one stays active', async () => {
    const before = await listAll();
    const previous = before.filter((c) => c.assignedOrgId === 'a.example' && c.state === 'active');
    assert.equal(previous.length, 1);
    const [globalBefore] = await globalActive();
    const [older] = await newKeys(user);
    const r = await expectOk(agent, { method: 'create', uri: '/cmk', assignedOrgId: 'a.example' }, 201);
    const next = (r.key ?? r) as CmkRep;
    const after = await listAll();
    assert.equal(after.find((c) => c.uri === previous[0]!.uri)!.state, 'inactive');
    assert.deepEqual(after.filter((c) => c.assignedOrgId === 'a.example' && c.state === 'active').map((c) => c.uri), [next.uri]);
    assert.deepEqual((await globalActive()).map((c) => c.uri), [globalBefore!.uri]);
    assert.equal((await getKey(user, older!.uri)).key.jwk.k, older!.jwk.k);
  });

  test('orgAgent lists only its organisation\'s CMKs; kmsAdmin lists all, filtered by assignedOrgId on request', async () => {
    const mine = (await expectOk(agent, { method: 'retrieve', uri: '/cmk' })).keys as CmkRep[];
    assert.ok(mine.length >= 1);
    assert.ok(mine.every((c) => c.assignedOrgId === 'a.example'));
    const all = await listAll();
    assert.ok(all.some((c) => c.assignedOrgId === null));
    assert.ok(all.some((c) => c.assignedOrgId === 'b.example'));
    const b = (await expectOk(root, { method: 'retrieve', uri: '/cmk', assignedOrgId: 'b.example' })).keys as CmkRep[];
    assert.equal(b.length, 1);
    assert.equal(b[0]!.assignedOrgId, 'b.example');
    const one = (await expectOk(root, { method: 'retrieve', uri: b[0]!.uri })).keys as CmkRep[];
    assert.deepEqual(one.map((c) => c.uri), [b[0]!.uri]);
  });

  test('update state: orgAgent on its own CMK → 200 (inactive, then active again); on others → 403', async () => {
    const [orgCmk] = ((await listAll()).filter((c) => c.assignedOrgId === 'a.example' && c.state === 'active')) as CmkRep[];
    const [keyBefore] = await newKeys(user);
    const off = await expectOk(agent, { method: 'update', uri: orgCmk!.uri, state: 'inactive' });
    assert.equal((off.key ?? off).state, 'inactive');
    expectStatus(await getKey(user, keyBefore!.uri), 200, 'an inactive CMK still unseals');
    const [keyAfter] = await newKeys(user);
    assert.equal(count(admin, 'SELECT count(*) AS n FROM keys WHERE id = ? AND cmk_id = ?', idOf(keyAfter!.uri), idOf(orgCmk!.uri)), 0, 'an inactive CMK seals nothing new');
    const on = await expectOk(agent, { method: 'update', uri: orgCmk!.uri, state: 'active' });
    assert.equal((on.key ?? on).state, 'active');
    const [global] = await globalActive();
    expectStatus(await send(agent, { method: 'update', uri: global!.uri, state: 'active' }), 403);
    const [bCmk] = (await listAll()).filter((c) => c.assignedOrgId === 'b.example');
    expectStatus(await send(agent, { method: 'update', uri: bCmk!.uri, state: 'inactive' }), 403);
  });

  test('the global active CMK cannot be set inactive → 400; unknown CMK → 404; bad state → 400', async () => {
    const [global] = await globalActive();
    const r = await send(root, { method: 'update', uri: global!.uri, state: 'inactive' });
    expectStatus(r, 400);
    assert.match(r.reason!, /state/);
    assert.deepEqual((await globalActive()).map((c) => c.uri), [global!.uri]);
    expectStatus(await send(root, { method: 'update', uri: unknownUri('cmk'), state: 'active' }), 404);
    const bad = await send(root, { method: 'update', uri: global!.uri, state: 'destroyed-ish' });
    expectStatus(bad, 400);
    assert.match(bad.reason!, /state/);
    expectStatus(await send(user, { method: 'create', uri: '/keys', count: 1 }), 201, 'new keys still work');
  });
});
