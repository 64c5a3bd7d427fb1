/**
 * Content encryption with KMS keys: a JWE `dir`/`A256GCM` whose `kid` is the key's `kms://` URI,
 * so a recipient knows which key to ask its KMS for. Streams are a sequence of such JWEs, one per
 * chunk, one per line; each chunk's protected header carries its index (`seq`) and whether it is
 * the last (`fin`), so reordering, dropping or truncating chunks is detected.
 */
import { CompactEncrypt, compactDecrypt, decodeProtectedHeader } from 'jose';
import { KmsError } from '@openkms/protocol';

export interface ContentKey {
  uri: string;
  jwk: { k: string };
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** The key's 32 bytes. A key the SDK cannot use is the caller's argument: INVALID_ARGUMENT. */
function rawKey(key: ContentKey): Uint8Array {
  const k: unknown = key?.jwk?.k;
  if (typeof key?.uri !== 'string' || !key.uri.startsWith('kms://')) throw new KmsError('INVALID_ARGUMENT', 'content key has no kms:// uri');
  if (typeof k !== 'string' || !/^[A-Za-z0-9_-]*$/.test(k)) throw new KmsError('INVALID_ARGUMENT', 'content key jwk.k is not base64url');
  const bin = atob(k.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (k.length % 4)) % 4));
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  if (bytes.length !== 32) throw new KmsError('INVALID_ARGUMENT', 'content key is not 256 bits');
  return bytes;
}

export async function encryptContent(key: ContentKey, plaintext: Uint8Array | string, extraHeader: Record<string, unknown> = {}): Promise<string> {
  const raw = rawKey(key);
  if (typeof plaintext !== 'string' && !(plaintext instanceof Uint8Array)) throw new KmsError('INVALID_ARGUMENT', 'content to encrypt must be a string or a Uint8Array');
  const bytes = typeof plaintext === 'string' ? enc.encode(plaintext) : plaintext;
  return new CompactEncrypt(bytes).setProtectedHeader({ ...extraHeader, alg: 'dir', enc: 'A256GCM', kid: key.uri }).encrypt(raw);
}

/** The `kms://` URI of the key a JWE was encrypted with. */
export function contentKeyUri(jwe: string): string {
  let kid: unknown;
  try {
    kid = decodeProtectedHeader(jwe).kid;
  } catch (err) {
    throw new KmsError('CONTENT_INVALID', 'not a compact JWE', { cause: err });
  }
  if (typeof kid !== 'string' || !kid.startsWith('kms://')) throw new KmsError('CONTENT_INVALID', 'the JWE names no kms:// key');
  return kid;
}

export async function decryptContent(jwe: string, key: ContentKey): Promise<Uint8Array> {
  const raw = rawKey(key); // outside the try: an unusable key is not tampered content
  if (contentKeyUri(jwe) !== key.uri) throw new KmsError('CONTENT_INVALID', 'content was encrypted with another key');
  try {
    const { plaintext } = await compactDecrypt(jwe, raw, { keyManagementAlgorithms: ['dir'], contentEncryptionAlgorithms: ['A256GCM'] });
    return plaintext;
  } catch (err) {
    throw new KmsError('CONTENT_INVALID', 'content does not decrypt with its key (tampered or wrong key)', { cause: err });
  }
}

export async function decryptContentText(jwe: string, key: ContentKey): Promise<string> {
  return dec.decode(await decryptContent(jwe, key));
}

const CHUNK = 64 * 1024;
const MAX_LINE = 4 * 1024 * 1024;

/** Encrypts a byte stream into newline-separated chunk JWEs. */
export function encryptStream(key: ContentKey, chunkSize = CHUNK): TransformStream<Uint8Array, Uint8Array> {
  rawKey(key);
  // A chunk over the line bound could not be read back by decryptStream.
  if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > CHUNK * 16) throw new KmsError('INVALID_ARGUMENT', `chunkSize must be an integer from 1 to ${CHUNK * 16} bytes`);
  let pending = new Uint8Array(0);
  let seq = 0;
  // Names this stream in every chunk, so chunks of two streams under one key cannot be spliced.
  const sid = globalThis.crypto.randomUUID();
  const emit = async (controller: TransformStreamDefaultController<Uint8Array>, bytes: Uint8Array, fin: boolean) => {
    controller.enqueue(enc.encode((await encryptContent(key, bytes, { sid, seq: seq++, fin })) + '\n'));
  };
  return new TransformStream({
    async transform(chunk, controller) {
      if (!(chunk instanceof Uint8Array)) throw new KmsError('INVALID_ARGUMENT', 'encryptStream takes Uint8Array chunks');
      const joined = new Uint8Array(pending.length + chunk.length);
      joined.set(pending);
      joined.set(chunk, pending.length);
      let offset = 0;
      // Keep at least one byte back so the final chunk (fin) is never empty unless the stream is.
      while (joined.length - offset > chunkSize) {
        await emit(controller, joined.subarray(offset, offset + chunkSize), false);
        offset += chunkSize;
      }
      pending = joined.slice(offset);
    },
    async flush(controller) {
      await emit(controller, pending, true);
    },
  });
}

/**
 * Decrypts a stream made by encryptStream. `resolveKey` is asked once, for the key the first
 * chunk names; every chunk must name the same key, come in order, and the last must say `fin`.
 */
export function decryptStream(resolveKey: (uri: string) => Promise<ContentKey>): TransformStream<Uint8Array, Uint8Array> {
  let text = '';
  let expected = 0;
  let finished = false;
  let key: ContentKey | undefined;
  let sid: unknown;
  const line = async (jwe: string, controller: TransformStreamDefaultController<Uint8Array>) => {
    if (finished) throw new KmsError('CONTENT_INVALID', 'data after the final chunk');
    const uri = contentKeyUri(jwe); // every line, not only the first: a KmsError 400 for one that is not a JWE
    key ??= await resolveKey(uri);
    const header = decodeProtectedHeader(jwe) as { sid?: unknown; seq?: unknown; fin?: unknown };
    if (expected === 0) sid = header.sid;
    if (typeof header.sid !== 'string' || header.sid !== sid) throw new KmsError('CONTENT_INVALID', 'a chunk of another stream');
    if (header.seq !== expected) throw new KmsError('CONTENT_INVALID', `chunk ${expected} missing or out of order`);
    expected++;
    controller.enqueue(await decryptContent(jwe, key));
    finished = header.fin === true;
  };
  return new TransformStream({
    async transform(chunk, controller) {
      if (!ArrayBuffer.isView(chunk)) throw new KmsError('INVALID_ARGUMENT', 'decryptStream takes Uint8Array chunks');
      text += dec.decode(chunk, { stream: true });
      // A chunk's JWE is about 4/3 of CHUNK: a line far longer is not one of ours.
      if (text.length > MAX_LINE && !text.slice(0, MAX_LINE).includes('\n')) throw new KmsError('CONTENT_INVALID', 'a line longer than any chunk');
      let nl: number;
      while ((nl = text.indexOf('\n')) >= 0) {
        const jwe = text.slice(0, nl).trim();
        text = text.slice(nl + 1);
        if (jwe) await line(jwe, controller);
      }
    },
    async flush(controller) {
      if (text.trim()) await line(text.trim(), controller);
      if (!finished) throw new KmsError('CONTENT_INVALID', 'stream truncated: no final chunk');
    },
  });
}
