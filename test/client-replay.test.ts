/**
 * The transport is untrusted: an answer that is not the answer to this request (an old one
 * replayed, or another request's) is refused by the SDK, even though it decrypts and verifies.
 */
import assert from 'node:assert/strict';
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
