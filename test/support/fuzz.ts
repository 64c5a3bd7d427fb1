/**
 * A fuzz campaign against a live `kms serve` (PROTOCOL.md §3–§4): a structure-aware generator of
 * hostile messages — valid requests of every operation of the table with mutated JSON, strings no
 * member may hold in every string member, the malformed corpus's builders, mutated and bit-flipped
 * JWEs, truncations and re-encodings, wrong kids, messages on other users' channels, replays,
 * handshakes, oversized and deeply nested values — sent over HTTP batches and WebSocket with many
 * requests in flight. Every answer is checked: a compact JWS PS256 that verifies under the static
 * key or a JWE under the channel the message went to, with an integer status of §4 (never 500),
 * the requestId echoed whenever the request carried a readable one, and what the message's kind
 * promises (a 400 naming the field, a reset, a 403 …). Transport-level refusals (HTTP 400/413 with
 * `{"error"}`, WebSocket close 1009/1003) are checked too.
 *
 * Generation runs in one sequence from a seeded source, independent of the answers, so a seed
 * reproduces the same messages in the same order (the cryptography's own randomness aside). A
 * failure names the seed, the message's index and kind, and its plaintext with the bearer blanked:
 * no key material is ever printed.
 */
import { readFileSync } from 'node:fs';
import { CompactEncrypt, decodeProtectedHeader, importJWK, type CryptoKey as JoseKey } from 'jose';
import WebSocket from 'ws';
import { generateEphemeralKeyPair, joseCodec, operations, segmentCount, verifyStatic } from '@openkms/protocol';
import { hostileBuilders, BAD_TEXT, JUNK, type Hostile } from '../../packages/server/dist/test/support/hostile.js';
import { seededRandom, type SeededRandom } from '../../packages/server/dist/test/support/random.js';
import { TestClient } from '../../packages/server/dist/test/support/client.js';

/** Every status an answer may carry here (§4); 500 never, 502/504 need a peer, 503 a storage failure. */
export const ALLOWED_STATUSES = [200, 201, 204, 400, 401, 403, 404, 409, 413, 429, 499] as const;
const ANY = ALLOWED_STATUSES;
/** What a message that decrypts on a live channel may get: anything but a reset. */
const LIVE = ALLOWED_STATUSES.filter((s) => s !== 499);
const RESET = [499] as const;
/** The reason of a 503 (PROTOCOL.md §4: storage unreachable or too slow, retry later). */
export const OVERLOADED = 'storage unavailable: retry later';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** What an HTTP batch may carry (PROTOCOL.md §3), with room for the JSON around the messages. */
const MAX_BATCH_BYTES = 1_000_000;
/** Frames a campaign keeps in flight on one socket (the server closes one past 256). */
const WS_WINDOW = 16;

export interface CampaignOptions {
  url: string;
  /** The server's process id, for its RSS (/proc/<pid>/status). */
  pid: number;
  seed: number;
  /** Messages to send inside HTTP batches, and as WebSocket frames. */
  httpMessages: number;
  wsMessages: number;
  /** HTTP batches in flight at once (WebSocket: sockets at once). */
  concurrency?: number;
  /** Development tokens: three users of the KMS's domain (the third holds kmsAdmin) and one of a domain it does not serve. */
  tokens: { alice: string; bob: string; carol: string; foreign: string };
  /** Progress lines (none by default). */
  log?: (line: string) => void;
}

export interface CampaignResult {
  seed: number;
  sent: { http: number; batches: number; ws: number; rawHttp: number; wsCloses: number };
  /** Answers by status, and messages by kind. */
  statuses: Record<string, number>;
  kinds: Record<string, number>;
  /** Server RSS in KiB after the warm-up and at the end. */
  rss: { warm: number; end: number };
  failures: string[];
}

interface Item {
  kind: string;
  msg: string;
  expect: readonly number[];
  /** The requestId the answer must echo (a reset: this or a fresh UUID). */
  rid?: string | number;
  /** What the reason of a 400 must say. */
  reason?: RegExp;
  /** A JWE answer must be under this channel; `signed`: the answer must be a JWS (a handshake's). */
  channel?: string;
  signed?: boolean;
  /** A 2xx answer must be one of these (the operation's success statuses). */
  success?: readonly number[];
  /** The plaintext, bearers blanked, or what was done to the compact form; shown on failure. */
  what: string;
}

interface Channel {
  user: User;
  uri: string;
  key: Uint8Array;
  clientId: string;
}

