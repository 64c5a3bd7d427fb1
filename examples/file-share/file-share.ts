/**
 * Draft §3.1, "Securing an HTTP File Sharing Service", end to end on loopback:
 *
 *   1. Alice asks the KMS for unbound keys.
 *   2. She encrypts a file with one of them and uploads only the ciphertext to the file service.
 *   3. Bob and Carol learn of the new file from the service's listing.
 *   4. Alice creates a KMS resource object (KRO) for the file, binding the key to it and
 *      authorizing Bob and Carol, and tells the file service which KRO stands for the file.
 *   5-7. Bob downloads the ciphertext, asks the KMS for the keys bound to the KRO and decrypts.
 *   8. Carol does the same. Dave, who was not authorized, gets the ciphertext but not the key (403).
 *
 * The file service only ever sees ciphertext and the KRO's URI; each user talks to the KMS through
 * its own KmsClient over its own ECDHE channel.
 */
import { createReadStream, createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { contentKeyUri, decryptStream, encryptStream, KmsError, type KeyRep, type KmsClient } from '@openkms/client';
import { DOMAIN, startDemoKms, statusOf } from '../common/demo-kms.js';
import { startFileService } from '../common/file-service.js';

export interface RunOptions {
  log?: (line: string) => void;
}

export interface FileShareResult {
  fileUrl: string;
  resourceUri: string;
  keyUri: string;
  /** The file Alice shared. */
  plaintext: Buffer;
  /** What the file service stored for it. */
  stored: Buffer;
  /** Everything the file service received (request lines, headers, bodies). */
  serviceReceived: Buffer;
  /** The key values (base64url) of every key Alice obtained. */
  keyValues: string[];
  /** Chunks (JWEs) the encrypted file is made of. */
  chunks: number;
  /** What Bob and Carol got after decrypting. */
  bob: Buffer;
  carol: Buffer;
  /** Bob asking for the key before Alice created the KRO (the race the draft notes): 403. */
  tooEarlyStatus: number | 'ok';
  dave: { downloadedBytes: number; resourceKeysStatus: number | 'ok'; keyStatus: number | 'ok' };
}

const user = (name: string) => `${name}@${DOMAIN}`;

/** A text file big enough to be encrypted in several 64 KiB chunks. */
function makeReport(): Buffer {
  const lines = ['ACME Corp - Q3 board report - CONFIDENTIAL', ''];
  for (let i = 1; lines.join('\n').length < 150_000; i++) {
    lines.push(`Item ${String(i).padStart(4, '0')}: the Initech acquisition closes on 2025-11-14 at $${(41 + (i % 7)).toFixed(2)} a share.`);
  }
  return Buffer.from(lines.join('\n') + '\n', 'utf8');
}

export async function run(options: RunOptions = {}): Promise<FileShareResult> {
  const log = options.log ?? ((line: string) => console.log(line));
  const work = mkdtempSync(join(tmpdir(), 'file-share-demo-'));
  const kms = await startDemoKms();
  const service = await startFileService();
  try {
    log(`The KMS ${kms.authority} listens on ${kms.url}; every user's client trusts its CA (ca.pem).`);
    log(`The file-sharing service listens on ${service.url}. It stores files but is not trusted with their contents.`);
    const [alice, bob, carol, dave] = await Promise.all(['alice', 'bob', 'carol', 'dave'].map((n) => kms.client(user(n))));

    // The file on Alice's disk.
    const plaintext = makeReport();
    const source = join(work, 'q3-report.txt');
    writeFileSync(source, plaintext);

    // (1) Unbound keys: usable at once, readable only by Alice's client until bound to a resource.
    const keys = await alice!.createKeys(2);
    const key = keys[0]!;
    log(`(1) Alice asks the KMS for ${keys.length} fresh keys; they are hers alone until bound. She picks ${key.uri}.`);

    // (2) Encrypt while uploading: the file streams through encryptStream, one JWE per 64 KiB.
    const encrypted = (Readable.toWeb(createReadStream(source)) as unknown as ReadableStream<Uint8Array>).pipeThrough(encryptStream(key));
    const upload = await fetch(`${service.url}/files`, {
      method: 'POST',
      headers: { 'x-user': user('alice'), 'x-file-name': 'q3-report.txt', 'content-type': 'application/octet-stream' },
      body: encrypted,
      duplex: 'half',
    } as RequestInit);
    if (upload.status !== 201) throw new Error(`upload failed: ${upload.status}`);
    const { id, url: fileUrl } = (await upload.json()) as { id: string; url: string };
    const stored = service.files.get(id)!.bytes;
    const chunks = stored.toString('utf8').trim().split('\n').length;
    log(`(2) Alice encrypts q3-report.txt (${plaintext.length} bytes) with that key and uploads only the ciphertext (${stored.length} bytes, ${chunks} chunks). The service answers ${fileUrl}.`);

    // (3) Bob and Carol learn of the file (here: from the service's listing).
    const listing = (await (await fetch(`${service.url}/files`, { headers: { 'x-user': user('bob') } })).json()) as { name: string; owner: string; url: string }[];
    const seen = listing.find((f) => f.url === fileUrl)!;
    log(`(3) Bob and Carol see "${seen.name}" from ${seen.owner} in the service's listing.`);

    // The race the draft mentions: asking for the key before step 4 is refused.
    const firstChunk = stored.toString('utf8').slice(0, stored.indexOf('\n'));
    const tooEarlyStatus = await statusOf(bob!.retrieveKey(contentKeyUri(firstChunk)));
    log(`    Bob is quick and asks the KMS for the key the ciphertext names before Alice has shared it: refused (${tooEarlyStatus}). He will retry once it is shared.`);

    // (4) The KRO: the key bound to it, Bob and Carol authorized (Alice is, as its creator).
    const { resource } = await alice!.createResource({ authIds: [user('bob'), user('carol')], keyUris: [key.uri] });
    const put = await fetch(`${fileUrl}/resource`, {
      method: 'PUT',
      headers: { 'x-user': user('alice'), 'content-type': 'application/json' },
      body: JSON.stringify({ resourceUri: resource.uri }),
    });
    if (put.status !== 204) throw new Error(`could not attach the resource: ${put.status}`);
    log(`(4) Alice creates the KMS resource object ${resource.uri} for the file, binds the key to it, authorizes Bob and Carol, and tells the service which resource stands for the file.`);

    // (5)-(7) Bob, then (8) Carol: download, fetch the keys through the KRO, decrypt.
    const download = async (name: string, client: KmsClient, step: string): Promise<Buffer> => {
      const res = await fetch(fileUrl, { headers: { 'x-user': user(name) } });
      const resourceUri = res.headers.get('x-kms-resource');
      if (res.status !== 200 || !res.body || !resourceUri) throw new Error(`download failed: ${res.status}`);
      const roomKeys: KeyRep[] = await client.retrieveResourceKeys(resourceUri);
      const keyFor = async (uri: string) => {
        const found = roomKeys.find((k) => k.uri === uri);
        if (!found) throw new KmsError('NOT_FOUND', `the file's key ${uri} is not bound to ${resourceUri}`);
        return found;
      };
      const out = join(work, `${name}-q3-report.txt`);
      await (res.body as ReadableStream<Uint8Array>).pipeThrough(decryptStream(keyFor)).pipeTo(Writable.toWeb(createWriteStream(out)) as unknown as WritableStream<Uint8Array>);
      const bytes = readFileSync(out);
      const name0 = name[0]!.toUpperCase() + name.slice(1);
      log(`${step} ${name0} downloads the ciphertext, gets the ${roomKeys.length} key(s) bound to the resource from the KMS, and decrypts ${bytes.length} bytes: "${bytes.toString('utf8').split('\n')[0]}"${bytes.equals(plaintext) ? ' — identical to Alice\'s file.' : ' — DIFFERENT from Alice\'s file!'}`);
      return bytes;
    };
    const bobCopy = await download('bob', bob!, '(5-7)');
    const carolCopy = await download('carol', carol!, '(8)');

    // Dave was not authorized: the service hands him the ciphertext, the KMS refuses him the key.
    const daveRes = await fetch(fileUrl, { headers: { 'x-user': user('dave') } });
    const daveBytes = Buffer.from(await daveRes.arrayBuffer());
    const daveResource = daveRes.headers.get('x-kms-resource')!;
    const resourceKeysStatus = await statusOf(dave!.retrieveResourceKeys(daveResource));
    const keyStatus = await statusOf(dave!.retrieveKey(contentKeyUri(daveBytes.toString('utf8').split('\n')[0]!)));
    log(`    Dave, who was not authorized, can download the ${daveBytes.length} bytes of ciphertext, but the KMS refuses him the resource's keys (${resourceKeysStatus}) and the file's key (${keyStatus}). He cannot read it.`);

    const serviceReceived = Buffer.concat(service.received);
    const keyValues = keys.map((k) => (k.jwk as { k: string }).k);
    const leaked = keyValues.some((k) => serviceReceived.includes(k) || serviceReceived.includes(Buffer.from(k, 'base64url')));
    log(`The service received ${serviceReceived.length} bytes in all: ${leaked ? 'A KEY LEAKED!' : 'no key among them'}, and the plaintext appears ${stored.includes(plaintext.subarray(0, 42)) ? 'IN' : 'nowhere in'} what it stored.`);

    return {
      fileUrl,
      resourceUri: resource.uri,
      keyUri: key.uri,
      plaintext,
      stored,
      serviceReceived,
      keyValues,
      chunks,
      bob: bobCopy,
      carol: carolCopy,
      tooEarlyStatus,
      dave: { downloadedBytes: daveBytes.length, resourceKeysStatus, keyStatus },
    };
  } finally {
    await service.close();
    await kms.close();
    rmSync(work, { recursive: true, force: true });
  }
}
