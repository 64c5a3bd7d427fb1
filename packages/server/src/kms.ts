/**
 * The core: handle(compact message) -> compact message. It knows no transport. Data flows one
 * way: unwrap (static key or channel key) -> validate -> authenticate -> route -> operation ->
 * wrap. Every failure is mapped to an answer in one place (`answer`), and every request, failed
 * or not, is recorded in the audit log before it is answered.
 */
import { createPublicKey, randomUUID, type KeyObject } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import {
  KmsError,
  Limits,
  STATIC_KEY_ALGS,
  Status,
  basicRequestSchema,
  joseCodec,
  parseKmsUri,
  peekHeader,
  segmentCount,
  validate,
  type KmsRequest,
  type KmsResponse,
  type MessageCodec,
  type RequestId,
} from '@openkms/protocol';
import { AuditLog } from './audit/audit.js';
import { Channels, type Channel } from './channels.js';
import type { KmsConfig } from './config.js';
import { AnonymousBearers } from './identity/anonymous.js';
import { Authenticator } from './identity/authenticator.js';
import { principalId, type PeerPrincipal, type Principal, type TokenVerifier } from './identity/principal.js';
import { domainOf, isUserId, normalizeUserId } from './identity/users.js';
import { Keyring, auditKeyOf } from './keyring/keyring.js';
import type { Deps } from './operations/context.js';
import { handshake } from './operations/ecdhe.js';
import { Federation } from './federation/federation.js';
import { PeerVerifier } from './federation/peer-proof.js';
import { PeerRegistry } from './federation/peers.js';
import { PEER_USER_OPERATIONS, mayUseOperation } from './policy.js';
import { RateLimiter } from './rate-limit.js';
import { match } from './routes.js';
import type { Store, SweepResult } from './store/store.js';

export interface PublicStaticJwk {
  kty: 'RSA';
  kid: string;
  n: string;
  e: string;
  x5c: string[];
}

export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

export interface RequestEvent {
  op: string;
  status: number;
  seconds: number;
}

export interface KmsOptions {
  config: KmsConfig;
  store: Store;
  verifier: TokenVerifier;
  staticKey: { privateKey: KeyObject; publicJwk: PublicStaticJwk };
  rootKey: Uint8Array;
  now?: () => number;
  codec?: MessageCodec;
  logger?: Logger;
}

/** What one request turned out to be, for the audit log and metrics. */
interface Trace {
  op: string;
  principal: string | null;
  clientId: string | null;
  method: string | null;
  uri: string | null;
  requestId: RequestId | undefined;
  /** `kms://<peer>` when the request came over a peer KMS's channel. */
  peer: string | null;
}

/** What a channel answer needs: its channel, and whether it goes to a peer (then nested and signed). */
interface Answered {
  response: KmsResponse;
  channel?: Channel;
  toPeer?: boolean;
}


