/**
 * KmsClient: the SDK applications use (and the project's own CLI, federation and demo). It
 * discovers the KMS and validates its certificate, keeps one ECDHE channel (re-handshaking before
 * it expires and after a reset, retrying the request once), and offers a typed method for every
 * operation of the protocol. Browser-safe: WebCrypto, fetch and WebSocket only; on Node, messages
 * are sealed, opened and verified with node:crypto instead (codec/client-codec.ts).
 */
import {
  KmsError,
  deriveChannelKey,
  encryptStatic,
  generateEphemeralKeyPair,
  importEcPublicKey,
  matchOperation,
  parseDate,
  parseKmsUri,
  peekHeader,
  segmentCount,
  type AuthorizationRep,
  type CmkRep,
  type EphemeralKeyRep,
  type KeyRep,
  type KmsResponse,
  type RequestId,
  type ResourceRep,
  type RetryMode,
} from '@openkms/protocol';
import { clientCodec } from '#codec';
import { answerFor, checkStatus, readPayload } from './answers.js';
import { decryptContent, contentKeyUri, encryptContent } from './content.js';
import { discover, type StaticKey } from './discovery.js';
import { answerStep, failureDetail, isConnectionLost } from './failures.js';
import { HttpTransport } from './http-transport.js';
import { checkOptions, type KmsClientOptions } from './options.js';
import type { Answer, FetchLike, Transport } from './transport.js';
import { WsTransport, type WebSocketConstructor } from './ws-transport.js';

interface ChannelState {
  uri: string;
  key: Uint8Array;
  expiresAt: number;
}

export interface KeyFilter {
  boundAfter?: string | Date;
  boundBefore?: string | Date;
  count?: number;
}

export interface CreateResourceOptions {
  authIds?: string[];
  keyUris?: string[];
  anonymous?: number;
  /** Seconds; 0 = never expires. */
  ttl?: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function uuid(): string {
  return globalThis.crypto.randomUUID();
}

/**
 * What a retry of a request gets, from the operation table (PROTOCOL.md §5): `never` for a request
 * the table does not know (the KMS will refuse it anyway; nothing is gained by sending it twice).
 */
export function retryModeOf(method: string, uri: string): RetryMode {
  const parsed = parseKmsUri(uri);
  return (parsed && matchOperation(method, parsed.segments)?.spec.retry) ?? 'never';
}

function dateString(value: string | Date | undefined): string | undefined {
  return value instanceof Date ? value.toISOString() : value;
}

export class KmsClient {
  readonly clientId: string;
  private readonly now: () => number;
  private readonly fetch: FetchLike;
  private staticKey: Promise<StaticKey> | undefined;
  private transport: Transport | undefined;
  private channel: ChannelState | undefined;
  private handshaking: Promise<ChannelState> | undefined;
  /** Channel keys by kid: answers are decrypted under the key they name (old channels included). */
  private readonly channelKeys = new Map<string, Uint8Array>();
  private readonly WebSocket: WebSocketConstructor | undefined;
  /** Set by close(): every later call is refused (a closed client opens no new connection). */
  private closed = false;
  /** Handshakes performed (for tests and diagnostics). */
  handshakes = 0;

  /** Throws INVALID_ARGUMENT, naming the option, for options the client cannot work with. */
  constructor(private readonly options: KmsClientOptions) {
    checkOptions(options);
    this.clientId = options.clientId ?? `openkms-${uuid()}`;
    this.now = options.now ?? Date.now;
    // Bound: browsers refuse a fetch called with another `this` ("Illegal invocation").
    const f = options.fetch ?? (globalThis.fetch?.bind(globalThis) as unknown as FetchLike | undefined);
    if (!f) throw new KmsError('INVALID_ARGUMENT', 'no fetch available: pass options.fetch');
    this.fetch = f;
    this.WebSocket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (options.transport === 'websocket' && !this.WebSocket) throw new KmsError('INVALID_ARGUMENT', 'no WebSocket available: pass options.WebSocket');
  }

  /** The authority of the KMS, after discovery. */
  async authority(): Promise<string> {
    this.refuseIfClosed();
    return (await this.static()).authority;
  }

  private refuseIfClosed(requestId?: RequestId): void {
    if (this.closed) throw new KmsError('CLIENT_CLOSED', 'this KmsClient was closed: make a new one', { requestId });
  }

