/**
 * Content encryption helpers of the client SDK, with keys from the REAL KMS: single JWEs
 * (encryptContent / decryptContent / contentKeyUri) and chunked streams (encryptStream /
 * decryptStream), including every way a stream can be tampered with.
 */
import assert from 'node:assert/strict';
import { decodeProtectedHeader } from 'jose';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  KmsClient,
  KmsError,
  contentKeyUri,
  decryptContent,
  decryptContentText,
  decryptStream,
  encryptContent,
  encryptStream,
  type ErrorCode,
  type KeyRep,
} from '@openkms/client';
import { startDevKms, type DevKms } from '@openkms/server/testing';

const TEST = { timeout: 30_000 };
const enc = new TextEncoder();

function b64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** A readable stream of `bytes`, cut into pieces of the given sizes (cycled). */
function source(bytes: Uint8Array, pieces: number[] = [bytes.length || 1]): ReadableStream<Uint8Array> {
  let offset = 0;
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= bytes.length) return controller.close();
      const size = Math.max(1, pieces[i++ % pieces.length]!);
      controller.enqueue(bytes.slice(offset, offset + size));
      offset += size;
    },
  });
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
  }
  return new Uint8Array(Buffer.concat(parts));
}

async function expectKmsError(promise: Promise<unknown>, status: number, code: ErrorCode, reason?: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof KmsError, `expected a KmsError, got ${String(err)}`);
    assert.equal(err.status, status, err.message);
    assert.equal(err.code, code, err.message);
    if (reason) assert.match(err.reason, reason);
    return true;
  });
}

