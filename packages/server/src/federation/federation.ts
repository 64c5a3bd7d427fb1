/**
 * The asking side of federation (draft 3.3 steps 6-9, PROTOCOL.md §6). When a user of this KMS
 * asks for a key or a KRO of a peer, this KMS fetches the KRO from the peer over a mutually
 * authenticated channel (the client SDK in peer mode: every request signed by this KMS's static
 * key), keeps a copy sealed under its own CMK together with the peer's signed answers (for
 * archiving and legal discovery), and enforces the policy for its own user from that copy. A copy
 * is used for `federation.maxStaleness` seconds; a refusal is never cached.
 */
import { KmsClient, type Answer } from '@openkms/client';
import { KmsError, hasCode, isUuid, objectRef, parseDate, type ErrorCode, type KmsResponse, type MessageCodec } from '@openkms/protocol';
import type { KeyObject } from 'node:crypto';
import type { AuditEntry } from '../audit/audit.js';
import { domainOf } from '../identity/users.js';
import type { Logger } from '../kms.js';
import { MAX_KRO_DEPTH, MAX_KRO_VISITS } from '../policy.js';
import type { KmsConfig } from '../config.js';
import type { UserPrincipal } from '../identity/principal.js';
import type { Keyring } from '../keyring/keyring.js';
import type { Store } from '../store/store.js';
import type { Peer, PeerRegistry } from './peers.js';

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

/** What a copy holds: the KRO as released (all pages merged) and the peer's signed answers. */
export interface CopyContent {
  resource: { uri: string; keys: FederatedKey[]; authorizations: FederatedAuthorization[] };
  proofs: string[];
}

/** Pages of a federated answer followed at most (500 keys each). */
const MAX_PAGES = 20;
/** KROs whose last re-fetch or invalidation is remembered in memory. */
const MAX_TRACKED = 100_000;
/** A user missing from a fresh copy makes a re-fetch at most this often per KRO (ms). */
const REFETCH_INTERVAL_MS = 1000;

const enc = new TextEncoder();
const dec = new TextDecoder();

export interface FederationOptions {
  config: KmsConfig;
  peers: PeerRegistry;
  store: Store;
  keyring: Keyring;
  staticKey: { privateKey: KeyObject; publicJwk: Record<string, unknown>; kid: string };
  codec: MessageCodec;
  now: () => number;
  audit: (entry: AuditEntry) => Promise<void>;
  logger: Logger;
}

/** Waits between attempts to push an invalidation to a peer (the staleness bound is the backstop). */
const PUSH_RETRY_DELAYS_MS = [200, 1000, 5000];

export class Federation {
  private readonly clients = new Map<string, KmsClient>();
  private readonly lastRefetch = new Map<string, number>();
  /** Invalidations received, counted; and per KRO, the count when it was last invalidated. */
  private invalidations = 0;
  private readonly invalidatedAt = new Map<string, number>();
  /** Fetches under way, by the invalidation count when they began. */
  private readonly fetchesFrom = new Map<number, number>();
  /** Pushes under way (close() waits for them). */
  private readonly pushes = new Set<Promise<void>>();

  constructor(private readonly o: FederationOptions) {}

  /** The channel to a peer: the SDK in peer mode, timed out at `federation.peerTimeout`. */
  private client(peer: Peer): KmsClient {
    let client = this.clients.get(peer.authority);
    if (!client) {
      const { privateKey, publicJwk, kid } = this.o.staticKey;
      client = new KmsClient({
        url: peer.endpoint.replace(/\/+$/, ''),
        authority: peer.authority,
        trustAnchors: peer.trustAnchors,
        clientId: kid,
        timeoutMs: this.o.config.federation.peerTimeout * 1000,
        debounceMs: 1,
        now: this.o.now,
        peer: { kid, jwk: publicJwk, sign: (payload) => this.o.codec.signStatic(payload, privateKey, kid) },
      });
      this.clients.set(peer.authority, client);
    }
    return client;
  }

  private peerOf(authority: string): Peer {
    const peer = this.o.peers.byAuthority(authority);
    if (!peer) throw KmsError.notFound(`unknown KMS authority ${authority}`);
    return peer;
  }

  /** The copy of `resourceUri`, unsealed, with its age; undefined when there is none. */
  private async load(resourceUri: string): Promise<{ content: CopyContent; fetchedAt: number } | undefined> {
    const row = await this.o.store.getCopy(resourceUri);
    if (!row) return undefined;
    const plain = await this.o.keyring.unseal(row.cmkId, row.sealed, `copy:${resourceUri}`);
    return { content: JSON.parse(dec.decode(plain.reveal())) as CopyContent, fetchedAt: row.fetchedAt };
  }