  /** HTTP requests sent so far (HTTP transport only). */
  get httpRequests(): number {
    return this.transport instanceof HttpTransport ? this.transport.requests : 0;
  }

  private static(): Promise<StaticKey> {
    this.staticKey ??= discover({
      url: this.options.url,
      fetch: this.fetch,
      trustAnchors: this.options.trustAnchors,
      authority: this.options.authority,
      now: this.options.now,
      timeoutMs: this.options.timeoutMs,
    }).catch((err) => {
      this.staticKey = undefined; // let a later call try again
      throw err;
    });
    return this.staticKey;
  }

  private getTransport(requestId: RequestId): Transport {
    this.refuseIfClosed(requestId);
    if (this.transport) return this.transport;
    const decode = (compact: string) => this.decode(compact);
    if (this.options.transport === 'websocket') {
      this.transport = new WsTransport({
        url: this.options.url,
        decode,
        WebSocket: this.WebSocket!,
        timeoutMs: this.options.timeoutMs,
        onReset: () => this.dropChannel(),
        // Channels this client made and no longer uses (the current one was just dropped, if any).
        isDead: (kid) => typeof kid === 'string' && this.channelKeys.has(kid) && kid !== this.channel?.uri,
      });
    } else {
      this.transport = new HttpTransport({
        url: this.options.url,
        decode,
        fetch: this.fetch,
        debounceMs: this.options.debounceMs,
        maxBatch: this.options.maxBatch,
        timeoutMs: this.options.timeoutMs,
      });
    }
    return this.transport;
  }

  /**
   * Verifies a JWS under the static key, or decrypts a JWE under the channel key it names. Whatever
   * does not verify, decrypt or read as an answer is ANSWER_INVALID, with the JOSE error as cause.
   */
  private async decode(compact: string): Promise<Answer> {
    const key = await this.static();
    if (segmentCount(compact) === 3) {
      const { plaintext, header } = await answerStep('KMS answer does not verify under its static key', () => clientCodec.verifyStatic(compact, key.verifyKey));
      if (header.kid !== key.kid) throw new KmsError('ANSWER_INVALID', 'KMS answer signed under an unexpected kid');
      return { payload: readPayload(plaintext), signed: true };
    }
    const kid = peekHeader(compact)?.kid;
    const channelKey = typeof kid === 'string' ? this.channelKeys.get(kid) : undefined;
    if (!channelKey) throw new KmsError('ANSWER_INVALID', 'KMS answer under an unknown channel');
    const { plaintext, header } = await answerStep('KMS answer does not decrypt under its channel key', () => clientCodec.decryptChannel(compact, channelKey));
    if (header.cty === 'JOSE') {
      const proof = dec.decode(plaintext);
      const verified = await answerStep('KMS answer\'s nested signature does not verify under its static key', () => clientCodec.verifyStatic(proof, key.verifyKey));
      if (verified.header.kid !== key.kid) throw new KmsError('ANSWER_INVALID', 'KMS answer signed under an unexpected kid');
      return { payload: readPayload(verified.plaintext), signed: false, proof, signer: key.jwk };
    }
    return { payload: readPayload(plaintext), signed: false };
  }

  /**
   * The request member `client`, and the message plaintext (nested and signed for a peer). A
   * handshake (`onChannel` false) never carries onBehalfOf: the channel is the token holder's.
   */
  private async sealable(body: Record<string, unknown>, authority: string, onChannel = true): Promise<{ plaintext: Uint8Array; cty?: string }> {
    const peer = this.options.peer;
    if (!peer) {
      const credential: Record<string, unknown> = await this.credential();
      // Not on the channel's own upkeep (ping, closing it): the channel is the holder's. Everything
      // else carries it, so a write is refused (403) rather than made as the holder.
      if (onChannel && this.options.onBehalfOf !== undefined && !isChannelUpkeep(body)) credential.onBehalfOf = this.options.onBehalfOf;
      return { plaintext: enc.encode(JSON.stringify({ ...body, client: { clientId: this.clientId, credential } })) };
    }
    const signed = { ...body, client: { clientId: peer.kid, credential: { jwk: peer.jwk } }, aud: `kms://${authority}`, iat: Math.floor(this.now() / 1000) };
    let jws: unknown;
    try {
      jws = await peer.sign(enc.encode(JSON.stringify(signed)));
    } catch (err) {
      throw new KmsError('INVALID_ARGUMENT', `options.peer.sign failed: ${failureDetail(err)}`, { cause: err });
    }
    if (typeof jws !== 'string') throw new KmsError('INVALID_ARGUMENT', 'options.peer.sign did not return a compact JWS');
    return { plaintext: enc.encode(jws), cty: 'JOSE' };
  }