describe('content encryption with KMS keys', () => {
  let kms: DevKms;
  let alice: KmsClient;
  let bob: KmsClient;
  let key: KeyRep;
  let other: KeyRep;
  let unbound: KeyRep;
  /** The key URIs decryptStream asked for. */
  const asked: string[] = [];
  const resolveKey = async (uri: string) => {
    asked.push(uri);
    return bob.retrieveKey(uri);
  };

  before(async () => {
    kms = await startDevKms();
    const common = { url: kms.url, trustAnchors: [readFileSync(join(kms.dir, 'ca.pem'), 'utf8')] };
    alice = new KmsClient({ ...common, token: await kms.token('alice@a.example') });
    bob = new KmsClient({ ...common, token: await kms.token('bob@a.example') });
    [key, other, unbound] = (await alice.createKeys(3)) as [KeyRep, KeyRep, KeyRep];
    await alice.createResource({ keyUris: [key.uri, other.uri], authIds: ['bob@a.example'] });
  });
  after(async () => {
    await alice?.close();
    await bob?.close();
    await kms?.close();
  });

  describe('single JWEs', () => {
    test('encryptContent / contentKeyUri / decryptContent round trip (bytes and text)', TEST, async () => {
      const jwe = await encryptContent(key, 'héllo, wörld');
      const [header] = jwe.split('.');
      assert.deepEqual(JSON.parse(Buffer.from(header!, 'base64url').toString()), { alg: 'dir', enc: 'A256GCM', kid: key.uri });
      assert.equal(jwe.split('.')[1], '', 'dir: no encrypted key');
      assert.equal(contentKeyUri(jwe), key.uri);
      // The recipient learns the key from the JWE and fetches it from its KMS.
      const fetched = await bob.retrieveKey(contentKeyUri(jwe));
      assert.equal(await decryptContentText(jwe, fetched), 'héllo, wörld');
      const bytes = new Uint8Array(randomBytes(1000));
      assert.deepEqual(await decryptContent(await encryptContent(key, bytes), fetched), bytes);
      assert.deepEqual(await decryptContent(await encryptContent(key, new Uint8Array(0)), key), new Uint8Array(0));
      // Fresh IV every time.
      assert.notEqual(await encryptContent(key, 'same'), await encryptContent(key, 'same'));
      // The client method does the same fetch for you.
      assert.equal(Buffer.from(await bob.decrypt(jwe)).toString(), 'héllo, wörld');
    });

    test('contentKeyUri refuses what is not a JWE naming a kms:// key', TEST, async () => {
      await expectKmsError(Promise.resolve().then(() => contentKeyUri('garbage')), 400, 'CONTENT_INVALID', /JWE/);
      const noKms = `${b64url({ alg: 'dir', enc: 'A256GCM', kid: 'https://evil.example/k' })}....`;
      await expectKmsError(Promise.resolve().then(() => contentKeyUri(noKms)), 400, 'CONTENT_INVALID', /kms:\/\//);
      const noKid = `${b64url({ alg: 'dir', enc: 'A256GCM' })}....`;
      await expectKmsError(Promise.resolve().then(() => contentKeyUri(noKid)), 400, 'CONTENT_INVALID');
    });

    test('a wrong key or a tampered JWE → KmsError 400', TEST, async () => {
      const jwe = await encryptContent(key, 'secret');
      // Another key: refused by name before any decryption.
      await expectKmsError(decryptContent(jwe, other), 400, 'CONTENT_INVALID', /another key/);
      // Another key's material under this key's name (a lying key source): does not decrypt.
      await expectKmsError(decryptContent(jwe, { uri: key.uri, jwk: other.jwk }), 400, 'CONTENT_INVALID', /tampered or wrong key/);
      const parts = jwe.split('.');
      const flip = (segment: string) => {
        const bytes = Buffer.from(segment, 'base64url');
        bytes[0] = bytes[0]! ^ 1;
        return bytes.toString('base64url');
      };
      for (const i of [2, 3, 4]) {
        const tampered = parts.map((p, j) => (j === i ? flip(p) : p)).join('.');
        await expectKmsError(decryptContent(tampered, key), 400, 'CONTENT_INVALID', /tampered/);
      }
      // The protected header is authenticated: change it and nothing decrypts.
      const header = b64url({ alg: 'dir', enc: 'A256GCM', kid: key.uri, extra: 1 });
      await expectKmsError(decryptContent([header, ...parts.slice(1)].join('.'), key), 400, 'CONTENT_INVALID', /tampered/);
      await expectKmsError(decryptContent(parts.slice(0, 4).join('.'), key), 400, 'CONTENT_INVALID');
      // A key that is not 256 bits.
      await expectKmsError(encryptContent({ uri: key.uri, jwk: { k: Buffer.alloc(16).toString('base64url') } }, 'x'), 400, 'INVALID_ARGUMENT', /256/);
    });

    test('Bob cannot fetch a key he is not authorized for, so he cannot decrypt', TEST, async () => {
      const jwe = await alice.encrypt(unbound, 'not for bob');
      await expectKmsError(bob.decrypt(jwe), 403, 'NOT_AUTHORIZED');
      assert.equal(Buffer.from(await alice.decrypt(jwe)).toString(), 'not for bob');
    });
  });

  describe('streams', () => {
    const chunkSize = 16;
    async function encrypted(bytes: Uint8Array, k: KeyRep = key, size = chunkSize, pieces?: number[]): Promise<string[]> {
      const out = await collect(source(bytes, pieces).pipeThrough(encryptStream(k, size)));
      const text = Buffer.from(out).toString('utf8');
      assert.ok(text.endsWith('\n'));
      return text.split('\n').slice(0, -1);
    }
    const headerOf = (line: string) => JSON.parse(Buffer.from(line.split('.')[0]!, 'base64url').toString()) as { seq: number; fin: boolean; kid: string };
    /** Decrypts lines fed to decryptStream in odd-sized pieces (so lines straddle chunks). */
    function decrypt(lines: string[], piece = 7): Promise<Uint8Array> {
      const text = enc.encode(lines.map((l) => `${l}\n`).join(''));
      return collect(source(text, [piece, 1, 50]).pipeThrough(decryptStream(resolveKey)));
    }

    const cases: [string, number, number][] = [
      ['0 bytes', 0, 1],
      ['1 byte', 1, 1],
      ['exactly one chunk', chunkSize, 1],
      ['one chunk and a byte', chunkSize + 1, 2],
      ['several chunks, the last full', chunkSize * 6, 6],
      ['several chunks, the last partial', chunkSize * 6 + 5, 7],
    ];
    for (const [name, length, chunks] of cases) {
      test(`round trip: ${name}`, TEST, async () => {
        const bytes = new Uint8Array(randomBytes(length));
        const lines = await encrypted(bytes, key, chunkSize, [3, 16, 1, 40]);
        assert.equal(lines.length, chunks);
        lines.forEach((line, i) => {
          const h = headerOf(line);
          assert.equal(h.seq, i);
          assert.equal(h.fin, i === chunks - 1);
          assert.equal(h.kid, key.uri);
        });
        asked.length = 0;
        assert.deepEqual(await decrypt(lines), bytes);
        assert.deepEqual(asked, [key.uri], 'the key is asked for once, from the KMS');
      });
    }

    test('round trip with the default chunk size and a multi-chunk input', TEST, async () => {
      const bytes = new Uint8Array(randomBytes(150 * 1024));
      const out = await collect(source(bytes, [10_000]).pipeThrough(encryptStream(key)));
      const lines = Buffer.from(out).toString().split('\n').filter(Boolean);
      assert.equal(lines.length, 3);
      assert.deepEqual(await collect(source(out, [4096]).pipeThrough(decryptStream(resolveKey))), bytes);
    });

    test('reordered chunks are refused', TEST, async () => {
      const lines = await encrypted(new Uint8Array(randomBytes(chunkSize * 3 + 2)));
      const swapped = [lines[0]!, lines[2]!, lines[1]!, lines[3]!];
      await expectKmsError(decrypt(swapped), 400, 'CONTENT_INVALID', /chunk 1 missing or out of order/);
      await expectKmsError(decrypt([...lines].reverse()), 400, 'CONTENT_INVALID', /out of order/);
    });

    test('a dropped chunk is refused', TEST, async () => {
      const lines = await encrypted(new Uint8Array(randomBytes(chunkSize * 3 + 2)));
      await expectKmsError(decrypt([lines[0]!, lines[2]!, lines[3]!]), 400, 'CONTENT_INVALID', /chunk 1 missing/);
      await expectKmsError(decrypt(lines.slice(1)), 400, 'CONTENT_INVALID', /chunk 0 missing/);
      // Dropping a chunk and renumbering is impossible: seq is in the authenticated header.
      const h = headerOf(lines[2]!);
      const renumbered = [b64url({ ...h, seq: 1 }), ...lines[2]!.split('.').slice(1)].join('.');
      await expectKmsError(decrypt([lines[0]!, renumbered, lines[3]!]), 400, 'CONTENT_INVALID', /tampered/);
    });

    test('truncation (no final chunk) is refused', TEST, async () => {
      const lines = await encrypted(new Uint8Array(randomBytes(chunkSize * 3 + 2)));
      await expectKmsError(decrypt(lines.slice(0, 3)), 400, 'CONTENT_INVALID', /truncated/);
      await expectKmsError(decrypt(lines.slice(0, 1)), 400, 'CONTENT_INVALID', /truncated/);
      await expectKmsError(collect(source(new Uint8Array(0)).pipeThrough(decryptStream(resolveKey))), 400, 'CONTENT_INVALID', /truncated/);
      // Claiming fin early by editing the header breaks its authentication.
      const h = headerOf(lines[1]!);
      const early = [b64url({ ...h, fin: true }), ...lines[1]!.split('.').slice(1)].join('.');
      await expectKmsError(decrypt([lines[0]!, early]), 400, 'CONTENT_INVALID', /tampered/);
    });

    test('data after the final chunk is refused', TEST, async () => {
      const first = await encrypted(new Uint8Array(randomBytes(5)));
      const second = await encrypted(new Uint8Array(randomBytes(5)));
      await expectKmsError(decrypt([...first, ...second]), 400, 'CONTENT_INVALID', /after the final chunk/);
    });

    test('a chunk under a different key is refused', TEST, async () => {
      const bytes = new Uint8Array(randomBytes(chunkSize * 3));
      const lines = await encrypted(bytes);
      // The same chunk, with the right seq and fin, but under another (equally authorized) key.
      const sid = decodeProtectedHeader(lines[0]!).sid;
      const foreign = await encryptContent(other, bytes.subarray(chunkSize, 2 * chunkSize), { sid, seq: 1, fin: false });
      await expectKmsError(decrypt([lines[0]!, foreign, lines[2]!]), 400, 'CONTENT_INVALID', /another key/);
      // A whole stream under another key decrypts fine (the key it names is fetched).
      asked.length = 0;
      assert.deepEqual(await decrypt(await encrypted(bytes, other)), bytes);
      assert.deepEqual(asked, [other.uri]);
    });

    test('a chunk of another stream under the same key (spliced) is refused', TEST, async () => {
      const bytes = new Uint8Array(randomBytes(chunkSize * 3));
      const [first, second] = [await encrypted(bytes), await encrypted(bytes)];
      await expectKmsError(decrypt([first[0]!, second[1]!, first[2]!]), 400, 'CONTENT_INVALID', /another stream/);
      await expectKmsError(decrypt([first[0]!, first[1]!, second[2]!]), 400, 'CONTENT_INVALID', /another stream/);
    });

    test('a line that is not a JWE is refused with a KmsError 400, first or later', TEST, async () => {
      const lines = await encrypted(new Uint8Array(randomBytes(chunkSize * 2 + 1)));
      await expectKmsError(decrypt(['not a jwe', ...lines]), 400, 'CONTENT_INVALID');
      await expectKmsError(decrypt([lines[0]!, 'not a jwe', ...lines.slice(1)]), 400, 'CONTENT_INVALID');
      await expectKmsError(decrypt([lines[0]!, '%%%.%%%.%%%.%%%.%%%', ...lines.slice(1)]), 400, 'CONTENT_INVALID');
    });

    test('a tampered chunk is refused, and a key the reader may not fetch fails the stream', TEST, async () => {
      const lines = await encrypted(new Uint8Array(randomBytes(chunkSize * 2 + 1)));
      const parts = lines[1]!.split('.');
      const ct = Buffer.from(parts[3]!, 'base64url');
      ct[0] = ct[0]! ^ 0x80;
      parts[3] = ct.toString('base64url');
      await expectKmsError(decrypt([lines[0]!, parts.join('.'), lines[2]!]), 400, 'CONTENT_INVALID', /tampered/);
      const forbidden = await encrypted(new Uint8Array(randomBytes(3)), unbound);
      await expectKmsError(decrypt(forbidden), 403, 'NOT_AUTHORIZED');
    });
  });
});
