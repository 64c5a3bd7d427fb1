/**
 * The asking side of a federated read (draft 3.3 steps 6-9, PROTOCOL.md §6). When a user of this
 * KMS asks for a key or a KRO of a peer, this KMS fetches the KRO from the peer over its peer
 * channel, keeps a copy sealed under its own CMK together with the peer's signed answers (for
 * archiving and legal discovery), and enforces the policy for its own user from that copy. A copy
 * is used for `federation.maxStaleness` seconds; a refusal is never cached.
 */
import type { Answer, StaticJwk } from '@openkms/client';
import { KmsError, Status, isUuid, objectRef, parseDate, retrieveKeysSchema, validate } from '@openkms/protocol';
import type { UserPrincipal } from '../identity/principal.js';
import type { Keyring } from '../keyring/keyring.js';
import { COPY_INVALIDATED } from '../model.js';
import { UnsealedCache } from '../keyring/unsealed-cache.js';
import { MAX_ARCHIVED_VERSIONS_READ, MAX_CACHED_COPIES, MAX_CACHED_COPY_BYTES, MAX_FEDERATED_PAGES, MAX_KEYS_PER_ANSWER, MAX_TRACKED_KROS, REFETCH_INTERVAL_MS } from '../limits.js';
import type { Handler } from '../operations/context.js';
import { userPrincipal } from '../operations/guards.js';
import type { Store } from '../store/store.js';
import type { CopyRow } from '../model.js';
import type { Invalidations } from './inbox.js';
import type { PeerChannels } from './peer-channels.js';
import type { Peer } from './peers.js';

/** A key as a peer released it: no userId or clientId (the peer never reveals its users). */
export interface FederatedKey {
  uri: string;
  jwk: { kty: 'oct'; kid: string; k: string };
  createDate: string;
  expirationDate: string;
  resourceUri: string;
  bindDate: string;
}

export interface FederatedAuthorization {
  uri: string;
  authId: string;
  createDate: string;
  resourceUri: string;
}

/**
 * What a copy holds: the KRO as released (all pages merged), the peer's signed answers and the
 * static key (with its certificate chain) they verified under — the proof of origin legal
 * discovery hands on (copies made before the signer was kept have none).
 */
export interface CopyContent {
  resource: { uri: string; keys: FederatedKey[]; authorizations: FederatedAuthorization[] };
  proofs: string[];
  signer?: StaticJwk;
}

export type CopyTarget = { keyUri: string } | { resourceUri: string };

/** What the ask-a-peer read handlers need: the copy that answers a user. */
export interface CopySource {
  copyFor(user: UserPrincipal, target: CopyTarget): Promise<CopyContent>;
}

export interface CopiesOptions {
  authority: string;
  store: Store;
  keyring: Keyring;
  channels: PeerChannels;
  inbox: Invalidations;
  /** federation.maxStaleness, in ms. */
  maxStalenessMs: number;
  now: () => number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const copyAad = (resourceUri: string) => `copy:${resourceUri}`;

export class Copies implements CopySource {
  /**
   * Per node, on purpose: it only spaces out re-fetches for users missing from a fresh copy (each
   * node asks the peer at most once a second per KRO); whether a copy may be used is the store's.
   */
  private readonly lastRefetch = new Map<string, number>();
  /** Copies unsealed and parsed, while their row is unchanged: a warm read decrypts nothing. */
  private readonly unsealed = new UnsealedCache<CopyContent>(MAX_CACHED_COPIES, MAX_CACHED_COPY_BYTES);

  constructor(private readonly o: CopiesOptions) {}

  /** The copy of `resourceUri`, unsealed, with its age; undefined when there is none. */
  private async load(resourceUri: string): Promise<{ content: CopyContent; fetchedAt: number } | undefined> {
    const row = await this.o.store.getCopy(resourceUri);
    if (!row) {
      this.unsealed.delete(resourceUri);
      return undefined;
    }
    let content = this.unsealed.get(resourceUri, row.sealed);
    if (!content) {
      // Frozen: the same object now answers many requests, and none may change it for the next.
      content = deepFreeze(await unsealCopy(this.o.keyring, row));
      this.unsealed.set(resourceUri, row.sealed, content);
    }
    return { content, fetchedAt: row.fetchedAt };
  }