interface User {
  name: string;
  id: string;
  bearer: string;
  main: Channel;
  /** Channels made only to be deleted by the campaign (one delete each). */
  spare: Channel[];
  keys: string[];
  resources: string[];
  authorizations: string[];
  hostile: Hostile;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** VmRSS of a process, in KiB. */
export function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for process ${pid}`);
  return Number(m[1]);
}

/** A body as a failure may show it: bearers and other credentials blanked. */
function shown(text: string): string {
  const blanked = text.replace(/"(bearer|jwk|d|k)":("(?:[^"\\]|\\.)*"|\{[^}]*\})/g, '"$1":"…"');
  return blanked.length > 400 ? `${blanked.slice(0, 400)}… (${blanked.length} chars)` : blanked;
}

/** String members of a JSON value, by path (array indices as numbers), as zod names them. */
function stringPaths(value: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  if (typeof value === 'string') return [prefix];
  if (Array.isArray(value)) return value.flatMap((v, i) => stringPaths(v, [...prefix, i]));
  if (value && typeof value === 'object') return Object.entries(value).flatMap(([k, v]) => stringPaths(v, [...prefix, k]));
  return [];
}

/** Every member path of a JSON value (objects and arrays, leaves included). */
function memberPaths(value: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  const here = prefix.length ? [prefix] : [];
  if (Array.isArray(value)) return [...here, ...value.flatMap((v, i) => memberPaths(v, [...prefix, i]))];
  if (value && typeof value === 'object') return [...here, ...Object.entries(value).flatMap(([k, v]) => memberPaths(v, [...prefix, k]))];
  return here;
}

const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;

function setAt(root: Record<string, unknown>, path: (string | number)[], value: unknown, remove = false): void {
  let node = root as Record<string | number, unknown>;
  for (const p of path.slice(0, -1)) node = node[p] as Record<string | number, unknown>;
  const last = path[path.length - 1]!;
  if (remove) {
    if (Array.isArray(node)) node.splice(Number(last), 1);
    else delete node[last];
  } else node[last] = value;
}

const getAt = (root: unknown, path: (string | number)[]): unknown => path.reduce<unknown>((n, p) => (n as Record<string | number, unknown>)[p], root);

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The statuses an operation succeeds with. */
function successOf(method: string): readonly number[] {
  if (method === 'create') return [201];
  if (method === 'delete') return [200, 204];
  return [200];
}

export async function runCampaign(options: CampaignOptions): Promise<CampaignResult> {
  const { url, pid, seed } = options;
  const concurrency = options.concurrency ?? 4;
  const log = options.log ?? (() => {});
  const random: SeededRandom = seededRandom('FUZZ_SEED', seed);
  const { int, chance, pick, bytes, uuid } = random;

  // --- the users, their channels and objects (made with valid requests before the campaign) ---
  const wellKnown = (await (await fetch(`${url}/.well-known/kms`)).json()) as { rsaPublicKey: { kid: string; n: string; e: string; kty: string } };
  const staticKid = wellKnown.rsaPublicKey.kid;
  const { kty, n, e } = wellKnown.rsaPublicKey;
  const staticVerify = (await importJWK({ kty, n, e }, 'PS256')) as JoseKey;
  const staticEncrypt = { 'RSA-OAEP': (await importJWK({ kty, n, e }, 'RSA-OAEP')) as JoseKey, 'RSA-OAEP-256': (await importJWK({ kty, n, e }, 'RSA-OAEP-256')) as JoseKey };
  const authority = staticKid.slice('kms://'.length);
  const domain = authority.replace(/^kms\./, '');
  const channels = new Map<string, Channel>();
  let counter = 0;
  const nextRid = (): string => `f-${seed}-${++counter}`;
  const ridOrInt = (): string | number => (chance(0.1) ? 1_000_000_000 + ++counter : nextRid());

  const connect = async (user: User): Promise<Channel> => {
    const c = await TestClient.connect(url, user.bearer, `fuzz-${user.name}-${uuid()}`);
    const channel = { user, uri: c.channelUri, key: c.channelKey, clientId: c.clientId };
    channels.set(channel.uri, channel);
    return channel;
  };
  const request = async (ch: Channel, body: Record<string, unknown>) => {
    const text = JSON.stringify({ requestId: nextRid(), client: { clientId: ch.clientId, credential: { bearer: ch.user.bearer } }, ...body });
    const [answer] = await post([await joseCodec.encryptChannel(enc.encode(text), ch.key, ch.uri)]);
    return (await decode(answer!)).payload;
  };

  const users: User[] = [];
  for (const [name, bearer] of [['alice', options.tokens.alice], ['bob', options.tokens.bob], ['carol', options.tokens.carol]] as const) {
    const user = { name, id: `${name}@${domain}`, bearer, spare: [], keys: [], resources: [], authorizations: [] } as unknown as User;
    user.main = await connect(user);
    for (let i = 0; i < 8; i++) user.spare.push(await connect(user));
    users.push(user);
  }
  for (const user of users) {
    const others = users.filter((u) => u !== user).map((u) => u.id);
    const made = await request(user.main, { method: 'create', uri: '/keys', count: 12 });
    if (made.status !== 201) throw new Error(`setup: create keys answered ${made.status} ${made.reason}`);
    user.keys = (made.keys as { uri: string }[]).map((k) => k.uri);
    for (let i = 0; i < 3; i++) {
      const res = await request(user.main, { method: 'create', uri: '/resources', authIds: i === 0 ? others : [others[i - 1]!], keyUris: user.keys.slice(i * 2, i * 2 + 2), anonymous: i });
      if (res.status !== 201) throw new Error(`setup: create resource answered ${res.status} ${res.reason}`);
      const r = res.resource as { uri: string; authorizationUris: string[] };
      user.resources.push(r.uri);
      user.authorizations.push(...r.authorizationUris);
    }
  }
  for (const user of users) {
    user.hostile = hostileBuilders(random, {
      staticKid,
      staticJwk: wellKnown.rsaPublicKey,
      channelUri: user.main.uri,
      clientId: user.main.clientId,
      tokens: { own: user.bearer, other: users.find((u) => u !== user)!.bearer, foreign: options.tokens.foreign },
      nextRid,
    });
  }
  const ephemeralJwks = await Promise.all(Array.from({ length: 8 }, async () => (await generateEphemeralKeyPair()).publicJwk));

  // --- answers ---
  async function decode(answer: string): Promise<{ payload: Record<string, any>; signed: boolean; kid: string }> {
    const segments = segmentCount(answer);
    const header = decodeProtectedHeader(answer);
    if (segments === 3) {
      if (header.alg !== 'PS256' || header.kid !== staticKid || Object.keys(header).length !== 2) throw new Error(`JWS header ${JSON.stringify(header)}`);
      const { plaintext } = await verifyStatic(answer, staticVerify);
      return { payload: JSON.parse(dec.decode(plaintext)) as Record<string, any>, signed: true, kid: staticKid };
    }
    if (segments !== 5) throw new Error(`${segments} segments`);
    const channel = channels.get(String(header.kid));
    if (header.alg !== 'dir' || header.enc !== 'A256GCM' || !channel || Object.keys(header).length !== 3) throw new Error(`JWE header ${JSON.stringify(header)}`);
    const { plaintext } = await joseCodec.decryptChannel(answer, channel.key);
    return { payload: JSON.parse(dec.decode(plaintext)) as Record<string, any>, signed: false, kid: channel.uri };
  }

  const statuses: Record<string, number> = {};
  const kinds: Record<string, number> = {};
  const failures: string[] = [];
  const fail = (index: number, item: Item | undefined, problem: string) => {
    if (failures.length < 50) failures.push(`seed ${seed}, message ${index}${item ? ` (${item.kind}): ${problem}\n  message: ${item.what}` : `: ${problem}`}`);
  };

  /** Checks one answer against its item (undefined: only that it is well-formed); returns its status. */
  async function check(index: number, item: Item | undefined, answer: unknown): Promise<number | undefined> {
    if (typeof answer !== 'string') return fail(index, item, `answer is ${typeof answer}`), undefined;
    let decoded: Awaited<ReturnType<typeof decode>>;
    try {
      decoded = await decode(answer);
    } catch (err) {
      return fail(index, item, `answer not a well-formed JWS/JWE of this KMS: ${(err as Error).message}`), undefined;
    }
    const { payload, signed, kid } = decoded;
    const status = payload.status as number;
    statuses[String(status)] = (statuses[String(status)] ?? 0) + 1;
    const problems: string[] = [];
    // Overload: the request's one storage deadline (2 s) also runs while it queues for the CPU
    // and the crypto thread pool behind hundreds of messages in flight; past it the answer is the
    // §4 "too slow, retry later". Well-formed, counted, never taken for the message's own answer.
    if (status === 503 && payload.reason === OVERLOADED && (item?.rid === undefined || payload.requestId === item.rid)) return status;
    if (!(ALLOWED_STATUSES as readonly unknown[]).includes(status)) problems.push(`status ${String(status)} (${String(payload.reason)})`);
    // An answer to a request whose requestId could not be read carries none, unless it is a reset
    // (docs/decisions.md, "requestId when the request could not be read").
    const ridOk = typeof payload.requestId === 'string' || Number.isSafeInteger(payload.requestId);
    if (!ridOk && (payload.requestId !== undefined || status === 499 || item?.rid !== undefined)) problems.push(`requestId ${JSON.stringify(payload.requestId)}`);
    if (status >= 400) {
      if (typeof payload.reason !== 'string') problems.push('an error without reason');
      else if (/internal|stack|Error:|at \w+ \(/.test(payload.reason)) problems.push(`reason leaks internals: ${payload.reason}`);
    }
    if (status === 499) {
      if (!signed) problems.push('a reset under a channel key');
      if (payload.requestId !== item?.rid && !UUID_RE.test(String(payload.requestId))) problems.push(`reset requestId ${JSON.stringify(payload.requestId)}`);
    }
    if (item) {
      if (!item.expect.includes(status)) problems.push(`status ${status} (${String(payload.reason)}), expected ${item.expect.join('|')}`);
      if (status !== 499) {
        if (item.rid !== undefined && payload.requestId !== item.rid) problems.push(`requestId ${JSON.stringify(payload.requestId)}, sent ${JSON.stringify(item.rid)}`);
        if (item.signed !== undefined && signed !== item.signed) problems.push(signed ? 'signed, expected under the channel key' : 'under a channel key, expected signed');
        if (item.channel !== undefined && !signed && kid !== item.channel) problems.push('answered under another channel');
        if (item.reason && status === 400 && !item.reason.test(String(payload.reason))) problems.push(`reason ${JSON.stringify(payload.reason)} does not match ${String(item.reason)}`);
        if (item.success && status < 300 && !item.success.includes(status)) problems.push(`success status ${status}, expected ${item.success.join('|')}`);
      }
    }
    if (problems.length) fail(index, item, problems.join('; '));
    return status;
  }

  // --- generation ---
  const sealOn = (ch: Channel, text: string | Uint8Array, kid = ch.uri, cty?: string) =>
    joseCodec.encryptChannel(typeof text === 'string' ? enc.encode(text) : text, ch.key, kid, cty);
  const sealStatic = (text: string | Uint8Array, alg: 'RSA-OAEP' | 'RSA-OAEP-256' = chance(0.8) ? 'RSA-OAEP' : 'RSA-OAEP-256') =>
    new CompactEncrypt(typeof text === 'string' ? enc.encode(text) : text).setProtectedHeader({ alg, enc: 'A256GCM', kid: staticKid }).encrypt(staticEncrypt[alg]);
  // A device-local credential.userId as the Webex client sends it (ignored, yet validated) now and then.
  const clientOf = (ch: Channel, bearer = ch.user.bearer) => ({ clientId: ch.clientId, credential: chance(0.2) ? { userId: uuid(), bearer } : { bearer } });
  const anyUser = () => pick(users);
  const allKeys = () => users.flatMap((u) => u.keys);
  const allResources = () => users.flatMap((u) => u.resources);
  const someKey = (u: User) => (chance(0.6) ? pick(u.keys) : chance(0.7) ? pick(allKeys()) : `kms://${authority}/keys/${uuid()}`);
  const someResource = (u: User) => (chance(0.6) ? pick(u.resources) : chance(0.7) ? pick(allResources()) : `kms://${authority}/resources/${uuid()}`);
  const relative = (uri: string) => (chance(0.3) ? uri.replace(`kms://${authority}`, '') : uri);
  const someAuthIds = () => Array.from({ length: 1 + int(3) }, () => (chance(0.8) ? pick(users).id : chance(0.5) ? pick(allResources()) : `${uuid()}@${domain}`));
  const date = () => new Date(Date.UTC(2026, int(12), 1 + int(28), int(24), int(60), int(60), int(1000))).toISOString();

