/**
 * Legal discovery over federated copies (PROTOCOL.md §6 "Legal discovery", §4 "Compliance"): at
 * B, a compliance officer of B's organisation reading as a B user is served, through B, what B's
 * archive copy shows that user was given — also after A revoked the user (the copy marked stale)
 * and while A is unreachable — and nothing the copy does not show. The user alone never gets a
 * grant from a stale copy.
 *
 * Between REAL KMSs: each is the real server on loopback (real sockets, real SQLite files, real keys
 * and certificates), and every user is the real SDK.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { KmsClient } from '@openkms/client';
import { manualClock } from '@openkms/server/testing';
import { clients, closeClients, exchanges, invalidationsAt, statusOf, TEST, useFederatedPair, userOn, waitFor, type FederatedPair } from '../support/federation.js';
import { oneClearLine, runKms } from '../support/cli.js';

after(closeClients);

/** How many versions of KRO `uri` B's archive holds. */
function archivedVersions(dbPath: string, uri: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT COUNT(*) AS n FROM federated_archive WHERE resource_uri = ?').get(uri) as { n: number }).n;
  } finally {
    db.close();
  }
}

/** B's audit records of `principal` with their onBehalfOf, read straight from its database. */
function auditedAs(dbPath: string, principal: string): { on_behalf_of: string | null; uri: string; status: number; peer: string | null }[] {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT on_behalf_of, uri, status, peer FROM audit WHERE principal = ? ORDER BY seq').all(principal) as never;
  } finally {
    db.close();
  }
}