  /**
   * The bearer of this request. A token function is the application's: when it fails, its error
   * is kept as the cause of an INVALID_ARGUMENT (the SDK rejects with KmsErrors only).
   */
  private async credential(): Promise<{ bearer: string }> {
    const t = this.options.token;
    if (t === undefined) throw new KmsError('INVALID_ARGUMENT', 'no token: pass options.token');
    let bearer: unknown = t;
    if (typeof t === 'function') {
      try {
        bearer = await t();
      } catch (err) {
        throw new KmsError('INVALID_ARGUMENT', `options.token failed: ${failureDetail(err)}`, { cause: err });
      }
    }
    if (typeof bearer !== 'string' || bearer === '') throw new KmsError('INVALID_ARGUMENT', 'options.token gave no token (not a non-empty string)');
    return { bearer };
  }

  private dropChannel(uri?: string): void {
    if (!uri || this.channel?.uri === uri) this.channel = undefined;
  }

  /** The live channel, handshaking when there is none or it is about to expire. */
  private async ensureChannel(): Promise<ChannelState> {
    const renew = this.options.renewBeforeMs ?? 60_000;
    if (this.channel && this.channel.expiresAt - renew > this.now()) return this.channel;
    this.handshaking ??= this.handshake().finally(() => {
      this.handshaking = undefined;
    });
    return this.handshaking;
  }

  private async handshake(): Promise<ChannelState> {
    const key = await this.static();
    const pair = await generateEphemeralKeyPair();
    const requestId = uuid();
    const body = { requestId, method: 'create', uri: `kms://${key.authority}/ecdhe`, jwk: pair.publicJwk };
    const { plaintext, cty } = await this.sealable(body, key.authority, false);
    const message = await encryptStatic(plaintext, key.encryptKey, key.kid, cty);
    const answer = await this.getTransport(requestId).exchange(message, requestId);
    this.handshakes++;
    if (!answer.signed) throw new KmsError('ANSWER_INVALID', 'KMS answered the handshake without its signature', { requestId });
    // A reset may carry a requestId of its own (the KMS could not read the handshake).
    if (answer.payload.status !== 499) answerFor(answer, requestId);
    const payload = answer.payload;
    checkStatus(payload, requestId, true);
    const rep = payload.key as EphemeralKeyRep | undefined;
    const expiresAt = rep && parseDate(rep.expirationDate);
    if (!rep || typeof rep.uri !== 'string' || !rep.jwk || expiresAt === undefined) throw new KmsError('ANSWER_INVALID', 'KMS handshake answer is malformed', { requestId });
    const channelKey = await answerStep('KMS handshake answer has an unusable key', async () => deriveChannelKey(pair.privateKey, await importEcPublicKey(rep.jwk)));
    this.channelKeys.set(rep.uri, channelKey);
    // Answers under older channels may still be in flight; older than the last few, none are.
    for (const old of this.channelKeys.keys()) if (this.channelKeys.size > 4) this.channelKeys.delete(old);
    const channel = { uri: rep.uri, key: channelKey, expiresAt };
    this.channel = channel;
    return channel;
  }

  /**
   * Sends one request on the channel and returns the answer's payload; a failure status becomes a
   * KmsError. After a reset (499) the channel is re-established and the request sent once more.
   */
  async request(body: { method: string; uri: string; [member: string]: unknown }): Promise<KmsResponse> {
    return (await this.exchange(body)).payload;
  }