  /** A valid request of a random operation of the table, for `u` on its main channel. */
  function validBody(u: User): { body: Record<string, unknown>; name: string } {
    const spec = pick(operations.filter((o) => o.key === 'channel'));
    const base = { requestId: ridOrInt(), client: clientOf(u.main) };
    const id = (uri: string) => uri.slice(uri.lastIndexOf('/') + 1);
    let patch: Record<string, unknown>;
    switch (spec.name) {
      case 'deleteEphemeralKey':
        // Another user's channel (403) or none (404): the user's own are deleted on their own channel.
        patch = { uri: chance(0.5) ? pick(users.filter((o) => o !== u)).main.uri : `/ecdhe/${uuid()}` };
        break;
      case 'createResource':
        patch = { uri: '/resources', [chance(0.8) ? 'authIds' : 'userIds']: chance(0.7) ? someAuthIds() : undefined, keyUris: chance(0.4) ? [relative(someKey(u))] : undefined, anonymous: chance(0.3) ? int(3) : undefined, ttl: chance(0.3) ? pick([0, 60, 3600]) : undefined };
        break;
      case 'retrieveResource':
        patch = { uri: relative(someResource(u)) };
        break;
      case 'createKeys':
        patch = { uri: '/keys', count: 1 + int(4) };
        break;
      case 'bindKey':
        patch = { uri: relative(someKey(u)), resourceUri: relative(someResource(u)) };
        break;
      case 'retrieveKey':
        patch = { uri: relative(someKey(u)) };
        break;
      case 'retrieveResourceKeys':
        patch = { uri: `${relative(someResource(u))}/keys`, boundAfter: chance(0.3) ? date() : undefined, boundBefore: chance(0.3) ? date() : undefined, count: chance(0.3) ? 1 + int(20) : undefined };
        break;
      case 'createAuthorizations':
        patch = chance(0.8) ? { uri: '/authorizations', resourceUri: relative(someResource(u)), authIds: someAuthIds() } : { uri: '/authorizations', resourceUri: relative(someResource(u)), anonymous: 1 };
        break;
      case 'retrieveAuthorizations':
        patch = { uri: `${relative(someResource(u))}/authorizations${chance(0.4) ? `?authId=${encodeURIComponent(pick(users).id)}` : ''}` };
        break;
      case 'deleteAuthorization':
        patch = { uri: chance(0.7) ? relative(pick(users.flatMap((o) => o.authorizations))) : `/authorizations/${uuid()}` };
        break;
      case 'deleteAuthorizationByAuthId':
        patch = { uri: `${relative(someResource(u))}/authorizations?authId=${encodeURIComponent(pick(users).id)}` };
        break;
      case 'bulkDeleteAuthorizations':
        patch = { uri: '/authorizations', resourceUri: relative(someResource(u)), authIds: someAuthIds() };
        break;
      case 'ping':
        patch = { uri: '/ping' };
        break;
      case 'createCmk':
        patch = { uri: '/cmk', assignedOrgId: chance(0.5) ? domain : undefined };
        break;
      case 'updateCmk':
        patch = { uri: `/cmk/${uuid()}`, state: pick(['active', 'inactive']) };
        break;
      case 'listCmks':
        patch = { uri: '/cmk', assignedOrgId: chance(0.5) ? domain : undefined };
        break;
      case 'retrieveCmk':
        patch = { uri: `/cmk/${uuid()}` };
        break;
      case 'receiveInvalidations':
        patch = { uri: '/federation/invalidations', resourceUris: [pick(allResources())] };
        break;
      default:
        patch = { uri: '/ping' };
    }
    const body: Record<string, unknown> = { ...base, method: spec.method };
    for (const [k, v] of Object.entries(patch)) if (v !== undefined) body[k] = v;
    return { body, name: spec.name };
  }