  private fresh(fetchedAt: number): boolean {
    return fetchedAt > 0 && this.o.now() - fetchedAt < this.o.config.federation.maxStaleness * 1000;
  }

  /**
   * The copy that answers `user`'s request for a peer's key (`keyUri`) or KRO (`resourceUri`):
   * a fresh copy that already authorizes the user, else a new fetch. A's 403/404 reach the user;
   * any other failure is a 502, no answer in time a 504. Never a grant from a stale copy.
   */
  async copyFor(user: UserPrincipal, target: { keyUri: string } | { resourceUri: string }): Promise<CopyContent> {
    const uri = 'keyUri' in target ? target.keyUri : target.resourceUri;
    const authority = objectRef(uri, 'keyUri' in target ? 'keys' : 'resources', this.o.config.authority)?.authority ?? 'peer';
    return this.withinDeadline(this.copyForUnbounded(user, target), authority);
  }

  /**
   * The user waits at most one peer timeout for a whole federated request, however many steps
   * (discovery, handshake, pages) it takes; past it the answer is 504. Work under way may still
   * finish and refresh the copy for the next request.
   */
  private withinDeadline<T>(work: Promise<T>, authority: string): Promise<T> {
    const ms = this.o.config.federation.peerTimeout * 1000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new KmsError('PEER_TIMEOUT', `kms://${authority} did not answer in time`)), ms);
    });
    work.catch(() => undefined); // a late failure after the deadline is nobody's to handle
    return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
  }

  private async copyForUnbounded(user: UserPrincipal, target: { keyUri: string } | { resourceUri: string }): Promise<CopyContent> {
    const uri = 'keyUri' in target ? target.keyUri : target.resourceUri;
    const ref = objectRef(uri, 'keyUri' in target ? 'keys' : 'resources', this.o.config.authority)!;
    const peer = this.peerOf(ref.authority);
    const resourceUri = 'resourceUri' in target ? target.resourceUri : await this.o.store.copyOfKey(target.keyUri);
    const copy = resourceUri === undefined ? undefined : await this.load(resourceUri);
    if (copy && this.fresh(copy.fetchedAt)) {
      const holdsKey = 'keyUri' in target ? copy.content.resource.keys.some((k) => k.uri === target.keyUri) : true;
      if (holdsKey && authorizes(copy.content, user.id)) return copy.content;
      // A user not (yet) in a fresh copy may just have been added: re-fetch, at most once a second.
      const last = this.lastRefetch.get(copy.content.resource.uri) ?? 0;
      if (holdsKey && this.o.now() - last < REFETCH_INTERVAL_MS) throw KmsError.forbidden('not authorized on this resource');
      if (this.lastRefetch.size > MAX_TRACKED) this.lastRefetch.clear();
      this.lastRefetch.set(copy.content.resource.uri, this.o.now());
    }
    // A KRO is asked for as its keys (the operation a peer channel may use), a key as itself.
    const askUri = 'keyUri' in target ? uri : `${uri}/keys`;
    let content = await this.fetch(peer, user, askUri);
    if (content === 'invalidated') content = await this.fetch(peer, user, askUri);
    if (content === 'invalidated') throw new KmsError('PEER_FAILED', `kms://${peer.authority} kept invalidating the KRO while it was fetched`);
    if (!authorizes(content, user.id)) throw KmsError.forbidden('not authorized on this resource');
    return content;
  }

  /** Fetches every page of the KRO from the peer for `user`, checks it, stores the copy. */
  private async fetch(peer: Peer, user: UserPrincipal, uri: string): Promise<CopyContent | 'invalidated'> {
    const startedAt = this.invalidations;
    this.fetchesFrom.set(startedAt, (this.fetchesFrom.get(startedAt) ?? 0) + 1);
    try {
      return await this.fetchPages(peer, user, uri, startedAt);
    } finally {
      const n = this.fetchesFrom.get(startedAt)! - 1;
      if (n === 0) this.fetchesFrom.delete(startedAt);
      else this.fetchesFrom.set(startedAt, n);
    }
  }

  private async fetchPages(peer: Peer, user: UserPrincipal, uri: string, startedAt: number): Promise<CopyContent | 'invalidated'> {
    const client = this.client(peer);
    const proofs: string[] = [];
    let resource: CopyContent['resource'] | undefined;
    let next: string | undefined;
    let askUri = uri;
    for (let page = 0; page < MAX_PAGES; page++) {
      const body: Record<string, unknown> = { method: 'retrieve', uri: askUri, federated: true, onBehalfOf: user.id };
      if (next !== undefined) body.boundBefore = next;
      let answer: Answer;
      try {
        answer = await client.exchange(body as { method: string; uri: string });
        await this.auditExchange(user, askUri, 200, peer);
      } catch (err) {
        const failure = peerFailure(err, peer);
        await this.auditExchange(user, askUri, failure.status, peer);
        throw failure;
      }
      const part = checkAnswer(answer, peer, uri);
      proofs.push(answer.proof!);
      resource = resource ? { ...resource, keys: [...resource.keys, ...part.resource.keys] } : part.resource;
      next = part.next;
      if (next === undefined) break;
      askUri = `${part.resource.uri}/keys`;
    }
    const content: CopyContent = { resource: resource!, proofs };
    if (uri.includes('/keys/') && !content.resource.keys.some((k) => k.uri === uri)) {
      throw new KmsError('PEER_FAILED', `kms://${peer.authority} answered without the key asked for`);
    }
    // An invalidation of this KRO that arrived while the fetch was under way makes its answer unusable.
    if ((this.invalidatedAt.get(content.resource.uri) ?? -1) >= startedAt) return 'invalidated';
    const cmk = this.o.keyring.activeCmk();
    await this.o.store.putCopy(
      {
        resourceUri: content.resource.uri,
        authority: peer.authority,
        fetchedAt: this.o.now(),
        cmkId: cmk.id,
        sealed: this.o.keyring.seal(cmk.id, enc.encode(JSON.stringify(content)), `copy:${content.resource.uri}`),
      },
      content.resource.keys.map((k) => k.uri),
    );
    // An invalidation that arrived while the copy was being written: it is stale already.
    if ((this.invalidatedAt.get(content.resource.uri) ?? -1) >= startedAt) await this.o.store.invalidateCopies(peer.authority, [content.resource.uri]);
    return content;
  }

  private auditExchange(user: UserPrincipal, uri: string, status: number, peer: Peer, method = 'retrieve'): Promise<void> {
    return this.o.audit({
      time: this.o.now(),
      principal: user.id,
      clientId: 'federation',
      method,
      uri,
      status,
      peer: `kms://${peer.authority}`,
      requestId: null,
    });
  }

  /**
   * Forwards a user's authorization request about a peer's KRO (PROTOCOL.md §6): the peer applies
   * its own policy to the user as if local. Its answer, success or refusal, reaches the user;
   * failures of the peer itself are 502/504.
   */
  async forward(user: UserPrincipal, request: { method: string; uri: string; [member: string]: unknown }, authority: string): Promise<KmsResponse> {
    return this.withinDeadline(this.forwardUnbounded(user, request, authority), authority);
  }

  private async forwardUnbounded(user: UserPrincipal, request: { method: string; uri: string; [member: string]: unknown }, authority: string): Promise<KmsResponse> {
    const peer = this.peerOf(authority);
    const { requestId: _id, client: _client, ...body } = request;
    try {
      const answer = await this.client(peer).exchange({ ...body, federated: true, onBehalfOf: user.id } as { method: string; uri: string });
      await this.auditExchange(user, request.uri, answer.payload.status, peer, request.method);
      const { requestId: _answerId, ...payload } = answer.payload;
      return payload as KmsResponse;
    } catch (err) {
      const failure = peerFailure(err, peer, true);
      await this.auditExchange(user, request.uri, failure.status, peer, request.method);
      throw failure;
    }
  }

  /** A peer told this KMS that its copies of these KROs are out of date (only its own KROs count). */
  async invalidated(authority: string, resourceUris: string[]): Promise<number> {
    const own = resourceUris.filter((uri) => objectRef(uri, 'resources', '')?.authority === authority && uri.startsWith('kms://'));
    if (this.invalidatedAt.size > MAX_TRACKED) {
      // Bounded memory: an invalidation older than every fetch under way can no longer matter.
      const oldest = Math.min(this.invalidations, ...this.fetchesFrom.keys());
      for (const [uri, at] of this.invalidatedAt) if (at < oldest) this.invalidatedAt.delete(uri);
    }
    for (const uri of own) this.invalidatedAt.set(uri, this.invalidations++);
    return own.length === 0 ? 0 : this.o.store.invalidateCopies(authority, own);
  }

  /**
   * Answering side: something changed on these KROs (an authorization created or removed, a key
   * bound, the KRO expired). Every peer that fetched one of them — or one reaching them through a
   * KRO authId — and the peers owning the affected users' domains are told, asynchronously and
   * with retries, so revocation and new keys take effect there at once.
   */
  notify(resourceIds: string[], userIds: string[] = []): void {
    if (this.o.peers.all().length === 0 || resourceIds.length === 0) return;
    const push = this.push(resourceIds, userIds)
      .catch((err: Error) => this.o.logger.warn({ err: { message: err.message } }, 'federation invalidation failed'))
      .finally(() => this.pushes.delete(push));
    this.pushes.add(push);
  }

  private async push(resourceIds: string[], userIds: string[]): Promise<void> {
    const affected = await this.reaching(resourceIds);
    const targets = new Map<string, Set<string>>();
    const add = (authority: string, id: string) => {
      if (!this.o.peers.byAuthority(authority)) return; // a peer since removed: no longer told anything
      if (!targets.has(authority)) targets.set(authority, new Set());
      targets.get(authority)!.add(`kms://${this.o.config.authority}/resources/${id}`);
    };
    for (const id of affected) for (const authority of await this.o.store.peersThatFetched(id)) add(authority, id);
    for (const user of userIds) {
      const peer = user.includes('@') ? this.o.peers.byDomain(domainOf(user)) : undefined;
      if (peer) for (const id of affected) add(peer.authority, id);
    }
    await Promise.all([...targets].map(([authority, uris]) => this.pushTo(this.peerOf(authority), [...uris])));
  }

  /** The KROs given plus those that reach them through KRO authIds (bounded like authorization checks). */
  private async reaching(resourceIds: string[]): Promise<string[]> {
    const prefix = `kms://${this.o.config.authority}/resources/`;
    const seen = new Set(resourceIds);
    let frontier = [...resourceIds];
    for (let depth = 0; depth < MAX_KRO_DEPTH && frontier.length > 0 && seen.size < MAX_KRO_VISITS; depth++) {
      const next: string[] = [];
      for (const id of frontier) {
        for (const referrer of await this.o.store.resourcesWithAuthId(prefix + id)) {
          if (!seen.has(referrer) && seen.size < MAX_KRO_VISITS) seen.add(referrer), next.push(referrer);
        }
      }
      frontier = next;
    }
    return [...seen];
  }

  private async pushTo(peer: Peer, resourceUris: string[]): Promise<void> {
    for (let i = 0; i < resourceUris.length; i += 100) {
      const chunk = resourceUris.slice(i, i + 100);
      const body = { method: 'update', uri: `kms://${peer.authority}/federation/invalidations`, resourceUris: chunk, federated: true };
      for (let attempt = 0; ; attempt++) {
        try {
          await this.client(peer).exchange(body);
          await this.auditPush(peer, body.uri, 204);
          break;
        } catch (err) {
          const status = err instanceof KmsError ? err.status : 502;
          await this.auditPush(peer, body.uri, status);
          const delay = PUSH_RETRY_DELAYS_MS[attempt];
          if (delay === undefined || this.closing) throw err;
          await new Promise((r) => setTimeout(r, delay));
        }
      }
    }
  }

  private auditPush(peer: Peer, uri: string, status: number): Promise<void> {
    return this.o.audit({ time: this.o.now(), principal: `kms://${this.o.config.authority}`, clientId: 'federation', method: 'update', uri, status, peer: `kms://${peer.authority}`, requestId: null });
  }

  private closing = false;

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all([...this.pushes]);
    await Promise.all([...this.clients.values()].map((c) => c.close()));
    this.clients.clear();
  }
}

