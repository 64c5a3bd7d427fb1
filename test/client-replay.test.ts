/**
 * The transport is untrusted: an answer that is not the answer to this request (an old one
 * replayed, or another request's) is refused by the SDK, even though it decrypts and verifies; an
 * answer changed on the way does not decrypt or verify, and is refused too.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { KmsClient, KmsError, type FetchLike } from '@openkms/client';
import { startDevKms, type DevKms } from '@openkms/server/testing';

let kms: DevKms;
before(async () => {
  kms = await startDevKms();
});
after(() => kms.close());

test('a replayed answer is refused (502), the genuine one accepted', async () => {
  let recorded: string | undefined;
  let replay = false;
  const fetchLike: FetchLike = async (input, init) => {
    const res = await fetch(input, init as RequestInit);
    const text = await res.text();
    if (init.method === 'POST' && !replay) recorded = text;
    const body = replay && init.method === 'POST' && recorded ? recorded : text;
    return { status: res.status, json: async () => JSON.parse(body) as unknown, text: async () => body };
  };
  const alice = new KmsClient({ url: kms.url, token: () => kms.token('alice@a.example'), trustAnchors: [readFileSync(join(kms.dir, 'ca.pem'), 'utf8')], fetch: fetchLike });
  try {
    await alice.ping(); // the handshake, then the ping: both genuine
    await alice.ping();
    replay = true; // from now on the transport answers with the last ping's answer
    await assert.rejects(alice.ping(), (err: unknown) => err instanceof KmsError && err.status === 502 && err.code === 'ANSWER_INVALID' && /another request/.test(err.reason));
    replay = false;
    await alice.ping();
  } finally {
    await alice.close();
  }
});

test('an answer changed in transit is ANSWER_INVALID (502), with the JOSE failure as cause; the channel stays usable', async () => {
  /** Applied to each channel answer (a compact JWE) of the POSTs, while set. */
  let change: ((compact: string) => string) | undefined;
  const fetchLike: FetchLike = async (input, init) => {
    const res = await fetch(input, init as RequestInit);
    let body = await res.text();
    if (change && init.method === 'POST') {
      const doc = JSON.parse(body) as { kmsMessages: string[] };
      body = JSON.stringify({ kmsMessages: doc.kmsMessages.map((m) => (m.split('.').length === 5 ? change!(m) : m)) });
    }
    return { status: res.status, json: async () => JSON.parse(body) as unknown, text: async () => body };
  };
  const segment = (index: number, edit: (segment: string) => string) => (compact: string) => compact.split('.').map((s, i) => (i === index ? edit(s) : s)).join('.');
  const flipBit = (s: string) => {
    const bytes = Buffer.from(s, 'base64url');
    bytes[bytes.length - 1]! ^= 0x01;
    return bytes.toString('base64url');
  };
  const header = (edit: (h: Record<string, unknown>) => Record<string, unknown>) => segment(0, (h) => Buffer.from(JSON.stringify(edit(JSON.parse(Buffer.from(h, 'base64url').toString()) as Record<string, unknown>))).toString('base64url'));
  const alice = new KmsClient({ url: kms.url, token: () => kms.token('alice@a.example'), trustAnchors: [readFileSync(join(kms.dir, 'ca.pem'), 'utf8')], fetch: fetchLike });
  try {
    await alice.ping(); // the handshake (a JWS, left alone) and a first ping
    const refusedAs = async (label: string, reason: RegExp, causeCode?: string) => {
      const err = await alice.ping().then(() => assert.fail(`${label}: accepted`), (e: unknown) => e);
      assert.ok(err instanceof KmsError, label);
      assert.equal(err.code, 'ANSWER_INVALID', label);
      assert.equal(err.status, 502, label);
      assert.match(err.reason, reason, label);
      assert.equal((err.cause as { code?: unknown } | undefined)?.code, causeCode, label);
    };
    const undecryptable = /^KMS answer does not decrypt under its channel key: /;
    for (const [label, index] of [['tag', 4], ['ciphertext', 3], ['iv', 2]] as const) {
      change = segment(index, flipBit);
      await refusedAs(label, undecryptable, 'ERR_JWE_DECRYPTION_FAILED');
    }
    // The same members in another order: the header the KMS authenticated is not this one.
    change = header(({ alg, enc, kid }) => ({ kid, enc, alg }));
    await refusedAs('header reordered', undecryptable, 'ERR_JWE_DECRYPTION_FAILED');
    change = header((h) => ({ ...h, kid: `kms://kms.a.example/ecdhe/${randomUUID()}` }));
    await refusedAs('another kid', /^KMS answer under an unknown channel$/);
    change = undefined;
    await alice.ping();
    assert.equal(alice.handshakes, 1, 'no new channel was needed');
  } finally {
    await alice.close();
  }
});

test('a handshake answer whose signature was changed in transit is ANSWER_INVALID (502), with the JOSE failure as cause', async () => {
  let tamper = true;
  const fetchLike: FetchLike = async (input, init) => {
    const res = await fetch(input, init as RequestInit);
    let body = await res.text();
    if (tamper && init.method === 'POST') {
      // The handshake's answer is the batch's one compact JWS: flip the last bit of its signature.
      const doc = JSON.parse(body) as { kmsMessages: string[] };
      body = JSON.stringify({
        kmsMessages: doc.kmsMessages.map((m) => {
          const parts = m.split('.');
          if (parts.length !== 3) return m;
          const signature = Buffer.from(parts[2]!, 'base64url');
          signature[signature.length - 1]! ^= 0x01;
          return `${parts[0]}.${parts[1]}.${signature.toString('base64url')}`;
        }),
      });
    }
    return { status: res.status, json: async () => JSON.parse(body) as unknown, text: async () => body };
  };
  const alice = new KmsClient({ url: kms.url, token: () => kms.token('alice@a.example'), trustAnchors: [readFileSync(join(kms.dir, 'ca.pem'), 'utf8')], fetch: fetchLike });
  try {
    const err = await alice.ping().then(() => assert.fail('accepted'), (e: unknown) => e);
    assert.ok(err instanceof KmsError);
    assert.equal(err.code, 'ANSWER_INVALID');
    assert.equal(err.status, 502);
    assert.match(err.reason, /^KMS answer does not verify under its static key: /);
    assert.equal((err.cause as { code?: unknown } | undefined)?.code, 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED');
    tamper = false;
    await alice.ping(); // the next handshake, untouched, makes the channel
  } finally {
    await alice.close();
  }
});