const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export class Kms {
  readonly authority: string;
  readonly staticKid: string;
  private readonly deps: Deps;
  private readonly codec: MessageCodec;
  private readonly logger: Logger;
  private readonly authenticator: Authenticator;
  private readonly limiter: RateLimiter;
  private readonly peerVerifier: PeerVerifier;
  /** Told of every answered request (metrics). */
  onRequest: ((event: RequestEvent) => void) | undefined;

  private constructor(
    private readonly options: KmsOptions,
    readonly channels: Channels,
    private readonly audit: AuditLog,
    keyring: Keyring,
  ) {
    const { config, store, staticKey } = options;
    const now = options.now ?? Date.now;
    this.authority = config.authority;
    this.staticKid = staticKey.publicJwk.kid;
    this.codec = options.codec ?? joseCodec;
    this.logger = options.logger ?? silent;
    const anonymous = new AnonymousBearers(config.authority, staticKey.privateKey, createPublicKey(staticKey.privateKey), now);
    this.deps = {
      authority: config.authority,
      config,
      store,
      keyring,
      channels,
      anonymous,
      staticKey: { privateKey: staticKey.privateKey, kid: this.staticKid },
      peers: new PeerRegistry(config),
      federation: undefined as unknown as Federation,
      now,
    };
    this.deps.federation = new Federation({
      config,
      peers: this.deps.peers,
      store,
      keyring,
      staticKey: { privateKey: staticKey.privateKey, publicJwk: { ...staticKey.publicJwk }, kid: this.staticKid },
      codec: this.codec,
      now,
      audit: (entry) => this.audit.record(entry),
      logger: this.logger,
    });
    this.authenticator = new Authenticator(config.domains, options.verifier, anonymous, store, now);
    this.limiter = new RateLimiter(config.limits.requestsPerMinutePerPrincipal, now);
    this.peerVerifier = new PeerVerifier(config.authority, this.deps.peers, now);
  }

  static async open(options: KmsOptions): Promise<Kms> {
    const now = options.now ?? Date.now;
    const keyring = await Keyring.open(options.rootKey, options.store, now());
    const channels = new Channels(options.config.authority, options.store, keyring, now);
    const audit = await AuditLog.open(options.store, auditKeyOf(options.rootKey));
    return new Kms(options, channels, audit, keyring);
  }

  /** The document served at /.well-known/kms (PROTOCOL.md §2): public members only. */
  wellKnown(): { kmsCluster: string; rsaPublicKey: PublicStaticJwk; domains: string[] } {
    const { kty, kid, n, e, x5c } = this.options.staticKey.publicJwk;
    return { kmsCluster: `kms://${this.authority}`, rsaPublicKey: { kty, kid, n, e, x5c }, domains: [...this.options.config.domains] };
  }

  async handle(compact: string): Promise<string> {
    const started = performance.now();
    const trace: Trace = { op: 'reset', principal: null, clientId: null, method: null, uri: null, requestId: undefined, peer: null };
    let answer: Answered;
    try {
      answer = await this.dispatch(compact, trace);
    } catch (err) {
      answer = { response: this.failure(err) };
    }
    const { response } = answer;
    const requestId = response.status === Status.RESET && trace.requestId === undefined ? randomUUID() : trace.requestId;
    const out = { ...response, requestId };
    try {
      await this.audit.record({
        time: this.deps.now(),
        principal: trace.principal,
        clientId: trace.clientId,
        method: trace.method,
        uri: trace.uri,
        status: out.status,
        peer: trace.peer,
        requestId: requestId === undefined ? null : String(requestId),
      });
    } catch (err) {
      this.logger.error({ err: describe(err) }, 'audit log write failed');
      Object.assign(out, { status: Status.INTERNAL, reason: 'internal error' });
      for (const k of Object.keys(out)) if (!['status', 'reason', 'requestId'].includes(k)) delete (out as Record<string, unknown>)[k];
    }
    this.onRequest?.({ op: trace.op, status: out.status, seconds: (performance.now() - started) / 1000 });
    this.logger.debug({ op: trace.op, status: out.status, requestId: out.requestId }, 'request');
    const payload = encoder.encode(JSON.stringify(out));
    if (answer.channel && out.status !== Status.RESET) {
      if (answer.toPeer) {
        // To a peer KMS every answer is signed too, so its copies can prove what this KMS released.
        const proof = await this.codec.signStatic(payload, this.options.staticKey.privateKey, this.staticKid);
        return this.codec.encryptChannel(encoder.encode(proof), answer.channel.key.reveal(), answer.channel.uri, 'JOSE');
      }
      return this.codec.encryptChannel(payload, answer.channel.key.reveal(), answer.channel.uri);
    }
    return this.codec.signStatic(payload, this.options.staticKey.privateKey, this.staticKid);
  }

  private async dispatch(compact: string, trace: Trace): Promise<Answered> {
    if (typeof compact !== 'string' || compact.length > Limits.maxMessageChars || segmentCount(compact) !== 5) {
      return { response: reset('message is not a compact JWE') };
    }
    const header = peekHeader(compact);
    if (header?.alg === 'dir' && header.enc === 'A256GCM' && typeof header.kid === 'string') {
      return this.common(compact, header.kid, trace);
    }
    if (STATIC_KEY_ALGS.includes(header?.alg as (typeof STATIC_KEY_ALGS)[number]) && header?.kid === this.staticKid) {
      trace.op = 'createEphemeralKey';
      return { response: await this.ecdhe(compact, trace) };
    }
    return { response: reset('message could not be decrypted') };
  }

  /** An ECDHE request: under the static key, answered by a JWS (there is no channel yet). */
  private async ecdhe(compact: string, trace: Trace): Promise<KmsResponse> {
    let opened: { plaintext: Uint8Array; header: { cty?: unknown } };
    try {
      opened = await this.codec.decryptStatic(compact, this.options.staticKey.privateKey);
    } catch {
      return reset('message could not be decrypted');
    }
    try {
      // The static key establishes channels and nothing else; that is checked before any credential.
      const onlyEcdhe = (request: KmsRequest) => {
        const uri = parseKmsUri(request.uri);
        const here = uri && (uri.authority === undefined || uri.authority === this.authority);
        if (request.method !== 'create' || !here || uri.segments.length !== 1 || uri.segments[0] !== 'ecdhe') {
          throw KmsError.badRequest('invalid field uri: the static key only takes create /ecdhe');
        }
        return request;
      };
      let request: KmsRequest;
      let principal: Principal;
      if (opened.header.cty === 'JOSE') {
        // A peer KMS: proof of possession of its certified static key (PROTOCOL.md §6).
        const jws = text(opened.plaintext);
        const claimed = peekHeader(jws)?.kid;
        if (typeof claimed === 'string') trace.peer = claimed.slice(0, Limits.maxIdChars); // audited even when refused
        const verified = await this.peerVerifier.verifyHandshake(jws, this.deps.config.lifetimes.channel * 1000);
        request = onlyEcdhe(this.validateRequest(verified.request, trace));
        principal = verified.principal;
        trace.principal = trace.peer = principalId(principal);
      } else {
        request = onlyEcdhe(this.validateRequest(parseJson(opened.plaintext), trace));
        principal = await this.authenticate(request, trace);
      }
      if (!this.limiter.allow(principalId(principal))) throw new KmsError('RATE_LIMITED', 'rate limited');
      return await handshake(request, principal, this.deps);
    } catch (err) {
      return this.failure(err);
    }
  }

  /** A common message: under a channel key, answered under the same key. */
  private async common(compact: string, kid: string, trace: Trace): Promise<Answered> {
    const ref = parseKmsUri(kid);
    const id = ref && (ref.authority === undefined || ref.authority === this.authority) && ref.segments.length === 2 && ref.segments[0] === 'ecdhe' ? ref.segments[1]! : undefined;
    // A storage failure here is a 500 (thrown to handle()), not a reset: clients would re-handshake in a loop.
    const channel = id === undefined ? undefined : await this.channels.get(id);
    if (!channel) return { response: reset('ephemeral key unknown, expired or deleted') };
    let opened: { plaintext: Uint8Array; header: { cty?: unknown } };
    try {
      opened = await this.codec.decryptChannel(compact, channel.key.reveal());
    } catch {
      return { response: reset('message could not be decrypted') };
    }
    // A peer KMS owns its channel as `kms://<authority>` (no path; an anonymous bearer's owner has one).
    const owner = parseKmsUri(channel.owner);
    const peerAuthority = owner?.authority !== undefined && owner.segments.length === 0 ? owner.authority : undefined;
    try {
      trace.op = 'unknown';
      let request: KmsRequest;
      let principal: Principal;
      let peer: PeerPrincipal | undefined;
      if (peerAuthority !== undefined) {
        trace.peer = channel.owner;
        if (opened.header.cty !== 'JOSE') throw KmsError.unauthorized('a peer KMS signs every request (cty JOSE)');
        request = this.validateRequest(await this.peerVerifier.verify(text(opened.plaintext), peerAuthority), trace);
        peer = { kind: 'peer', authority: peerAuthority, domains: this.deps.peers.byAuthority(peerAuthority)?.domains ?? [], expiresAt: channel.expiresAt };
        principal = this.actingPrincipal(request, peer);
        trace.principal = principalId(principal);
      } else {
        if (opened.header.cty !== undefined) throw KmsError.badRequest('nested messages are for peer KMS channels');
        request = this.validateRequest(parseJson(opened.plaintext), trace);
        principal = await this.authenticate(request, trace);
        if (principalId(principal) !== channel.owner) throw KmsError.forbidden('the ephemeral key belongs to another principal');
      }
      if (!this.limiter.allow(channel.owner)) throw new KmsError('RATE_LIMITED', 'rate limited');
      const uri = parseKmsUri(request.uri);
      if (!uri) throw KmsError.badRequest('invalid field uri: not a KMS URI');
      const authority = uri.authority ?? this.authority;
      if (authority !== this.authority && !this.deps.peers.isPeerAuthority(authority)) throw KmsError.notFound(`unknown KMS authority ${authority}`);
      if (authority !== this.authority && peer) throw KmsError.forbidden('a peer KMS asks only for objects of this KMS');
      const found = match(request.method, uri.segments);
      if (!found) throw KmsError.badRequest(`invalid field uri: no operation ${request.method} ${request.uri}`);
      trace.op = found.route.name;
      if (authority !== this.authority && !PEER_USER_OPERATIONS.has(found.route.name)) throw KmsError.notFound(`kms://${authority} objects are not served through this KMS for ${found.route.name}`);
      if (!mayUseOperation(principal, found.route.name, peer)) throw KmsError.forbidden('not allowed with this credential');
      const response = await found.route.operation({ request, principal, peer, authority, id: found.id, query: uri.query, channel }, this.deps);
      return { response, channel, toPeer: peer !== undefined };
    } catch (err) {
      return { response: this.failure(err), channel, toPeer: peerAuthority !== undefined };
    }
  }

  /**
   * Whom a peer's request acts for: the user named by `onBehalfOf` when the request is
   * `federated` (A then applies its own policy as if the user were local), else the peer itself.
   * The user must belong to one of the peer's domains: a peer speaks only for its own users.
   */
  private actingPrincipal(request: KmsRequest, peer: PeerPrincipal): Principal {
    // Without onBehalfOf a peer speaks for itself (e.g. invalidations); §6 limits what it may do then.
    if (request.federated !== true || request.onBehalfOf === undefined) return peer;
    if (typeof request.onBehalfOf !== 'string') throw KmsError.badRequest('invalid field onBehalfOf: not a string');
    const id = normalizeUserId(request.onBehalfOf, peer.domains[0] ?? '');
    if (!isUserId(id) || !peer.domains.includes(domainOf(id))) {
      throw KmsError.forbidden(`onBehalfOf ${request.onBehalfOf} is not a user of kms://${peer.authority}'s domains`);
    }
    return { kind: 'user', id, domain: domainOf(id), roles: [], orgId: domainOf(id), expiresAt: peer.expiresAt };
  }

  private validateRequest(raw: unknown, trace: Trace): KmsRequest {
    if (raw && typeof raw === 'object' && !Array.isArray(raw)) {
      const rid = (raw as { requestId?: unknown }).requestId;
      if ((typeof rid === 'string' && rid.length <= Limits.maxIdChars) || (typeof rid === 'number' && Number.isSafeInteger(rid))) trace.requestId = rid;
    }
    const base = validate(basicRequestSchema, raw);
    trace.method = base.method;
    trace.uri = base.uri;
    trace.clientId = base.client.clientId;
    // Validated members are checked; the operation's own members are validated by the operation.
    return { ...(raw as object), ...base } as KmsRequest;
  }

  private async authenticate(request: KmsRequest, trace: Trace): Promise<Principal> {
    const principal = await this.authenticator.authenticate(request.client.credential);
    trace.principal = principalId(principal);
    return principal;
  }

  private failure(err: unknown): KmsResponse {
    if (err instanceof KmsError) return { status: err.status, reason: err.reason };
    this.logger.error({ err: describe(err) }, 'internal error');
    return { status: Status.INTERNAL, reason: 'internal error' };
  }

  /** Destroys what expired (resources past TTL, unbound keys past the grace, dead channels). */
  async sweep(): Promise<SweepResult> {
    const result = await this.deps.store.sweep(this.deps.now(), this.deps.config.lifetimes.unboundGrace * 1000);
    // Peers holding copies of expired KROs must stop using them now, not at their staleness bound.
    if (result.resourceIds.length > 0) this.deps.federation.notify(result.resourceIds);
    if (result.resources || result.keys || result.channels) {
      this.logger.info({ resources: result.resources, keys: result.keys, channels: result.channels }, 'sweeper destroyed expired objects');
    }
    return result;
  }

  async close(): Promise<void> {
    await this.deps.federation.close();
    await this.audit.flush();
  }
}

/** UTF-8 text of a payload; anything else is the client's error (400), never a 500. */
function text(plaintext: Uint8Array): string {
  try {
    return decoder.decode(plaintext);
  } catch {
    throw KmsError.badRequest('payload is not UTF-8');
  }
}

function parseJson(plaintext: Uint8Array): unknown {
  const decoded = text(plaintext);
  try {
    return JSON.parse(decoded);
  } catch {
    throw KmsError.badRequest('payload is not JSON');
  }
}

function reset(reason: string): KmsResponse {
  return { status: Status.RESET, reason };
}

/** An error as a log field: name and message only (messages here never carry secrets). */
function describe(err: unknown): { name: string; message: string; stack?: string } {
  if (err instanceof Error) return { name: err.name, message: err.message, stack: err.stack };
  return { name: 'unknown', message: String(err) };
}
