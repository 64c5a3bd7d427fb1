/**
 * Content encryption offline, with keys made here: where the caller's argument is refused
 * (INVALID_ARGUMENT: a key the SDK cannot use, a chunk size it cannot stream) and where the
 * content is (CONTENT_INVALID, with the JOSE error as cause). Tampering with single JWEs and
 * streams, with keys from the real KMS, is in test/client-content.test.ts.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { contentKeyUri, decryptContent, decryptStream, encryptContent, encryptStream, type ContentKey } from '../src/content.js';
import { refusal } from './support.js';

function makeKey(bytes = 32): ContentKey {
  return { uri: `kms://kms.a.example/keys/${randomUUID()}`, jwk: { k: randomBytes(bytes).toString('base64url') } };
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for (const reader = stream.getReader(); ; ) {
    const { done, value } = await reader.read();
    if (done) return new Uint8Array(Buffer.concat(parts));
    parts.push(value);
  }
}

/** The stream of `chunks`, written as they are (the types a caller might pass included). */
function source(...chunks: unknown[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk as Uint8Array);
      controller.close();
    },
  });
}

test('a key made here encrypts and decrypts (the refusals below are not refusals of everything)', async () => {
  const key = makeKey();
  const jwe = await encryptContent(key, 'offline');
  assert.equal(contentKeyUri(jwe), key.uri);
  assert.equal(Buffer.from(await decryptContent(jwe, key)).toString(), 'offline');
  const streamed = await collect(source(new Uint8Array([1, 2, 3])).pipeThrough(encryptStream(key, 2)));
  assert.deepEqual(await collect(source(streamed).pipeThrough(decryptStream(async () => key))), new Uint8Array([1, 2, 3]));
});

test('a key the SDK cannot use is INVALID_ARGUMENT, to encrypt and to decrypt, never "tampered content"', async () => {
  const key = makeKey();
  const jwe = await encryptContent(key, 'secret');
  const unusable: [ContentKey, RegExp][] = [
    [{ uri: key.uri, jwk: { k: randomBytes(16).toString('base64url') } }, /not 256 bits/],
    [{ uri: key.uri, jwk: { k: randomBytes(33).toString('base64url') } }, /not 256 bits/],
    [{ uri: key.uri, jwk: { k: 'not base64url!' } }, /not base64url/],
    [{ uri: key.uri, jwk: {} as { k: string } }, /not base64url/],
    [{ uri: 'https://kms.a.example/keys/1', jwk: key.jwk }, /kms:\/\/ uri/],
    [undefined as unknown as ContentKey, /kms:\/\/ uri/],
  ];
  for (const [bad, reason] of unusable) {
    await refusal(encryptContent(bad, 'x'), 'INVALID_ARGUMENT', reason);
    await refusal(decryptContent(jwe, bad), 'INVALID_ARGUMENT', reason);
    await refusal(() => encryptStream(bad), 'INVALID_ARGUMENT', reason);
  }
  await refusal(encryptContent(key, 42 as unknown as string), 'INVALID_ARGUMENT', /string or a Uint8Array/);
});

test('encryptStream refuses a chunk size it cannot stream, and chunks that are not bytes', async () => {
  const key = makeKey();
  for (const size of [0, -1, 1.5, Number.NaN, 16 * 1024 * 1024]) await refusal(() => encryptStream(key, size), 'INVALID_ARGUMENT', /chunkSize/);
  encryptStream(key, 1024 * 1024); // the largest allowed
  await refusal(collect(source('text').pipeThrough(encryptStream(key))), 'INVALID_ARGUMENT', /Uint8Array chunks/);
  await refusal(collect(source('text').pipeThrough(decryptStream(async () => key))), 'INVALID_ARGUMENT', /Uint8Array chunks/);
});

test('content that is not ours, under another key or tampered is CONTENT_INVALID, with the JOSE error as cause', async () => {
  const key = makeKey();
  const jwe = await encryptContent(key, 'secret');
  const notJwe = await refusal(() => contentKeyUri('garbage'), 'CONTENT_INVALID', /not a compact JWE/);
  assert.ok(notJwe.cause instanceof Error);
  await refusal(decryptContent(jwe, makeKey()), 'CONTENT_INVALID', /another key/);
  // The same name with other material: it does not decrypt.
  const lying = await refusal(decryptContent(jwe, { uri: key.uri, jwk: makeKey().jwk }), 'CONTENT_INVALID', /tampered or wrong key/);
  assert.equal((lying.cause as { code?: string }).code, 'ERR_JWE_DECRYPTION_FAILED');
  await refusal(collect(source(new TextEncoder().encode(`${jwe}\n`)).pipeThrough(decryptStream(async () => key))), 'CONTENT_INVALID', /another stream/);
});