  /** The newest archived version of `resourceUri` that grants `user` the target, if any. */
  private async fromArchive(resourceUri: string, user: UserPrincipal, target: CopyTarget): Promise<CopyContent | undefined> {
    for (const row of await this.o.store.archivedCopies(resourceUri, MAX_ARCHIVED_VERSIONS_READ)) {
      const content = await unsealCopy(this.o.keyring, row);
      if (grants(content, user, target)) return content;
    }
    return undefined;
  }

  private fresh(fetchedAt: number): boolean {
    return fetchedAt !== COPY_INVALIDATED && this.o.now() - fetchedAt < this.o.maxStalenessMs;
  }

  /**
   * The copy that answers `user`'s request for a peer's key (`keyUri`) or KRO (`resourceUri`):
   * a fresh copy that already authorizes the user, else a new fetch. A's 403/404 reach the user;
   * any other failure is a 502, no answer in time a 504. Never a grant from a stale copy, but to
   * the user's compliance officer (`user.agent`), for whom any copy that authorizes the user serves.
   */
  async copyFor(user: UserPrincipal, target: CopyTarget): Promise<CopyContent> {
    const uri = 'keyUri' in target ? target.keyUri : target.resourceUri;
    const authority = objectRef(uri, 'keyUri' in target ? 'keys' : 'resources', this.o.authority)?.authority ?? 'peer';
    return this.o.channels.withinDeadline(this.copyForUnbounded(user, target), authority);
  }

  private async copyForUnbounded(user: UserPrincipal, target: CopyTarget): Promise<CopyContent> {
    const uri = 'keyUri' in target ? target.keyUri : target.resourceUri;
    const ref = objectRef(uri, 'keyUri' in target ? 'keys' : 'resources', this.o.authority)!;
    const peer = this.o.channels.peerOf(ref.authority);
    const resourceUri = 'resourceUri' in target ? target.resourceUri : await this.o.store.copyOfKey(target.keyUri);
    const copy = resourceUri === undefined ? undefined : await this.load(resourceUri);
    // Legal discovery (PROTOCOL.md §6): the copies are the organisation's archive. A compliance
    // officer reading as the user is served what the copy — or an archived version of it — shows
    // the user was given, fresh or not, without asking the peer (which may since have revoked the
    // user, or be unreachable).
    if (user.agent !== undefined && resourceUri !== undefined) {
      if (copy && grants(copy.content, user, target)) return copy.content;
      const archived = await this.fromArchive(resourceUri, user, target);
      if (archived) return archived;
    }
    if (copy && this.fresh(copy.fetchedAt)) {
      if (grants(copy.content, user, target)) return copy.content;
      // A user not (yet) in a fresh copy may just have been added: re-fetch, at most once a second.
      const holdsKey = holdsTarget(copy.content, target);
      const last = this.lastRefetch.get(copy.content.resource.uri) ?? 0;
      if (holdsKey && this.o.now() - last < REFETCH_INTERVAL_MS) throw KmsError.forbidden('not authorized on this resource');
      if (this.lastRefetch.size > MAX_TRACKED_KROS) this.lastRefetch.clear();
      this.lastRefetch.set(copy.content.resource.uri, this.o.now());
    }
    // A KRO is asked for as its keys (the operation a peer channel may use), a key as itself.
    const askUri = 'keyUri' in target ? uri : `${uri}/keys`;
    let content = await this.fetch(peer, user, askUri, copy?.content);
    if (content === 'invalidated') content = await this.fetch(peer, user, askUri, copy?.content);
    if (content === 'invalidated') throw new KmsError('PEER_FAILED', `kms://${peer.authority} kept invalidating the KRO while it was fetched`);
    if (!authorizes(content, user.id)) throw KmsError.forbidden('not authorized on this resource');
    return content;
  }