  /** Text that no member may hold, somewhere inside a string. */
  const badText = (s: string) => {
    const at = int(s.length + 1);
    return s.slice(0, at) + pick(BAD_TEXT) + s.slice(at);
  };

  /** A JSON text of `body` with one structural mutation; says what it did and whether the requestId survived. */
  function mutateBody(body: Record<string, unknown>): { text: string; what: string; ridKept: boolean } {
    const b = clone(body);
    const paths = memberPaths(b);
    const path = pick(paths);
    const touchesRid = path[0] === 'requestId';
    const name = path.join('.');
    switch (int(9)) {
      case 0:
        setAt(b, path, undefined, true);
        return { text: JSON.stringify(b), what: `removed ${name}`, ridKept: !touchesRid };
      case 1:
        setAt(b, path, pick<unknown>([null, 0, -1, 1.5, 2 ** 53, true, false, '', 'x', [], {}, [getAt(b, path)], { v: getAt(b, path) }]));
        return { text: JSON.stringify(b), what: `type swap at ${name}`, ridKept: !touchesRid };
      case 2:
        setAt(b, path, pick(JUNK) + junkOf(int(20)));
        return { text: JSON.stringify(b), what: `junk text at ${name}`, ridKept: !touchesRid };
      case 3: {
        const parent = path.slice(0, -1);
        const target = parent.length ? getAt(b, parent) : b;
        if (target && typeof target === 'object' && !Array.isArray(target)) (target as Record<string, unknown>)[pick(['extra', '__proto__x', 'constructor', 'toString', 'status', 'requestId2', junkOf(3)])] = randomJsonOf();
        return { text: JSON.stringify(b), what: `extra member beside ${name}`, ridKept: true };
      }
      case 4:
        setAt(b, path, 'x'.repeat(pick([300, 5_000, 70_000, 300_000])));
        return { text: JSON.stringify(b), what: `long string at ${name}`, ridKept: !touchesRid };
      case 5:
        setAt(b, path, Array.from({ length: pick([101, 1_000, 20_000]) }, (_, i) => (chance(0.5) ? `u${i}@${domain}` : i)));
        return { text: JSON.stringify(b), what: `long array at ${name}`, ridKept: !touchesRid };
      case 6: {
        const depth = pick([64, 1_000, 20_000, 100_000]);
        const marker = `@@deep${uuid()}@@`;
        setAt(b, path, marker);
        const deep = chance(0.5) ? '['.repeat(depth) + ']'.repeat(depth) : '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
        return { text: JSON.stringify(b).replace(`"${marker}"`, deep), what: `nesting ${depth} deep at ${name}`, ridKept: !touchesRid };
      }
      case 7:
        setAt(b, path, pick([1e308, -1e308, 2 ** 64, -(2 ** 63), 1e-300, Number.MAX_SAFE_INTEGER + 2]));
        return { text: JSON.stringify(b), what: `huge number at ${name}`, ridKept: !touchesRid };
      default: {
        // The credential as a compliance officer's: onBehalfOf, of any shape.
        const c = b.client as { credential?: Record<string, unknown> } | undefined;
        if (c && typeof c === 'object' && c.credential && typeof c.credential === 'object') c.credential.onBehalfOf = pick<unknown>([pick(users).id, badText(pick(users).id), 5, null, [], `x@${domain}`]);
        else b.onBehalfOf = pick(users).id;
        return { text: JSON.stringify(b), what: `onBehalfOf added`, ridKept: true };
      }
    }
  }
  const junkOf = (k: number) => users[0]!.hostile.junk(k);
  const randomJsonOf = () => users[0]!.hostile.randomJson();

