/**
 * `kms demo` / `npm run demo` (the `kms` command loads this module from a clone's dist-examples):
 * the seed scenario — draft-abiggs-saag-key-management-service §3.3,
 * "KMS Key Federation" — end to end on loopback, printing each of its ten steps and what crossed
 * which wire.
 *
 * Everything is real: two KMS processes started with the `kms` command (`kms init`, `kms peer add`
 * both ways, `kms serve`) in a temporary folder, the file-sharing service of draft §3.1
 * (in-process), and two users with their own SDK clients and development tokens (`kms token`):
 * Alice (a.example, served by kms.a.example) and Bob (b.example, served by kms.b.example).
 * Nothing is mocked; the wires are observed (see wire.ts): Alice's and Bob's clients through their
 * `fetch`, the KMS-to-KMS traffic through a loopback relay each KMS is given as its peer's
 * endpoint, and A's own audit log (read-only) for what A recorded about B's requests.
 *
 * Then Alice removes Bob's authorization and the demo measures how long KMS B keeps serving him:
 * within ~1 s when A pushes an invalidation to B, else within `federation.maxStaleness` (B is
 * started with `--federation-max-staleness 5`, so the fallback is short).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import Database from 'better-sqlite3';
import { KmsClient, KmsError, contentKeyUri, decryptStream, encryptStream, type KeyRep } from '@openkms/client';
import { startFileService, type FileService } from '../common/file-service.js';
import { freePorts, kms, serveKms, type ServedKms } from './processes.js';
import { Wire, formatBytes, recordingFetch, requestNote, responseNote, startWireTap, type WireRecord, type WireTap } from './wire.js';

export interface DemoOptions {
  /** Where the lines go (default: console.log). */
  log?: (line: string) => void;
  /** KMS B's `--federation-max-staleness` (default 5 s): the revocation bound without a push. */
  maxStaleness?: number;
  /**
   * Cut the KMS A → KMS B wire before the revocation (a one-way partition: B still reaches A), so
   * that no invalidation push arrives and B must rely on its staleness bound.
   */
  withoutPush?: boolean;
  /** Stops the demo (it then cleans up and rejects). */
  signal?: AbortSignal;
}

export interface DemoResult {
  /** Bob decrypted Alice's file, byte for byte, with the key his own KMS fetched from hers. */
  bobDecrypted: boolean;
  /** The file service stored and received no line of the plaintext and no key value. */
  serviceSawOnlyCiphertext: boolean;
  /** The KMS-to-KMS wire carried only JOSE: no key value, no plaintext. */
  peerWireOpaque: boolean;
  /** After Alice removed Bob, KMS B refused him (403) within maxStaleness + 3 s. */
  revokedRefused: boolean;
  /** From Alice's removal being confirmed to Bob's first refusal (ms); -1 if never refused. */
  revocationDelayMs: number;
  /** Bob's retrievals still served after the removal (from B's copy) before the refusal. */
  servedAfterRevocation: number;
  /** A request from KMS A reached KMS B after the removal (an invalidation push). */
  invalidationPushed: boolean;
  maxStaleness: number;
  keyUri: string;
  resourceUri: string;
  fileUrl: string;
  /** Records A's audit holds of requests made via kms://kms.b.example. */
  peerAuditRecords: number;
  /** Exit codes of KMS A and KMS B after SIGTERM. */
  shutdownCodes: Array<number | null>;
}

interface Side {
  name: 'KMS A' | 'KMS B';
  authority: string;
  domain: string;
  dir: string;
  config: string;
  ca: string;
  db: string;
}

const PLAINTEXT_MARKER = 'MERGER TERMS - STRICTLY CONFIDENTIAL';