function authorizes(content: CopyContent, userId: string): boolean {
  return content.resource.authorizations.some((a) => a.authId === userId);
}

/** A's verdicts on the user's request that reach the user as they are (a read: 403/404). */
const READ_VERDICTS: readonly ErrorCode[] = ['NOT_AUTHORIZED', 'NOT_FOUND'];
/** A forwarded change: any refusal of the request itself reaches the user. */
const FORWARD_VERDICTS: readonly ErrorCode[] = [
  'INVALID_FIELD',
  'PAYLOAD_INVALID',
  'KEY_EXPIRED',
  'CREDENTIAL_INVALID',
  'NOT_AUTHORIZED',
  'NOT_FOUND',
  'KEY_ALREADY_BOUND',
  'TOO_LARGE',
  'RATE_LIMITED',
];

/** A peer's failure as this KMS reports it to its user (PROTOCOL.md §6). */
function peerFailure(err: unknown, peer: Peer, forwarded = false): KmsError {
  const who = `kms://${peer.authority}`;
  if (err instanceof KmsError) {
    // A refusing this KMS's channel is the peer failing this KMS, not a verdict on the user.
    const channelRefused = err.handshake || err.code === 'CERTIFICATE_REFUSED';
    if (!channelRefused && (forwarded ? FORWARD_VERDICTS : READ_VERDICTS).includes(err.code)) return new KmsError(err.code, `${who}: ${err.reason}`);
    if (hasCode(err, 'KMS_TIMEOUT', 'PEER_TIMEOUT')) return new KmsError('PEER_TIMEOUT', `${who} did not answer in time`);
    return new KmsError('PEER_FAILED', `${who} failed: ${err.status} ${err.reason}`, { cause: err });
  }
  return new KmsError('PEER_FAILED', `${who} failed`, { cause: err });
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