  /**
   * As `request`, also returning the KMS's signature over the answer when it nested one.
   *
   * Two failures are retried once each, at once. A reset (499): the channel is gone, so a new one
   * is made and the request sent on it with a new requestId. A lost connection (refused, reset, a
   * WebSocket closed before the answer; never an HTTP status or a KMS error answer, never a
   * timeout): the request is sent again, on a new connection, on the same channel with the same
   * requestId — the KMS gives a create or bind it already ran its first answer back (PROTOCOL.md
   * operation table, `retry`), so the retry makes no second key and gets no 409. Requests that must
   * not be sent twice (deleting a channel), and every request of a peer KMS (its replay window
   * refuses a requestId seen before), are not retried.
   */
  async exchange(body: { method: string; uri: string; [member: string]: unknown }): Promise<Answer> {
    const retryLost = this.options.peer === undefined && retryModeOf(body.method, body.uri) !== 'never';
    let lostRetried = false;
    let resetRetried = false;
    /** The channel and requestId of the copy that may have reached the KMS: a retry repeats both. */
    let resend: { channel: ChannelState; requestId: RequestId } | undefined;
    for (;;) {
      this.refuseIfClosed();
      let channel: ChannelState;
      try {
        // Still usable: the KMS matches a retry by channel and requestId.
        channel = resend && this.channelKeys.has(resend.channel.uri) && resend.channel.expiresAt > this.now() ? resend.channel : await this.ensureChannel();
      } catch (err) {
        // The handshake's connection failed: a handshake is safe to repeat (a second channel at most).
        if (retryLost && !lostRetried && isConnectionLost(err)) {
          lostRetried = true;
          continue;
        }
        throw err;
      }
      const requestId: RequestId = resend?.channel === channel ? resend.requestId : uuid();
      resend = undefined;
      const { plaintext, cty } = await this.sealable({ ...body, requestId }, (await this.static()).authority);
      const message = await clientCodec.encryptChannel(plaintext, channel.key, channel.uri, cty);
      let answer: Answer;
      try {
        answer = await this.getTransport(requestId).exchange(message, requestId);
      } catch (err) {
        if (retryLost && !lostRetried && isConnectionLost(err)) {
          lostRetried = true;
          resend = { channel, requestId };
          continue;
        }
        throw err;
      }
      const { payload, signed } = answer;
      // A reset may carry a requestId of its own (the KMS could not read the request); any other
      // answer must be the one to this request, or an old answer was replayed on the transport.
      if (!(signed && payload.status === 499)) answerFor(answer, requestId);
      if (this.options.peer && !signed && !answer.proof) throw new KmsError('ANSWER_INVALID', 'a peer KMS answers signed (cty JOSE); this answer is not', { requestId });
      if (signed && payload.status === 499) {
        this.dropChannel(channel.uri);
        if (!resetRetried) {
          resetRetried = true;
          continue;
        }
      }
      checkStatus(payload, requestId);
      return answer;
    }
  }

  // ---- keys (draft 4.7.5-4.7.7) ----------------------------------------------------------------

  async createKeys(count = 1): Promise<KeyRep[]> {
    return (await this.request({ method: 'create', uri: '/keys', count })).keys as KeyRep[];
  }

  async retrieveKey(keyUri: string): Promise<KeyRep> {
    return (await this.request({ method: 'retrieve', uri: keyUri })).key as KeyRep;
  }

  async bindKey(keyUri: string, resourceUri: string): Promise<KeyRep> {
    return (await this.request({ method: 'update', uri: keyUri, resourceUri })).key as KeyRep;
  }

  /** A resource's keys, newest bindDate first. */
  async retrieveResourceKeys(resourceUri: string, filter: KeyFilter = {}): Promise<KeyRep[]> {
    const body: Record<string, unknown> = { method: 'retrieve', uri: `${resourceUri}/keys` };
    if (filter.boundAfter !== undefined) body.boundAfter = dateString(filter.boundAfter);
    if (filter.boundBefore !== undefined) body.boundBefore = dateString(filter.boundBefore);
    if (filter.count !== undefined) body.count = filter.count;
    return (await this.request(body as { method: string; uri: string })).keys as KeyRep[];
  }

  // ---- resources (4.7.3-4.7.4) -----------------------------------------------------------------

  /** Creates a KRO; the creator is always authorized. Anonymous bearers come back in `authorizations`. */
  async createResource(options: CreateResourceOptions = {}): Promise<{ resource: ResourceRep; authorizations: AuthorizationRep[] }> {
    const body: Record<string, unknown> = { method: 'create', uri: '/resources' };
    for (const k of ['authIds', 'keyUris', 'anonymous', 'ttl'] as const) if (options[k] !== undefined) body[k] = options[k];
    const answer = await this.request(body as { method: string; uri: string });
    return { resource: answer.resource as ResourceRep, authorizations: (answer.authorizations as AuthorizationRep[] | undefined) ?? [] };
  }

  async retrieveResource(resourceUri: string): Promise<ResourceRep> {
    return (await this.request({ method: 'retrieve', uri: resourceUri })).resource as ResourceRep;
  }

  // ---- authorizations (4.7.8-4.7.11) -----------------------------------------------------------