  /**
   * Fetches every page of the KRO from the peer for `user`, checks it, stores the copy — and
   * archives it when it is a new version: its keys or authorizations differ from `previous`.
   */
  private fetch(peer: Peer, user: UserPrincipal, uri: string, previous: CopyContent | undefined): Promise<CopyContent | 'invalidated'> {
    return this.o.inbox.during((startedAt) => this.fetchPages(peer, user, uri, startedAt, previous));
  }

  private async fetchPages(peer: Peer, user: UserPrincipal, uri: string, startedAt: number, previous: CopyContent | undefined): Promise<CopyContent | 'invalidated'> {
    const proofs: string[] = [];
    let signer: StaticJwk | undefined;
    let resource: CopyContent['resource'] | undefined;
    let next: string | undefined;
    let askUri = uri;
    for (let page = 0; page < MAX_FEDERATED_PAGES; page++) {
      const body: Record<string, unknown> = { method: 'retrieve', uri: askUri, federated: true, onBehalfOf: user.id };
      if (next !== undefined) body.boundBefore = next;
      let answer: Answer;
      try {
        answer = await this.o.channels.exchange(peer, body as { method: string; uri: string });
        await this.o.channels.audit(user, peer, 'retrieve', askUri, 200);
      } catch (err) {
        const failure = this.o.channels.failure(err, peer);
        await this.o.channels.audit(user, peer, 'retrieve', askUri, failure.status);
        throw failure;
      }
      const part = checkAnswer(answer, peer, uri);
      proofs.push(answer.proof!);
      signer ??= answer.signer;
      resource = resource ? { ...resource, keys: [...resource.keys, ...part.resource.keys] } : part.resource;
      next = part.next;
      if (next === undefined) break;
      askUri = `${part.resource.uri}/keys`;
    }
    const content: CopyContent = { resource: resource!, proofs, ...(signer && { signer }) };
    if (uri.includes('/keys/') && !content.resource.keys.some((k) => k.uri === uri)) {
      throw new KmsError('PEER_FAILED', `kms://${peer.authority} answered without the key asked for`);
    }
    // An invalidation of this KRO received (by any node) since the fetch began makes its answer
    // unusable: the store refuses it, atomically with the invalidations.
    const cmk = this.o.keyring.activeCmk();
    const stored = await this.o.store.putCopy(
      {
        resourceUri: content.resource.uri,
        authority: peer.authority,
        fetchedAt: this.o.now(),
        cmkId: cmk.id,
        sealed: this.o.keyring.seal(cmk.id, enc.encode(JSON.stringify(content)), copyAad(content.resource.uri)),
      },
      content.resource.keys.map((k) => k.uri),
      startedAt,
      previous === undefined || versionOf(previous) !== versionOf(content),
    );
    if (stored === 'invalidated') return 'invalidated';
    return content;
  }
}

function authorizes(content: CopyContent, userId: string): boolean {
  return content.resource.authorizations.some((a) => a.authId === userId);
}

/** Whether a copy shows `user` authorized on its KRO and, for a key, holds that key. */
function grants(content: CopyContent, user: UserPrincipal, target: CopyTarget): boolean {
  return holdsTarget(content, target) && authorizes(content, user.id);
}

function holdsTarget(content: CopyContent, target: CopyTarget): boolean {
  return 'keyUri' in target ? content.resource.keys.some((k) => k.uri === target.keyUri) : true;
}

/** What makes two copies of a KRO different versions for the archive: its keys and its authorizations. */
function versionOf(content: CopyContent): string {
  const { keys, authorizations } = content.resource;
  return JSON.stringify([keys.map((k) => k.uri).sort(), authorizations.map((a) => `${a.uri} ${a.authId}`).sort()]);
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const member of Object.values(value)) deepFreeze(member);
  }
  return value;
}

/** A copy or archived version, unsealed (sealed under the CMK active then, AAD `copy:<KRO URI>`). */
export async function unsealCopy(keyring: Keyring, row: CopyRow): Promise<CopyContent> {
  const plain = await keyring.unseal(row.cmkId, row.sealed, copyAad(row.resourceUri));
  return JSON.parse(dec.decode(plain.reveal())) as CopyContent;
}