  /** Flips one bit of one segment's bytes (header, IV, ciphertext or tag), re-encoded as base64url. */
  function bitFlip(compact: string): string {
    const parts = compact.split('.');
    const candidates = parts.map((p, i) => [p, i] as const).filter(([p]) => p.length > 0);
    const [seg, i] = pick(candidates);
    const raw = Buffer.from(seg, 'base64url');
    if (raw.length === 0) return compact.slice(0, -1);
    const at = int(raw.length);
    raw[at] = raw[at]! ^ (1 << int(8));
    parts[i] = raw.toString('base64url');
    return parts.join('.');
  }

  /** Valid messages sent so far: what replays and mutations start from. */
  const goodChannel: Item[] = [];
  const goodStatic: string[] = [];

  /** The next message of the campaign; `forWs`: it goes out as a frame (no transport-level kinds). */
  async function nextItem(): Promise<Item> {
    const u = anyUser();
    const h = u.hostile;
    const r = int(100);
    if (r < 14 || goodChannel.length < 8) {
      const { body, name } = validBody(u);
      const text = JSON.stringify(body);
      const item: Item = { kind: `valid:${name}`, msg: await sealOn(u.main, text), expect: LIVE, rid: body.requestId as string | number, channel: u.main.uri, signed: false, success: successOf(String(body.method)), what: shown(text) };
      if (goodChannel.length < 200) goodChannel.push(item);
      else goodChannel[int(200)] = item;
      return item;
    }
    if (r < 30) {
      const { body, name } = validBody(u);
      const m = mutateBody(body);
      return { kind: 'mutated-body', msg: await sealOn(u.main, m.text), expect: LIVE, rid: m.ridKept ? (body.requestId as string | number) : undefined, channel: u.main.uri, signed: false, what: `${name}, ${m.what}: ${shown(m.text)}` };
    }
    if (r < 44) {
      // A string no member may hold, in any string member the operation reads: a 400 naming it.
      const { body, name } = validBody(u);
      const paths = stringPaths(body).filter((p) => p[0] !== 'method');
      const path = pick(paths);
      setAt(body, path, badText(String(getAt(body, path))));
      const field = path.join('.');
      const text = JSON.stringify(body);
      // An operation's own members are read once the caller may use it: a user asking a peer's
      // operation, or an administrator's without the role, is refused first (403), and the member
      // goes nowhere. The basic request's members are read before anything.
      const basic = ['requestId', 'client', 'uri'].includes(String(path[0]));
      const gated = name === 'receiveInvalidations' || (/Cmk/.test(name) && u.name !== 'carol');
      return {
        kind: 'bad-text',
        msg: await sealOn(u.main, text),
        expect: basic || !gated ? [400] : [400, 403],
        rid: path[0] === 'requestId' ? undefined : (body.requestId as string | number),
        // An enumerated member (state) says what it may be instead.
        reason: new RegExp(`^invalid field ${escapeRe(field)}: ${field === 'state' ? 'Invalid option' : 'contains'}`),
        channel: u.main.uri,
        signed: false,
        what: `${name}, bad text at ${field}: ${shown(text)}`,
      };
    }
    if (r < 60) {
      // The malformed corpus's builders, on this user's channel (they expect a user without roles).
      const cu = pick(users.filter((o) => o.name !== 'carol'));
      const h = cu.hostile;
      const which = int(6);
      let text: string;
      let expect: readonly number[] = [400];
      let rid: string | number | undefined;
      let reason: RegExp | undefined;
      if (which === 0) ({ text, rid, expect } = h.brokenBasic(h.validPing()));
      else if (which === 1) ({ text, rid, reason } = h.badText(h.validPing()));
      else if (which === 2) {
        const b = h.brokenOperation();
        text = JSON.stringify(b.body);
        rid = b.body.requestId as string;
        expect = b.expect;
      } else if (which === 3) ({ text, rid, expect } = h.protoText());
      else if (which === 4) ({ text, rid, expect } = h.pathological());
      else text = pick([JSON.stringify(h.randomJson()), h.junk(int(40)), '', 'null', '[]', JSON.stringify(h.validPing()).slice(0, -1 - int(10))]);
      return { kind: `corpus:${['broken-basic', 'bad-text', 'broken-operation', 'proto-keys', 'pathological', 'not-a-request'][which]}`, msg: await sealOn(cu.main, text), expect, rid, reason, channel: cu.main.uri, signed: false, what: shown(text) };
    }
    if (r < 70) {
      const good = pick(goodChannel);
      return { kind: 'mutated-jwe', msg: h.mutateCompact(good.msg), expect: RESET, signed: true, what: `structural mutation of: ${good.what}` };
    }
    if (r < 75) {
      const good = pick(goodChannel);
      return { kind: 'bit-flip', msg: bitFlip(good.msg), expect: RESET, signed: true, what: `one bit flipped in: ${good.what}` };
    }
    if (r < 79) {
      // Sealed under the user's own channel key, named by another kid: nothing decrypts it.
      const { body } = validBody(u);
      const text = JSON.stringify(body);
      const kid = pick([pick(users.filter((o) => o !== u)).main.uri, `kms://${authority}/ecdhe/${uuid()}`, `/ecdhe/${uuid()}`, staticKid, pick(u.spare).uri.replace(authority, `x.${authority}`)]);
      return { kind: 'wrong-kid', msg: await sealOn(u.main, text, kid), expect: RESET, signed: true, what: `kid ${kid}: ${shown(text)}` };
    }
    if (r < 84) {
      // A message on another user's channel with this user's credential: 403 under that channel.
      const other = pick(users.filter((o) => o !== u));
      const { body, name } = validBody(u);
      const text = JSON.stringify(body);
      return { kind: 'other-users-channel', msg: await sealOn(other.main, text), expect: [403], rid: body.requestId as string | number, channel: other.main.uri, signed: false, what: `${name} on ${other.name}'s channel: ${shown(text)}` };
    }
    if (r < 90) {
      const good = pick(goodChannel);
      // On a main channel it is answered (the first answer again, or run again); on a deleted one,
      // reset — or 404 when the copy was opened while the channel still lived (both in flight).
      return { ...good, kind: 'replay', expect: good.kind === 'delete-own-channel' ? [204, 404, 499] : LIVE, success: undefined, what: `replay of: ${good.what}` };
    }
    if (r < 96) {
      // Handshakes under the static key: valid, with a string no member may hold, or mutated.
      const jwk = pick(ephemeralJwks);
      const rid = nextRid();
      const body = { requestId: rid, client: clientOf(u.main), method: 'create', uri: chance(0.5) ? '/ecdhe' : `kms://${authority}/ecdhe`, jwk: { ...jwk } };
      const roll = int(10);
      if (roll < 3) {
        const text = JSON.stringify(body);
        const msg = await sealStatic(text);
        if (goodStatic.length < 50) goodStatic.push(msg);
        return { kind: 'handshake', msg, expect: [201], rid, signed: true, what: shown(text) };
      }
      if (roll < 7) {
        const paths = stringPaths(body).filter((p) => p[0] !== 'method');
        const path = pick(paths);
        setAt(body, path, badText(String(getAt(body, path))));
        const field = path.join('.');
        const text = JSON.stringify(body);
        return { kind: 'handshake-bad-text', msg: await sealStatic(text), expect: [400], rid: path[0] === 'requestId' ? undefined : rid, reason: new RegExp(`^invalid field ${escapeRe(field)}: contains`), signed: true, what: `bad text at ${field}: ${shown(text)}` };
      }
      if (roll < 9 || goodStatic.length === 0) {
        const m = mutateBody(body);
        return { kind: 'handshake-mutated-body', msg: await sealStatic(m.text), expect: ANY.filter((s) => s !== 200 && s !== 204), rid: m.ridKept ? rid : undefined, signed: true, what: `${m.what}: ${shown(m.text)}` };
      }
      return { kind: 'handshake-mutated-jwe', msg: chance(0.5) ? h.mutateCompact(pick(goodStatic)) : bitFlip(pick(goodStatic)), expect: RESET, signed: true, what: 'mutation of a valid handshake' };
    }
    if (r < 98) {
      // A user's channel deleted on itself (204), then dead: anything later on it is a reset.
      const live = u.spare.find((c) => !deleted.has(c.uri));
      if (live) {
        deleted.add(live.uri);
        const rid = nextRid();
        const text = JSON.stringify({ requestId: rid, client: clientOf(live), method: 'delete', uri: relative(live.uri) });
        // 404 too: a replay of this very message (picked from goodChannel below) may be in flight
        // with it, and whichever copy runs first deletes the channel.
        const item: Item = { kind: 'delete-own-channel', msg: await sealOn(live, text), expect: [204, 404, 499], rid, channel: live.uri, signed: false, what: shown(text) };
        goodChannel.push(item);
        return item;
      }
      return nextItem();
    }
    // Random bytes and text with no JOSE structure, some large.
    const msg = pick([
      () => bytes(int(300)).toString('latin1'),
      () => bytes(int(600)).toString('base64'),
      () => Array.from({ length: 5 }, () => h.randB64u(int(80))).join('.'),
      () => h.junk(int(100)),
      () => '',
      () => h.randB64u(50_000 + int(150_000)),
    ])();
    return { kind: 'random', msg, expect: RESET, signed: true, what: `random text of ${msg.length} chars` };
  }
  const deleted = new Set<string>();

