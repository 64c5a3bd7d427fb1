/**
 * What the asking KMS accepts from a peer's federated answer: only the KRO it asked about, only
 * that KRO's keys, under the peer's own authority, with the peer's signature.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { KmsError } from '@openkms/protocol';
import { checkAnswer } from '../../src/federation/copies.js';
import type { Peer } from '../../src/federation/peers.js';

const peer = { authority: 'kms.a.example', domains: ['a.example'], endpoint: 'http://127.0.0.1:1', trustAnchors: [] } as Peer;
const resourceUri = `kms://kms.a.example/resources/${randomUUID()}`;
const key = (over: Record<string, unknown> = {}) => ({
  uri: `kms://kms.a.example/keys/${randomUUID()}`,
  jwk: { kty: 'oct', kid: 'x', k: randomBytes(32).toString('base64url') },
  createDate: '2026-11-28T21:00:00.000Z',
  expirationDate: '2027-11-28T21:00:00.000Z',
  resourceUri,
  bindDate: '2026-11-28T21:00:01.000Z',
  ...over,
});
const answer = (resource: Record<string, unknown>, proof: string | undefined = 'signed') => ({ payload: { status: 200, resource }, signed: false, proof });
const good = () => ({ uri: resourceUri, keys: [key()], authorizations: [{ uri: `kms://kms.a.example/authorizations/${randomUUID()}`, authId: 'bob@b.example', createDate: '2026-11-28T21:00:00.000Z', resourceUri }] });
const refused = (fn: () => unknown, reason: RegExp) => assert.throws(fn, (e: unknown) => e instanceof KmsError && e.status === 502 && reason.test(e.reason));

test('a well-formed answer about the KRO asked for is accepted', () => {
  const r = good();
  assert.equal(checkAnswer(answer(r), peer, `${resourceUri}/keys`).resource.keys.length, 1);
  assert.equal(checkAnswer(answer(r), peer, r.keys[0]!.uri).resource.uri, resourceUri);
});

test('a key of another resource, another authority, another KRO, or no signature is refused (502)', () => {
  const otherResource = `kms://kms.a.example/resources/${randomUUID()}`;
  refused(() => checkAnswer(answer({ ...good(), keys: [key({ resourceUri: otherResource })] }), peer, `${resourceUri}/keys`), /another resource/);
  refused(() => checkAnswer(answer({ ...good(), keys: [key({ uri: `kms://kms.c.example/keys/${randomUUID()}` })] }), peer, `${resourceUri}/keys`), /another resource/);
  refused(() => checkAnswer(answer({ ...good(), uri: `kms://kms.c.example/resources/${randomUUID()}` }), peer, `${resourceUri}/keys`), /no resource of its own/);
  refused(() => checkAnswer(answer({ ...good(), uri: otherResource, keys: [] , authorizations: [] }), peer, `${resourceUri}/keys`), /another resource than/);
  refused(() => checkAnswer(answer(good(), ''), peer, `${resourceUri}/keys`), /signature/);
  refused(() => checkAnswer(answer({ ...good(), keys: [key({ jwk: { kty: 'oct', kid: 'x', k: 'c2hvcnQ' } })] }), peer, `${resourceUri}/keys`), /malformed key/);
  refused(() => checkAnswer(answer({ ...good(), authorizations: [{ authId: 'bob@b.example', resourceUri: otherResource }] }), peer, `${resourceUri}/keys`), /malformed authorization/);
});