/** Alice's file: a text big enough for several 64 KiB chunks. */
function makeFile(): Buffer {
  const lines = [`Contoso x Fabrikam - ${PLAINTEXT_MARKER}`, ''];
  for (let i = 1; lines.join('\n').length < 150_000; i++) {
    lines.push(`Clause ${String(i).padStart(4, '0')}: Fabrikam shareholders receive ${(1.25 + (i % 9) / 100).toFixed(2)} Contoso shares per share, closing 2026-03-${String(1 + (i % 28)).padStart(2, '0')}.`);
  }
  return Buffer.from(lines.join('\n') + '\n', 'utf8');
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

interface AuditLine {
  seq: number;
  principal: string | null;
  method: string | null;
  uri: string | null;
  status: number;
  peer: string | null;
}

/** A's audit records of requests made through `peer`, after `afterSeq` (read-only, while A runs). */
function peerAudit(dbFile: string, peer: string, afterSeq = 0): AuditLine[] {
  const db = new Database(dbFile, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT seq, principal, method, uri, status, peer FROM audit WHERE peer = ? AND seq > ? ORDER BY seq').all(peer, afterSeq) as AuditLine[];
  } finally {
    db.close();
  }
}

function auditHead(dbFile: string): number {
  const db = new Database(dbFile, { readonly: true, fileMustExist: true });
  try {
    return Number((db.prepare('SELECT COALESCE(MAX(seq), 0) AS seq FROM audit').get() as { seq: number }).seq);
  } finally {
    db.close();
  }
}

/** B's federated copies (read-only): which KRO, when fetched, how many sealed bytes. */
function copiesOf(dbFile: string): Array<{ resourceUri: string; fetchedAt: number; bytes: number }> {
  const db = new Database(dbFile, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT resource_uri AS resourceUri, fetched_at AS fetchedAt, length(sealed) AS bytes FROM federated_copies ORDER BY fetched_at').all() as Array<{
      resourceUri: string;
      fetchedAt: number;
      bytes: number;
    }>;
  } finally {
    db.close();
  }
}

/** Every way a key value could be written down: base64url, base64, hex (raw bytes are checked apart). */
function keyForms(k: string): { texts: string[]; raw: Buffer } {
  const raw = Buffer.from(k, 'base64url');
  return { texts: [k, raw.toString('base64'), raw.toString('hex')], raw };
}

function leaks(haystack: Buffer, keys: string[], plaintext: Buffer): boolean {
  const text = haystack.toString('latin1');
  if (text.includes(PLAINTEXT_MARKER) || haystack.indexOf(plaintext.subarray(0, 48)) >= 0) return true;
  for (const line of plaintext.toString('utf8').split('\n')) if (line.length >= 16 && text.includes(line)) return true;
  for (const k of keys) {
    const { texts, raw } = keyForms(k);
    if (texts.some((t) => text.includes(t)) || haystack.indexOf(raw) >= 0) return true;
  }
  return false;
}

/** An ECDHE handshake: a JWE under the KMS's static RSA key (every later message is `dir`). */
const isHandshake = (r: WireRecord) => r.request.some((d) => d.startsWith('JWE') && !d.startsWith('JWE dir'));

const short = (uri: string) => uri.replace(/([0-9a-f]{8})-[0-9a-f-]{27}$/, '$1…');