describe('legal discovery: a compliance officer of B reads a B user’s federated keys from B’s copy', () => {
  const clock = manualClock();
  let pair: FederatedPair;
  const closers = useFederatedPair(clock, (p) => (pair = p));

  /** B's compliance officer (orgAgent of b.example) reading as `user`. */
  function officerFor(user: string): KmsClient {
    const client = new KmsClient({
      url: pair.B.url,
      authority: pair.B.config.authority,
      trustAnchors: [pair.caB],
      token: () => pair.B.token('officer@b.example', { roles: ['orgAgent'] }),
      onBehalfOf: user,
      debounceMs: 1,
      now: clock.now,
    });
    clients.push(client);
    return client;
  }

  test('fresh, revoked (stale copy, then replaced by a newer one without Bob), then A unreachable: the officer is served from the archive; Bob alone is not', TEST, async () => {
    const { A, B, alice, bob, R, keys } = pair;
    const asBob = officerFor('bob@b.example');
    // Bob reads the KRO through B: B keeps a copy.
    assert.deepEqual((await bob.retrieveResourceKeys(R)).map((k) => k.uri).sort(), keys.map((k) => k.uri).sort());
    // The officer reads as Bob from the fresh copy.
    assert.equal((await asBob.retrieveKey(keys[0]!.uri)).jwk.k, keys[0]!.jwk.k);

    // Carol of B is authorized too, and reads: the copy now shows both.
    let received = invalidationsAt(B);
    await alice.authorize(R, ['carol@b.example']);
    await waitFor(() => invalidationsAt(B) > received, 'the invalidation after Carol was added');
    const carol = userOn(B, 'carol@b.example', pair.caB, clock);
    await carol.retrieveResourceKeys(R);
    // Alice revokes Bob; A's invalidation marks B's copy stale.
    received = invalidationsAt(B);
    await alice.deauthorize(R, 'bob@b.example');
    await waitFor(() => invalidationsAt(B) > received, 'the invalidation after the revocation');
    assert.equal(await statusOf(bob.retrieveKey(keys[0]!.uri)), 403, 'Bob alone: A refuses him now');
    // Carol reads again: B's copy is replaced by A's new answer, which no longer shows Bob. The
    // version that did stays in B's archive.
    await carol.retrieveResourceKeys(R);
    assert.ok(archivedVersions(B.dbPath, R) >= 3, 'every version B received is archived');
    const asked = exchanges(B, 'officer@b.example').length;
    // The officer still gets what the copy shows Bob was given, without asking A.
    assert.equal((await asBob.retrieveKey(keys[1]!.uri)).jwk.k, keys[1]!.jwk.k);
    const archived = await asBob.retrieveResourceKeys(R);
    assert.deepEqual(archived.map((k) => [k.uri, k.jwk.k]).sort(), keys.map((k) => [k.uri, k.jwk.k]).sort());
    assert.equal(exchanges(B, 'officer@b.example').length, asked, 'served from the archive copy: A was not asked');

    // A unreachable: the officer is still served; Bob gets A's failure, never the copy.
    await A.close();
    closers[0] = async () => undefined;
    assert.equal((await asBob.retrieveKey(keys[2]!.uri)).jwk.k, keys[2]!.jwk.k);
    assert.equal(await statusOf(bob.retrieveKey(keys[2]!.uri)), 502, 'Bob alone with A down');

    // Audited at B with both identities.
    const rows = auditedAs(B.dbPath, 'officer@b.example').filter((r) => r.uri.startsWith(`kms://${A.config.authority}/`));
    assert.ok(rows.length >= 4, JSON.stringify(rows));
    assert.ok(rows.every((r) => r.on_behalf_of === 'bob@b.example'), JSON.stringify(rows));
  });

  test('only what the copy shows for that user: another B user the copy never authorized gets nothing from it', TEST, async () => {
    const { keys } = pair;
    const asDave = officerFor('dave@b.example');
    // In no version: nothing from the archive (the fresh copy Carol's read made does not show Dave,
    // and B asked A about this KRO less than a second ago: 403 without asking again).
    assert.equal(await statusOf(asDave.retrieveKey(keys[0]!.uri)), 403);
    // Read only, even on a copy that authorizes the user.
    const asBob = officerFor('bob@b.example');
    assert.equal(await statusOf(asBob.createKeys(1)), 403);
    await asBob.ping(); // the channel's upkeep is the officer's own: the SDK sends it without onBehalfOf
    assert.equal(await statusOf(asBob.authorize(pair.R, ['mallory@b.example'])), 403);
  });

  test('kms discovery export: every key B holds for Bob, each sealed to the recipient, the peer’s signed answers as proof; verify checks them', TEST, async (t) => {
    const { B, keys } = pair;
    const bob = pair.bob;
    // Bob's own key at B, and a KRO of B's that Carol made for him.
    const [own] = await bob.createKeys(1);
    const carol = userOn(B, 'carol@b.example', pair.caB, clock);
    const [carols] = await carol.createKeys(1);
    await carol.createResource({ authIds: ['bob@b.example'], keyUris: [carols!.uri] });
    const dir = mkdtempSync(join(tmpdir(), 'kms-discovery-'));
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    writeFileSync(join(dir, 'recipient.jwk'), JSON.stringify(publicKey.export({ format: 'jwk' })));
    writeFileSync(join(dir, 'recipient.private.jwk'), JSON.stringify(privateKey.export({ format: 'jwk' })));
    writeFileSync(join(dir, 'a-ca.pem'), pair.caA);
    const out = join(dir, 'bob.discovery.json');
    const config = join(B.dir, 'kms.json');
    const exported = runKms(['discovery', 'export', '--config', config, '--db', `sqlite:${B.dbPath}`, '--user', 'bob@b.example', '--to-jwk', join(dir, 'recipient.jwk'), '--out', out]);
    assert.equal(exported.code, 0, exported.stderr);
    t.diagnostic(exported.stdout.trim());
    assert.equal(statSync(out).mode & 0o777, 0o600, 'owner-only');
    const text = readFileSync(out, 'utf8');
    const doc = JSON.parse(text) as { user: string; keys: { uri: string; via: string; authority: string; jwe: string }[]; proofs: { authority: string; signer: unknown }[] };
    assert.equal(doc.user, 'bob@b.example');
    const via = (v: string) => doc.keys.filter((k) => k.via === v).map((k) => k.uri).sort();
    assert.deepEqual(via('created'), [own!.uri]);
    assert.deepEqual(via('authorized'), [carols!.uri]);
    assert.deepEqual(via('federated'), keys.map((k) => k.uri).sort(), 'from the archive, although A revoked Bob and is down');
    assert.ok(doc.proofs.length >= 1 && doc.proofs.every((p) => p.authority === pair.A.config.authority && p.signer !== null));
    for (const k of [...keys, own!, carols!]) assert.ok(!text.includes(k.jwk.k), `no key material in clear (${k.uri})`);
    // The export itself is in B's audit log, for Bob.
    assert.ok(auditedAs(B.dbPath, `operator:${userInfo().username}`).some((r) => r.on_behalf_of === 'bob@b.example' && r.status === 200));

    writeFileSync(join(dir, 'b-ca.pem'), pair.caB);
    const anchors = ['--trust-anchors', join(dir, 'a-ca.pem'), '--trust-anchors', join(dir, 'b-ca.pem')];
    const verify = (file: string, ...more: string[]) => runKms(['discovery', 'verify', file, '--key', join(dir, 'recipient.private.jwk'), ...more]);
    const verified = verify(out, ...anchors);
    assert.equal(verified.code, 0, verified.stderr);
    t.diagnostic(verified.stdout.trim());
    assert.match(verified.stdout, /3 federated keys proven by \d+ verified peer answers/);
    assert.match(verified.stdout, /2 keys of kms:\/\/kms\.b\.example itself/);

    // Tampering is caught: a federated key swapped for another (the peer's signature), a key
    // removed or relabelled (B's signature over the file); so are certificates outside the anchors.
    const tampered = (name: string, edit: (d: typeof doc) => void) => {
      const copy = JSON.parse(text) as typeof doc;
      edit(copy);
      writeFileSync(join(dir, name), JSON.stringify(copy));
      const r = verify(join(dir, name), ...anchors);
      assert.equal(r.code, 1, `${name}: ${r.stdout}`);
      return r.stderr;
    };
    assert.match(tampered('swapped.json', (d) => {
      const fed = d.keys.filter((k) => k.via === 'federated');
      [fed[0]!.jwe, fed[1]!.jwe] = [fed[1]!.jwe, fed[0]!.jwe];
    }), /not the key kms:\/\/kms\.a\.example's signed answers released/);
    assert.match(tampered('removed.json', (d) => void d.keys.pop()), /the file is not what it signed/);
    assert.match(tampered('relabelled.json', (d) => void (d.keys.find((k) => k.via === 'federated')!.via = 'created')), /the file is not what it signed[\s\S]*not a key of kms:\/\/kms\.b\.example, yet not marked federated/);
    const onlyB = verify(out, '--trust-anchors', join(dir, 'b-ca.pem'));
    assert.equal(onlyB.code, 1);
    assert.match(onlyB.stderr, /certificate of kms:\/\/kms\.a\.example is refused/);
    const none = verify(out);
    assert.equal(none.code, 1, 'without trust anchors nothing is proven');
    assert.match(none.stderr, /no trust anchors for kms:\/\/kms\.b\.example/);

    // --since: only what came since; an EC recipient (ECDH-ES) works the same.
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(join(dir, 'ec.jwk'), JSON.stringify(ec.publicKey.export({ format: 'jwk' })));
    writeFileSync(join(dir, 'ec.private.jwk'), JSON.stringify(ec.privateKey.export({ format: 'jwk' })));
    const later = runKms(['discovery', 'export', '--config', config, '--db', `sqlite:${B.dbPath}`, '--user', 'bob@b.example', '--since', new Date(clock.now() + 3_600_000).toISOString(), '--to-jwk', join(dir, 'ec.jwk'), '--out', join(dir, 'later.json')]);
    assert.equal(later.code, 0, later.stderr);
    assert.deepEqual((JSON.parse(readFileSync(join(dir, 'later.json'), 'utf8')) as typeof doc).keys, []);
    const ecOut = join(dir, 'ec.json');
    assert.equal(runKms(['discovery', 'export', '--config', config, '--db', `sqlite:${B.dbPath}`, '--user', 'bob@b.example', '--to-jwk', join(dir, 'ec.jwk'), '--out', ecOut]).code, 0);
    const ecVerified = runKms(['discovery', 'verify', ecOut, '--key', join(dir, 'ec.private.jwk'), ...anchors]);
    assert.equal(ecVerified.code, 0, ecVerified.stderr);
    assert.match(ecVerified.stdout, /3 federated keys proven/);

    // Refused in one line: a private key as recipient, a missing database, no --key.
    for (const [args, why] of [
      [['discovery', 'export', '--config', config, '--db', `sqlite:${B.dbPath}`, '--user', 'bob@b.example', '--to-jwk', join(dir, 'recipient.private.jwk'), '--out', join(dir, 'x.json')], /public key only/],
      [['discovery', 'export', '--config', config, '--db', `sqlite:${join(dir, 'none.db')}`, '--user', 'bob@b.example', '--to-jwk', join(dir, 'recipient.jwk'), '--out', join(dir, 'x.json')], /no database at/],
      [['discovery', 'verify', out, ...anchors], /needs --key FILE/],
    ] as const) {
      const r = runKms([...args]);
      assert.notEqual(r.code, 0, args.join(' '));
      oneClearLine(r.stderr);
      assert.match(r.stderr, why);
    }
  });

  test('without the orgAgent role (kmsAdmin is not enough), onBehalfOf gets nothing', TEST, async () => {
    const { B, caB, keys } = pair;
    for (const [who, roles] of [['officer@b.example', []], ['officer@b.example', ['kmsAdmin']]] as const) {
      const client = new KmsClient({ url: B.url, authority: B.config.authority, trustAnchors: [caB], token: () => B.token(who, { roles: [...roles] }), onBehalfOf: 'bob@b.example', debounceMs: 1, now: clock.now });
      clients.push(client);
      assert.equal(await statusOf(client.retrieveKey(keys[0]!.uri)), 403, `roles ${roles.join(',') || 'none'}`);
    }
  });
});