const ABSOLUTE = (authority: string, collection: 'keys' | 'resources', uri: unknown): boolean => {
  if (typeof uri !== 'string') return false;
  const ref = objectRef(uri, collection, '');
  return ref !== undefined && ref.authority === authority && uri.startsWith('kms://') && isUuid(ref.id);
};

/**
 * Checks that a peer's answer is the KRO it was asked for and holds only that KRO's keys: an
 * answer naming another authority, or a key of another resource, is refused (502).
 */
export function checkAnswer(answer: Answer, peer: Peer, askedUri: string): { resource: CopyContent['resource']; next?: string } {
  const bad = (what: string) => new KmsError('PEER_FAILED', `kms://${peer.authority} answered ${what}`);
  if (!answer.proof) throw bad('without its signature');
  const resource = answer.payload.resource as { uri?: unknown; keys?: unknown; authorizations?: unknown; next?: unknown } | undefined;
  if (!resource || !ABSOLUTE(peer.authority, 'resources', resource.uri)) throw bad('no resource of its own');
  const resourceUri = resource.uri as string;
  if (askedUri.includes('/resources/') && !askedUri.startsWith(resourceUri)) throw bad('another resource than the one asked for');
  if (!Array.isArray(resource.keys) || !Array.isArray(resource.authorizations)) throw bad('a malformed resource');
  const keys = resource.keys as FederatedKey[];
  for (const k of keys) {
    if (!ABSOLUTE(peer.authority, 'keys', k?.uri) || k.resourceUri !== resourceUri) throw bad('a key of another resource');
    if (k.jwk?.kty !== 'oct' || typeof k.jwk.k !== 'string' || Buffer.from(k.jwk.k, 'base64url').length !== 32) throw bad('a malformed key');
    if (parseDate(String(k.bindDate)) === undefined) throw bad('a key without bindDate');
  }
  const authorizations = resource.authorizations as FederatedAuthorization[];
  for (const a of authorizations) {
    if (typeof a?.authId !== 'string' || a.resourceUri !== resourceUri) throw bad('a malformed authorization');
  }
  return { resource: { uri: resourceUri, keys, authorizations }, next: typeof resource.next === 'string' ? resource.next : undefined };
}

/** What the ask-a-peer handlers receive besides the local parts. */
export interface AskDeps {
  copies: CopySource;
}

/** retrieve kms://<peer>/keys/<id> for a user of this KMS: served from the copy. */
export const keyFromCopy: Handler<AskDeps> = async (ctx, deps) => {
  const keyUri = `kms://${ctx.authority}/keys/${ctx.id}`;
  const copy = await deps.copies.copyFor(userPrincipal(ctx.principal), { keyUri });
  const key = copy.resource.keys.find((k) => k.uri === keyUri);
  if (!key) throw KmsError.notFound('no such key');
  return { status: Status.OK, key };
};

/** retrieve kms://<peer>/resources/<id>/keys: draft 3.3 step 9, the filters applied here. */
export const resourceKeysFromCopy: Handler<AskDeps> = async (ctx, deps) => {
  const filter = validate(retrieveKeysSchema, ctx.request);
  const copy = await deps.copies.copyFor(userPrincipal(ctx.principal), { resourceUri: `kms://${ctx.authority}/resources/${ctx.id}` });
  const after = filter.boundAfter === undefined ? undefined : parseDate(filter.boundAfter)!;
  const before = filter.boundBefore === undefined ? undefined : parseDate(filter.boundBefore)!;
  const keys = copy.resource.keys.filter((k) => {
    const bound = parseDate(k.bindDate)!;
    return (after === undefined || bound >= after) && (before === undefined || bound < before);
  });
  return { status: Status.OK, keys: keys.slice(0, Math.min(filter.count ?? MAX_KEYS_PER_ANSWER, MAX_KEYS_PER_ANSWER)) };
};