export async function runDemo(options: DemoOptions = {}): Promise<DemoResult> {
  const log = options.log ?? ((line: string) => console.log(line));
  const signal = options.signal;
  const maxStaleness = options.maxStaleness ?? 5;
  const check = () => signal?.throwIfAborted();
  const root = mkdtempSync(join(tmpdir(), 'kms-demo-'));
  const side = (name: Side['name'], letter: string): Side => {
    const dir = join(root, letter);
    return { name, authority: `kms.${letter}.example`, domain: `${letter}.example`, dir, config: join(dir, 'kms.json'), ca: join(dir, 'ca.pem'), db: join(dir, 'kms.db') };
  };
  const A = side('KMS A', 'a');
  const B = side('KMS B', 'b');
  const alice = `alice@${A.domain}`;
  const bob = `bob@${B.domain}`;
  const bPeer = `kms://${B.authority}`;

  const served: Array<{ name: Side['name']; process: ServedKms }> = [];
  const taps: WireTap[] = [];
  const clients: KmsClient[] = [];
  let service: FileService | undefined;
  const shutdownCodes: Array<number | null> = [];
  const wire = new Wire();

  try {
    // ---- setup: two KMS folders, peers both ways, two KMS processes --------------------------
    log(`Setup, in ${root}:`);
    await Promise.all([A, B].map((s) => kms(['init', '--dir', s.dir, '--authority', s.authority, '--domain', s.domain])));
    log(`  kms init: ${A.authority} serves ${A.domain} (${A.dir}), ${B.authority} serves ${B.domain} (${B.dir}); each has its own CA (ca.pem)`);
    check();
    const [portA, portB] = (await freePorts(2)) as [number, number];
    // What each KMS is told is its peer's endpoint: a relay in front of the peer, to watch the wire.
    const toA = await startWireTap(wire, 'KMS B', 'KMS A', `http://127.0.0.1:${portA}`);
    taps.push(toA);
    const toB = await startWireTap(wire, 'KMS A', 'KMS B', `http://127.0.0.1:${portB}`);
    taps.push(toB);
    await Promise.all([
      kms(['peer', 'add', '--config', A.config, '--authority', B.authority, '--domain', B.domain, '--endpoint', toB.url, '--ca', B.ca]),
      kms(['peer', 'add', '--config', B.config, '--authority', A.authority, '--domain', A.domain, '--endpoint', toA.url, '--ca', A.ca]),
    ]);
    log(`  kms peer add, both ways: A trusts ${B.authority} for ${B.domain} (B's ca.pem), B trusts ${A.authority} for ${A.domain} (A's ca.pem)`);
    check();
    const tokens = Promise.all([
      kms(['token', '--config', A.config, '--user', alice]).then((r) => r.stdout.trim()),
      kms(['token', '--config', B.config, '--user', bob]).then((r) => r.stdout.trim()),
    ]);
    tokens.catch(() => undefined); // awaited below; this only keeps an early failure from being "unhandled"
    const started = await Promise.allSettled([
      serveKms(['--config', A.config, '--port', String(portA)]),
      serveKms(['--config', B.config, '--port', String(portB), '--federation-max-staleness', String(maxStaleness)]),
    ]);
    // Whatever started is stopped at the end, even when the other did not start.
    started.forEach((r, i) => r.status === 'fulfilled' && served.push({ name: i === 0 ? 'KMS A' : 'KMS B', process: r.value }));
    for (const r of started) if (r.status === 'rejected') throw r.reason;
    const servedA = served[0]!.process;
    const servedB = served[1]!.process;
    const [aliceToken, bobToken] = await tokens;
    log(`  kms serve: KMS A (${A.authority}) on ${servedA.url}, pid ${servedA.pid}; KMS B (${B.authority}) on ${servedB.url}, pid ${servedB.pid}, --federation-max-staleness ${maxStaleness}`);
    log(`  the KMS-to-KMS wire runs through loopback relays that record it: B reaches A at ${toA.url}, A reaches B at ${toB.url}`);
    log(`  kms token: Alice (${alice}) gets a token from A's development issuer, Bob (${bob}) from B's`);
    service = await startFileService();
    log(`  file-sharing service (stores only what it is given) on ${service.url}`);
    // Each user's client trusts its own KMS's CA and goes through a fetch that records the wire.
    const userClient = (who: 'Alice' | 'Bob', s: Side, at: ServedKms, token: string) =>
      new KmsClient({ url: at.url, authority: s.authority, trustAnchors: [readFileSync(s.ca, 'utf8')], token, clientId: `${who.toLowerCase()}-laptop`, fetch: recordingFetch(wire, who, s.name) });
    const aliceKms = userClient('Alice', A, servedA, aliceToken);
    const bobKms = userClient('Bob', B, servedB, bobToken);
    clients.push(aliceKms, bobKms);
    check();
    log('');

    // ---- (0) the draft assumes each client already has a secure channel to its own KMS --------
    let mark = wire.mark();
    await aliceKms.ping();
    await bobKms.ping();
    for (const [who, kmsName] of [
      ['Alice', 'KMS A'],
      ['Bob', 'KMS B'],
    ] as const) {
      const recs = wire.since(mark, { from: who });
      const discovery = recs.filter((r) => r.method === 'GET');
      const handshake = recs.filter(isHandshake);
      log(
        `(0) ${who} → ${kmsName}: GET /.well-known/kms; ${kmsName} → ${who}:${responseNote(discovery)}, checked against ${who === 'Alice' ? "A's" : "B's"} CA. ` +
          `${who} → ${kmsName}: ECDHE with ${who === 'Alice' ? 'her' : 'his'} token${requestNote(handshake)}; ${kmsName} → ${who}: its ephemeral key${responseNote(handshake)}. Every later message: JWE dir/A256GCM under the derived key.`,
      );
    }

    // ---- (1) unbound keys ----------------------------------------------------------------------
    check();
    mark = wire.mark();
    const keys = await aliceKms.createKeys(2);
    const key = keys[0]!;
    let recs = wire.since(mark, { from: 'Alice' });
    log(`(1) Alice → KMS A: create ${keys.length} keys${requestNote(recs)}; KMS A → Alice: ${keys.length} unbound keys (${keys.map((k) => short(k.uri)).join(', ')})${responseNote(recs)}`);

    // ---- (2) encrypt and upload -------------------------------------------------------------
    const plaintext = makeFile();
    const encrypted = (Readable.toWeb(Readable.from([plaintext])) as unknown as ReadableStream<Uint8Array>).pipeThrough(encryptStream(key));
    const upload = await fetch(`${service.url}/files`, {
      method: 'POST',
      headers: { 'x-user': alice, 'x-file-name': 'merger-terms.txt', 'x-kms-key': key.uri, 'content-type': 'application/octet-stream' },
      body: encrypted,
      duplex: 'half',
    } as RequestInit);
    if (upload.status !== 201) throw new Error(`the file service refused the upload: ${upload.status}`);
    const { id: fileId, url: fileUrl } = (await upload.json()) as { id: string; url: string };
    const stored = service.files.get(fileId)!.bytes;
    const chunks = stored.toString('utf8').trim().split('\n').length;
    log(
      `(2) Alice encrypts merger-terms.txt (${formatBytes(plaintext.length)}) with ${short(key.uri)} on her machine. ` +
        `Alice → file service: POST /files [${chunks} chunks, each a JWE dir/A256GCM naming the key, ${formatBytes(stored.length)}]; file service → Alice: 201 ${fileUrl}`,
    );

    // ---- (3) Bob is notified ------------------------------------------------------------------
    const listing = (await (await fetch(`${service.url}/files`, { headers: { 'x-user': bob } })).json()) as Array<{ url: string; name: string; owner: string; keyUri?: string }>;
    const notice = listing.find((f) => f.url === fileUrl);
    if (!notice?.keyUri) throw new Error('the file service did not list the new file with its key');
    log(`(3) file service → Bob: new file "${notice.name}" from ${notice.owner} at ${notice.url}, key ${notice.keyUri}`);

    // ---- (4) the KRO, the key bound to it, Bob authorized -------------------------------------
    check();
    mark = wire.mark();
    const { resource } = await aliceKms.createResource({ authIds: [bob], keyUris: [key.uri] });
    recs = wire.since(mark, { from: 'Alice' });
    const put = await fetch(`${fileUrl}/resource`, { method: 'PUT', headers: { 'x-user': alice, 'content-type': 'application/json' }, body: JSON.stringify({ resourceUri: resource.uri }) });
    if (put.status !== 204) throw new Error(`the file service refused the resource URI: ${put.status}`);
    log(
      `(4) Alice → KMS A: create a resource (KRO) with ${short(key.uri)} bound and ${bob} authorized${requestNote(recs)}; KMS A → Alice: ${resource.uri}${responseNote(recs)}. ` +
        `Alice → file service: the KRO's URI for the file (PUT, 204)`,
    );

    // ---- (5) Bob downloads the ciphertext -------------------------------------------------------
    const download = await fetch(fileUrl, { headers: { 'x-user': bob } });
    if (download.status !== 200) throw new Error(`download failed: ${download.status}`);
    const downloaded = Buffer.from(await download.arrayBuffer());
    const firstChunk = downloaded.toString('utf8').slice(0, downloaded.indexOf('\n'));
    const namedKey = contentKeyUri(firstChunk);
    log(`(5) Bob → file service: GET ${fileUrl}; file service → Bob: ${formatBytes(downloaded.length)} of ciphertext, whose JWE headers name ${short(namedKey)}`);
    if (namedKey !== notice.keyUri) throw new Error('the ciphertext names another key than the notification');

    // ---- (6)-(9) Bob asks his own KMS; B fetches from A over the peer channel ------------------
    check();
    mark = wire.mark();
    const auditMark = auditHead(A.db);
    const bobKey: KeyRep = await bobKms.retrieveKey(notice.keyUri);
    const bobRecs = wire.since(mark, { from: 'Bob' });
    const peerRecs = wire.since(mark, { from: 'KMS B', to: 'KMS A' });
    log(`(6) Bob → KMS B: retrieve ${short(notice.keyUri)} (a key of ${A.authority}, not of his KMS)${requestNote(bobRecs)}`);
    const discovery = peerRecs.filter((r) => r.method === 'GET');
    const handshake = peerRecs.filter(isHandshake);
    const retrieve = peerRecs.filter((r) => r.method === 'POST' && !handshake.includes(r));
    if (handshake.length === 0 || retrieve.length === 0) throw new Error(`no KMS-to-KMS exchange was observed for Bob's request (${peerRecs.length} records)`);
    log(
      `(7) ` +
        (discovery.length > 0 ? `KMS B → KMS A: GET /.well-known/kms; KMS A → KMS B:${responseNote(discovery)}, which B checks against A's CA from its peers. ` : '') +
        `KMS B → KMS A: ECDHE as ${bPeer}, signed by B's certified static key${requestNote(handshake)}; KMS A → KMS B: its ephemeral key${responseNote(handshake)}`,
    );
    log(
      `(8) KMS B → KMS A: federated retrieve of ${short(notice.keyUri)} on behalf of ${bob}${requestNote(retrieve)}; ` +
        `KMS A → KMS B: the KRO, its bound key(s) and the ${B.domain} authorizations${responseNote(retrieve)}`,
    );
    const audited = peerAudit(A.db, bPeer, auditMark);
    for (const row of audited) {
      log(`      A's audit: ${row.method} ${row.uri} by ${row.principal} via ${row.peer} → ${row.status}`);
    }
    const copies = copiesOf(B.db);
    const copy = copies.find((c) => c.resourceUri === resource.uri);
    log(
      `(9) KMS B finds ${bob} authorized in what A released and answers. KMS B → Bob: the key${responseNote(bobRecs)}` +
        (copy ? `. B keeps its copy of the KRO sealed under its own CMK, with A's signed answer (${formatBytes(copy.bytes)})` : ''),
    );

    // ---- (10) Bob decrypts ------------------------------------------------------------------
    const decryptedStream = new Response(downloaded).body!.pipeThrough(
      decryptStream(async (uri) => {
        if (uri !== bobKey.uri) throw new KmsError('CONTENT_INVALID', `the file names ${uri}, not the key Bob has`);
        return bobKey;
      }),
    );
    const decrypted = Buffer.from(await new Response(decryptedStream).arrayBuffer());
    const bobDecrypted = decrypted.equals(plaintext);
    log(
      `(10) Bob decrypts the ${chunks} chunks on his machine: ${formatBytes(decrypted.length)}, "${decrypted.toString('utf8').split('\n')[0]}" — ` +
        (bobDecrypted ? "identical to Alice's file." : "DIFFERENT from Alice's file!"),
    );

    // ---- what the file service and the peer wire saw -----------------------------------------
    const keyValues = keys.map((k) => (k.jwk as { k: string }).k);
    const received = Buffer.concat(service.received);
    const serviceSawOnlyCiphertext = !leaks(stored, keyValues, plaintext) && !leaks(received, keyValues, plaintext);
    log('');
    log(
      `The file service stored ${formatBytes(stored.length)} and received ${formatBytes(received.length)} in all: ` +
        (serviceSawOnlyCiphertext ? 'no line of the plaintext and no key value (base64url, base64, hex or raw) among them' : 'PLAINTEXT OR A KEY REACHED IT') +
        `; besides ciphertext it learned only the key's and the KRO's URIs.`,
    );
    const peerBytes = Buffer.from(wire.records.filter((r) => r.from.startsWith('KMS')).map((r) => r.requestBody + r.responseBody).join('\n'));
    const peerWireOpaque = !leaks(peerBytes, keyValues, plaintext);
    log(`The KMS-to-KMS wire carried ${formatBytes(peerBytes.length)} so far: ${peerWireOpaque ? 'only JOSE, no key value' : 'A KEY IN THE CLEAR'}.`);

    // ---- revocation -------------------------------------------------------------------------
    check();
    log('');
    const fetchedAt = copy?.fetchedAt;
    if (options.withoutPush) {
      toB.cut = true;
      log(`The KMS A → KMS B wire is cut from now on (--without-push): no invalidation can reach B, which still reaches A.`);
    }
    mark = wire.mark();
    const revocationAudit = auditHead(A.db);
    await aliceKms.deauthorize(resource.uri, bob);
    const revokedAt = performance.now();
    recs = wire.since(mark, { from: 'Alice' });
    const copyAge = fetchedAt === undefined ? undefined : (Date.now() - fetchedAt) / 1000;
    log(
      `(R1) Alice → KMS A: remove ${bob} from ${short(resource.uri)}${requestNote(recs)}; KMS A → Alice: removed${responseNote(recs)}.` +
        (copyAge === undefined ? '' : ` B's copy is ${copyAge.toFixed(1)} s old; B may use it for ${maxStaleness} s (federation.maxStaleness).`),
    );
    const deadline = revokedAt + (maxStaleness + 3) * 1000;
    let servedAgain = 0;
    let refusal: KmsError | undefined;
    const others: number[] = [];
    while (performance.now() < deadline) {
      check();
      try {
        await bobKms.retrieveKey(notice.keyUri);
        servedAgain++;
      } catch (err) {
        if (!(err instanceof KmsError)) throw err;
        if (err.status === 403) {
          refusal = err;
          break;
        }
        others.push(err.status);
      }
      await sleep(100, signal);
    }
    const revocationDelayMs = refusal ? Math.round(performance.now() - revokedAt) : -1;
    const revokedRefused = refusal !== undefined;
    const fromA = wire.since(mark, { from: 'KMS A', to: 'KMS B' }).filter((r) => r.method === 'POST' && r.status !== 0);
    const pushes = fromA.filter((r) => !isHandshake(r));
    const dropped = wire.since(mark, { from: 'KMS A', to: 'KMS B' }).filter((r) => r.status === 0);
    const refetches = wire.since(mark, { from: 'KMS B', to: 'KMS A' }).filter((r) => r.method === 'POST' && !isHandshake(r));
    const refusedAtA = peerAudit(A.db, bPeer, revocationAudit).filter((r) => r.principal === bob && r.status === 403);
    const copyAfter = copiesOf(B.db).find((c) => c.resourceUri === resource.uri);
    const copyState = !copyAfter
      ? 'B no longer holds a copy of the KRO'
      : copyAfter.fetchedAt === 0
        ? "B keeps its copy (A's signed answers, for the record), marked stale: it grants nothing more"
        : `B still holds the copy it fetched ${((Date.now() - copyAfter.fetchedAt) / 1000).toFixed(1)} s ago` +
          (Date.now() - copyAfter.fetchedAt >= maxStaleness * 1000 ? ', past the bound: kept for the record, never used for a grant' : '');
    log(
      `(R2) Bob → KMS B: retrieve ${short(notice.keyUri)} every 100 ms: ` +
        (revokedRefused
          ? `served ${servedAgain} more time(s), then refused 403 ("${refusal!.reason}") ${(revocationDelayMs / 1000).toFixed(2)} s after the removal.`
          : `still not refused after ${maxStaleness + 3} s (served ${servedAgain} times${others.length ? `, other failures: ${[...new Set(others)].join(', ')}` : ''}).`),
    );
    if (pushes.length > 0) {
      const opened = fromA.filter(isHandshake);
      log(
        `      KMS A → KMS B: ` +
          (opened.length > 0 ? `ECDHE as kms://${A.authority}${requestNote(opened)}, then ` : '') +
          `an invalidation of the KRO${requestNote(pushes)}, ${((pushes[0]!.at - revokedAt) / 1000).toFixed(2)} s after the removal; KMS B → KMS A: its answer${responseNote(pushes)}.`,
      );
    } else {
      log(
        `      No invalidation crossed KMS A → KMS B` +
          (dropped.length > 0 ? ` (the cut wire dropped ${dropped.length} attempt(s) of A's)` : '') +
          `: B refused once its copy passed federation.maxStaleness (${maxStaleness} s).`,
      );
    }
    if (refetches.length > 0) {
      log(
        `      KMS B → KMS A: re-fetch on behalf of ${bob}${requestNote(refetches)}; KMS A → KMS B: refused${responseNote(refetches)} (A's audit: ${refusedAtA.length} record(s) for ${bob} with 403). ${copyState}.`,
      );
    }
    const peerAuditRecords = peerAudit(A.db, bPeer).length;

    const ok = bobDecrypted && revokedRefused && serviceSawOnlyCiphertext;
    log('');
    log(
      `Result: ${ok ? 'OK' : 'FAILED'} — Bob ${bobDecrypted ? 'decrypted' : 'did NOT decrypt'} Alice's file through his own KMS; ` +
        (revokedRefused
          ? `after the revocation KMS B refused him in ${(revocationDelayMs / 1000).toFixed(2)} s (${pushes.length > 0 ? 'invalidation push' : `staleness bound ${maxStaleness} s`})`
          : 'after the revocation KMS B did NOT refuse him') +
        `; the file service ${serviceSawOnlyCiphertext ? 'saw only ciphertext' : 'saw PLAINTEXT OR A KEY'}.`,
    );

    return {
      bobDecrypted,
      serviceSawOnlyCiphertext,
      peerWireOpaque,
      revokedRefused,
      revocationDelayMs,
      servedAfterRevocation: servedAgain,
      invalidationPushed: pushes.length > 0,
      maxStaleness,
      keyUri: key.uri,
      resourceUri: resource.uri,
      fileUrl,
      peerAuditRecords,
      shutdownCodes,
    };
  } catch (err) {
    for (const { name, process: s } of served) {
      const tail = s.stderr.join('').trim().split('\n').slice(-3);
      const errors = s.stdout
        .join('')
        .split('\n')
        .filter((l) => /"level":(40|50|60)/.test(l))
        .slice(-3);
      for (const line of [...tail, ...errors]) log(`  [${name}, pid ${s.pid}] ${line}`);
    }
    throw err;
  } finally {
    await Promise.allSettled(clients.map((c) => c.close()));
    await service?.close();
    const codes = await Promise.all(served.map((s) => s.process.stop()));
    shutdownCodes.push(...codes);
    await Promise.allSettled(taps.map((t) => t.close()));
    rmSync(root, { recursive: true, force: true });
    if (served.length > 0) log(`Shutdown: SIGTERM → ${served.map((s, i) => `${s.name} exited ${codes[i]}`).join(', ')}; ${root} removed.`);
  }
}