  // --- sending ---
  async function post(messages: string[]): Promise<string[]> {
    const res = await fetch(`${url}/kms/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kmsMessages: messages }) });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${text.slice(0, 200)}`);
    const answers = (JSON.parse(text) as { kmsMessages: unknown }).kmsMessages;
    if (!Array.isArray(answers) || answers.length !== messages.length) throw new Error(`HTTP 200 with ${Array.isArray(answers) ? answers.length : 'no'} answers for ${messages.length} messages`);
    return answers as string[];
  }

  interface RawCase {
    what: string;
    body: string;
    status: number;
    method: string;
    type: string;
  }
  /** A body that is not a batch, or too large: refused by the transport, 400/413 with `{"error"}`. */
  function rawCase(): RawCase {
    const good = pick(goodChannel).msg;
    const cases: [string, string, number, string?][] = [
      ['not JSON', pick(['', '{', 'kmsMessages', '\u0000', bytes(50).toString('latin1')]), 400],
      ['not a batch', pick(['null', '[]', '{}', '{"kmsMessages":[]}', '{"kmsMessages":"x"}', '{"kmsMessages":[1]}', `{"kmsMessages":[${JSON.stringify(good)},null]}`, '{"kmsmessages":["a"]}']), 400],
      ['101 messages', JSON.stringify({ kmsMessages: Array.from({ length: 101 }, () => good) }), 413],
      ['over 1 MiB', JSON.stringify({ kmsMessages: [h1MiB()] }), 413],
      ['a GET', '', 404, 'GET'],
    ];
    const [what, body, status, method = 'POST'] = pick(cases);
    return { what, body, status, method, type: pick(['application/json', 'text/plain', 'application/x-www-form-urlencoded']) };
  }

