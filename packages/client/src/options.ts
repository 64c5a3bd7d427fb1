/**
 * The options of a KmsClient, and their check when it is made: an option the SDK cannot use is an
 * INVALID_ARGUMENT naming it, thrown by the constructor, rather than a confusing failure (or a
 * hang: `maxBatch: 0` never sends) at the first request.
 */
import { KmsError, isAuthority, parsePemCertificates } from '@openkms/protocol';
import type { FetchLike } from './transport.js';
import type { WebSocketConstructor } from './ws-transport.js';

export type TokenProvider = string | (() => string | Promise<string>);

export interface KmsClientOptions {
  /** Base URL of the KMS endpoint, e.g. `https://kms.a.example` or `http://127.0.0.1:7001`. */
  url: string;
  /** The user's access token, or a function returning a fresh one for every request. */
  token?: TokenProvider;
  /** PEM text(s) of the CA certificates the KMS certificate must chain to. */
  trustAnchors: string[];
  /** When given, the KMS must be this authority (e.g. `kms.a.example`). */
  authority?: string;
  /** Identifies this client among the user's clients (unbound keys belong to one). Default: random. */
  clientId?: string;
  /** `http` (batched, default) or `websocket`. */
  transport?: 'http' | 'websocket';
  /** WebSocket constructor where there is no global one (Node 20: pass the `ws` package's). */
  WebSocket?: WebSocketConstructor;
  fetch?: FetchLike;
  /** HTTP coalescing: wait this long for companions (default 5 ms), at most `maxBatch` (50) a request. */
  debounceMs?: number;
  maxBatch?: number;
  /** Per-request timeout in ms (default 30 s). */
  timeoutMs?: number;
  /** Re-handshake this many ms before the channel expires (default 60 s). */
  renewBeforeMs?: number;
  /** Clock (epoch ms), injectable for tests. */
  now?: () => number;
  /**
   * Speak as a peer KMS instead of a user (PROTOCOL.md §6): the credential is the peer's static
   * public JWK with its x5c chain, and every request is signed by the peer's static key (a JWS
   * with `aud` and `iat`) inside the channel JWE. `token` is then unused.
   */
  peer?: PeerCredential;
  /**
   * Compliance access (PROTOCOL.md §4): read as this user of your organisation; `token` must be
   * of a user with the `orgAgent` role. Every request carries it in `credential.onBehalfOf` but
   * the handshake, ping and closing the channel (the channel stays yours); the KMS allows the four
   * reads only (retrieve a key, a resource, its keys, its authorizations) and answers anything
   * else 403.
   */
  onBehalfOf?: string;
}

export interface PeerCredential {
  /** `kms://<this KMS's authority>`: the JWS kid, equal to `jwk.kid`. */
  kid: string;
  /** The public static JWK with x5c. */
  jwk: Record<string, unknown>;
  /** Signs `payload` as a compact JWS PS256 with header kid = `kid`. */
  sign(payload: Uint8Array): Promise<string>;
}

function refuse(option: string, why: string, cause?: unknown): never {
  throw new KmsError('INVALID_ARGUMENT', `options.${option} ${why}`, { cause });
}

function checkUrl(value: unknown): void {
  let url: URL;
  try {
    url = new URL(String(value));
  } catch (err) {
    refuse('url', `is not a URL: ${String(value).slice(0, 100)}`, err);
  }
  // The transports append /.well-known/kms, /kms/messages and /kms/ws to it.
  if (url.protocol !== 'http:' && url.protocol !== 'https:') refuse('url', `must be http: or https:, not ${url.protocol}`);
  if (url.search || url.hash) refuse('url', 'must be a base URL, without query or fragment');
}

/**
 * Anchors are parsed again when the certificate is checked; here only their shape. An empty list
 * passes: it refuses every KMS certificate when the client connects (CERTIFICATE_REFUSED).
 */
function checkTrustAnchors(value: unknown): void {
  if (!Array.isArray(value)) refuse('trustAnchors', 'must be an array of PEM texts');
  value.forEach((pem: unknown, i) => {
    if (typeof pem !== 'string') refuse(`trustAnchors[${i}]`, 'is not a PEM text');
    let certificates: string[];
    try {
      certificates = parsePemCertificates(pem);
    } catch (err) {
      refuse(`trustAnchors[${i}]`, `is not usable: ${(err as Error).message}`, err);
    }
    if (certificates.length === 0) refuse(`trustAnchors[${i}]`, 'holds no PEM CERTIFICATE block');
  });
}

function checkNumber(option: string, value: unknown, rule: 'positive' | 'non-negative' | 'positive integer'): void {
  if (value === undefined) return;
  const ok =
    typeof value === 'number' &&
    Number.isFinite(value) &&
    (rule === 'non-negative' ? value >= 0 : value > 0) &&
    (rule !== 'positive integer' || Number.isInteger(value));
  if (!ok) refuse(option, `must be a ${rule} number of ${option === 'maxBatch' ? 'messages' : 'ms'}, not ${String(value)}`);
}

/** Throws INVALID_ARGUMENT, naming the option, unless the client can work with `options`. */
export function checkOptions(options: KmsClientOptions): void {
  if (typeof options !== 'object' || options === null) throw new KmsError('INVALID_ARGUMENT', 'options must be an object');
  const o = options as unknown as Record<string, unknown>;
  checkUrl(o.url);
  checkTrustAnchors(o.trustAnchors);
  if (o.authority !== undefined && (typeof o.authority !== 'string' || !isAuthority(o.authority.toLowerCase()))) {
    refuse('authority', 'is not a KMS authority (a host name such as kms.a.example)');
  }
  if (o.token !== undefined && typeof o.token !== 'string' && typeof o.token !== 'function') refuse('token', 'must be a string or a function returning one');
  if (o.clientId !== undefined && (typeof o.clientId !== 'string' || o.clientId === '')) refuse('clientId', 'must be a non-empty string');
  if (o.transport !== undefined && o.transport !== 'http' && o.transport !== 'websocket') refuse('transport', "must be 'http' or 'websocket'");
  for (const name of ['fetch', 'WebSocket', 'now'] as const) {
    if (o[name] !== undefined && typeof o[name] !== 'function') refuse(name, 'must be a function');
  }
  checkNumber('timeoutMs', o.timeoutMs, 'positive');
  checkNumber('renewBeforeMs', o.renewBeforeMs, 'non-negative');
  checkNumber('debounceMs', o.debounceMs, 'non-negative');
  checkNumber('maxBatch', o.maxBatch, 'positive integer');
  const peer = o.peer as Partial<PeerCredential> | undefined;
  if (peer !== undefined && (typeof peer !== 'object' || peer === null || typeof peer.kid !== 'string' || typeof peer.jwk !== 'object' || peer.jwk === null || typeof peer.sign !== 'function')) {
    refuse('peer', 'must be { kid, jwk, sign }');
  }
  if (o.onBehalfOf !== undefined && (typeof o.onBehalfOf !== 'string' || o.onBehalfOf === '')) refuse('onBehalfOf', 'must be a non-empty user id');
  if (o.onBehalfOf !== undefined && peer !== undefined) refuse('onBehalfOf', 'is for a user’s token, not with options.peer');
}