  async authorize(resourceUri: string, authIds: string[], options: { anonymous?: number; roleUri?: string } = {}): Promise<AuthorizationRep[]> {
    const body: Record<string, unknown> = { method: 'create', uri: '/authorizations', resourceUri, authIds };
    if (options.anonymous !== undefined) body.anonymous = options.anonymous;
    if (options.roleUri !== undefined) body.roleUri = options.roleUri;
    return (await this.request(body as { method: string; uri: string })).authorizations as AuthorizationRep[];
  }

  /** All authorizations on a resource, or the one of `authId` (an array of 0 or 1). */
  async listAuthorizations(resourceUri: string, authId?: string): Promise<AuthorizationRep[]> {
    const uri = authId === undefined ? `${resourceUri}/authorizations` : `${resourceUri}/authorizations?authId=${encodeURIComponent(authId)}`;
    return (await this.request({ method: 'retrieve', uri })).authorizations as AuthorizationRep[];
  }

  /** Removes `authId`'s authorization from a resource. */
  async deauthorize(resourceUri: string, authId: string): Promise<AuthorizationRep> {
    const uri = `${resourceUri}/authorizations?authId=${encodeURIComponent(authId)}`;
    return (await this.request({ method: 'delete', uri })).authorization as AuthorizationRep;
  }

  async deleteAuthorization(authorizationUri: string): Promise<AuthorizationRep> {
    return (await this.request({ method: 'delete', uri: authorizationUri })).authorization as AuthorizationRep;
  }

  /** Bulk removal (at most 100 authIds); answers the authorizations removed. */
  async deauthorizeMany(resourceUri: string, authIds: string[]): Promise<AuthorizationRep[]> {
    return (await this.request({ method: 'delete', uri: '/authorizations', resourceUri, authIds })).authorizations as AuthorizationRep[];
  }

  // ---- channel ---------------------------------------------------------------------------------

  async ping(): Promise<void> {
    await this.request({ method: 'update', uri: '/ping' });
  }

  /** Deletes the current channel at the KMS (e.g. when its key may be compromised). */
  async deleteChannel(): Promise<void> {
    const channel = this.channel;
    if (!channel) return;
    await this.request({ method: 'delete', uri: channel.uri });
    this.dropChannel(channel.uri);
  }

  // ---- administrative API ----------------------------------------------------------------------

  async createCmk(assignedOrgId?: string): Promise<CmkRep> {
    const body: Record<string, unknown> = { method: 'create', uri: '/cmk' };
    if (assignedOrgId !== undefined) body.assignedOrgId = assignedOrgId;
    return (await this.request(body as { method: string; uri: string })).key as CmkRep;
  }

  async updateCmk(cmkUri: string, state: 'active' | 'inactive'): Promise<CmkRep> {
    return (await this.request({ method: 'update', uri: cmkUri, state })).key as CmkRep;
  }

  async listCmks(assignedOrgId?: string): Promise<CmkRep[]> {
    const body: Record<string, unknown> = { method: 'retrieve', uri: '/cmk' };
    if (assignedOrgId !== undefined) body.assignedOrgId = assignedOrgId;
    return (await this.request(body as { method: string; uri: string })).keys as CmkRep[];
  }

  // ---- content ---------------------------------------------------------------------------------

  /** Encrypts content with a KMS key: a JWE whose kid tells recipients which key to ask for. */
  encrypt(key: KeyRep, plaintext: Uint8Array | string): Promise<string> {
    return encryptContent(key, plaintext);
  }

  /** Fetches the key a JWE names (if this user is authorized) and decrypts it. */
  async decrypt(jwe: string): Promise<Uint8Array> {
    return decryptContent(jwe, await this.retrieveKey(contentKeyUri(jwe)));
  }

  /** Closes the connection; every later call of this client fails with CLIENT_CLOSED. */
  async close(): Promise<void> {
    this.closed = true;
    await this.transport?.close();
    this.transport = undefined;
    this.channel = undefined;
    this.channelKeys.clear();
  }
}

/** A ping or the deletion of a channel: what a channel's holder does for itself. */
function isChannelUpkeep(body: Record<string, unknown>): boolean {
  const uri = typeof body.uri === 'string' ? body.uri : '';
  return (body.method === 'update' && /(^|\/)ping$/.test(uri)) || (body.method === 'delete' && /(^|\/)ecdhe\/[^/]+$/.test(uri));
}