  async function sendRaw(index: number, { what, body, status, method, type }: RawCase): Promise<void> {
    let res: Response;
    try {
      res = await fetch(`${url}/kms/messages`, method === 'GET' ? {} : { method, headers: { 'content-type': type }, body });
    } catch (err) {
      // A 413 may close the connection before the whole body is sent.
      if (status === 413) return;
      return fail(index, undefined, `${what}: ${(err as Error).message}`);
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    statuses[`http ${res.status}`] = (statuses[`http ${res.status}`] ?? 0) + 1;
    if (res.status !== status || typeof (parsed as { error?: unknown } | undefined)?.error !== 'string') fail(index, undefined, `${what}: HTTP ${res.status} ${text.slice(0, 200)}, expected ${status} with {"error"}`);
  }
  const h1MiB = () => users[0]!.hostile.randB64u(1024 * 1024 + 1 + int(1000));

  let index = 0;
  let httpSent = 0;
  let batches = 0;
  let rawSent = 0;
  let warm = 0;
  const warmAfter = Math.min(2_000, Math.floor(options.httpMessages / 4));

  // HTTP: one producer makes the batches in order (so the seed fixes them), workers send them.
  const queue: { items: Item[]; start: number; raw?: RawCase }[] = [];
  let produced = 0;
  let producing = true;
  const waiting: (() => void)[] = [];
  const wake = () => waiting.splice(0).forEach((w) => w());
  const producer = (async () => {
    while (produced < options.httpMessages) {
      while (queue.length >= concurrency * 2) await new Promise<void>((r) => setTimeout(r, 1));
      const size = pick([1, 2, 5, 10, 20, 20, 40, 40, 100]);
      const items: Item[] = [];
      let bytesIn = 20;
      while (items.length < size && produced + items.length < options.httpMessages) {
        const item = await nextItem();
        const len = item.msg.length * 1.2 + 8;
        if (len + 20 > MAX_BATCH_BYTES) continue;
        if (items.length > 0 && bytesIn + len > MAX_BATCH_BYTES) {
          // Too large for this batch: it goes first in the next one.
          queue.push({ items: [...items], start: produced });
          produced += items.length;
          items.length = 0;
          bytesIn = 20;
        }
        items.push(item);
        bytesIn += len;
      }
      if (items.length) {
        queue.push({ items, start: produced, raw: chance(0.05) ? rawCase() : undefined });
        produced += items.length;
      }
      wake();
    }
    producing = false;
    wake();
  })();
  const worker = async () => {
    for (;;) {
      const batch = queue.shift();
      if (!batch) {
        if (!producing) return;
        await new Promise<void>((r) => waiting.push(r));
        continue;
      }
      let answers: string[];
      try {
        answers = await post(batch.items.map((i) => i.msg));
      } catch (err) {
        fail(batch.start, batch.items[0], `batch of ${batch.items.length}: ${(err as Error).message}`);
        continue;
      }
      batches++;
      for (let j = 0; j < batch.items.length; j++) {
        const item = batch.items[j]!;
        kinds[item.kind.split(':')[0]!] = (kinds[item.kind.split(':')[0]!] ?? 0) + 1;
        await check(batch.start + j, item, answers[j]);
      }
      httpSent += batch.items.length;
      if (batch.raw) {
        rawSent++;
        await sendRaw(batch.start, batch.raw);
      }
      if (!warm && httpSent >= warmAfter) warm = rssKiB(pid);
      if (batches % 50 === 0) log(`http: ${httpSent} messages in ${batches} batches`);
    }
  };
  await Promise.all([producer, ...Array.from({ length: concurrency }, worker)]);
  index = produced;

  // WebSocket: several sockets, each with a window of frames in flight; answers come in any
  // order, so they are matched to their messages by requestId (those without one are checked for
  // well-formedness, and counted).
  let wsSent = 0;
  const perSocket = Math.ceil(options.wsMessages / Math.max(1, Math.min(4, concurrency)));
  const wsItems: Item[] = [];
  while (wsItems.length < options.wsMessages) {
    const item = await nextItem();
    if (Buffer.byteLength(item.msg) < 1024 * 1024) wsItems.push(item);
  }
  const sockets: Item[][] = [];
  for (let i = 0; i < wsItems.length; i += perSocket) sockets.push(wsItems.slice(i, i + perSocket));
  await Promise.all(
    sockets.map(async (items, s) => {
      const base = index + s * perSocket;
      const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/kms/ws`);
      await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
      const byRid = new Map<string, Item[]>();
      for (const item of items) if (item.rid !== undefined && !item.expect.includes(499)) byRid.set(String(item.rid), [...(byRid.get(String(item.rid)) ?? []), item]);
      let inFlight = 0;
      let answered = 0;
      let next = 0;
      let closed: number | undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          fail(base, undefined, `WebSocket ${s}: ${answered}/${items.length} answers after 60 s (closed: ${closed})`);
          resolve();
        }, 60_000);
        const pump = () => {
          while (inFlight < WS_WINDOW && next < items.length) {
            const item = items[next++]!;
            kinds[item.kind.split(':')[0]!] = (kinds[item.kind.split(':')[0]!] ?? 0) + 1;
            ws.send(item.msg);
            inFlight++;
            wsSent++;
          }
        };
        ws.on('close', (code) => {
          closed = code;
          if (answered < items.length) {
            fail(base, undefined, `WebSocket ${s} closed with ${code} after ${answered}/${items.length} answers`);
            clearTimeout(timer);
            resolve();
          }
        });
        ws.on('message', (data) => {
          const text = String(data);
          void (async () => {
            let rid: unknown;
            try {
              rid = (await decode(text)).payload.requestId;
            } catch {
              rid = undefined;
            }
            const waiting = rid === undefined ? undefined : byRid.get(String(rid));
            const item = waiting?.shift();
            await check(base + answered, item, text);
            answered++;
            inFlight--;
            if (answered === items.length) {
              clearTimeout(timer);
              resolve();
            } else pump();
          })();
        });
        pump();
      });
      for (const [rid, left] of byRid) for (const item of left) fail(base, item, `WebSocket: no answer echoed requestId ${rid}`);
      if (ws.readyState === WebSocket.OPEN) ws.close();
    }),
  );

  // Frames the socket refuses: over 1 MiB closes it with 1009, a binary frame with 1003.
  let wsCloses = 0;
  for (const [what, frame, code] of [
    ['a frame over 1 MiB', h1MiB(), 1009],
    ['a binary frame', bytes(64), 1003],
  ] as const) {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/kms/ws`);
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const closed = new Promise<number>((resolve) => ws.once('close', resolve));
    ws.send(frame);
    const got = await closed;
    wsCloses++;
    if (got !== code) fail(index, undefined, `WebSocket, ${what}: closed with ${got}, expected ${code}`);
  }

  const end = rssKiB(pid);
  return { seed, sent: { http: httpSent, batches, ws: wsSent, rawHttp: rawSent, wsCloses }, statuses, kinds, rss: { warm: warm || end, end }, failures };
}
