/**
 * Talking to the organisation's identity provider (IdP): small, bounded HTTP helpers and the error
 * that says "the IdP, not the token, is the problem".
 */
import { MAX_PROVIDER_RESPONSE_BYTES, PROVIDER_TIMEOUT_MS } from '../limits.js';

/** What the client is told when the IdP cannot be used. Both are 401s (see tokens.ts). */
export type ProviderReason = 'identity provider unreachable' | 'identity provider misconfigured';

/** Which call to the IdP failed (the kind an operator's metrics count). */
export type ProviderCall = 'jwks' | 'discovery' | 'introspection';

/** How each call is named in the operator's log. */
const CALL_NAMES: Readonly<Record<ProviderCall, string>> = { jwks: 'JWKS fetch', discovery: 'OIDC discovery', introspection: 'token introspection' };

/**
 * The IdP could not be used: it is down, slow, answered garbage, or disagrees with our config
 * (discovery issuer mismatch, our introspection client credentials refused). `message` is a
 * description for the operator's log; it never contains a token or a secret.
 */
export class ProviderError extends Error {
  readonly reason: ProviderReason;
  readonly call: ProviderCall;
  /** `detail` is prefixed with the call's name. */
  constructor(reason: ProviderReason, call: ProviderCall, detail: string) {
    super(`${CALL_NAMES[call]}: ${detail}`);
    this.name = 'ProviderError';
    this.reason = reason;
    this.call = call;
  }
}


const LOOPBACK_HOSTS = new Set(['127.0.0.1', '[::1]', 'localhost']);

/**
 * Parses an IdP endpoint from the config. HTTPS is required except on loopback: keys fetched over
 * cleartext could be swapped by anyone on the path (forging every token), and the introspection
 * client secret would travel in the clear.
 */
export function providerUrl(value: string, what: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`identity: ${what} is not a valid URL`);
  }
  if (url.protocol === 'https:') return url;
  if (url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname)) return url;
  throw new Error(`identity: ${what} must be an https URL (plain http is allowed on loopback only)`);
}

/** The part of a fetch answer we use: its status and, when it is JSON, the parsed body. */
export interface ProviderResponse {
  status: number;
  body: unknown;
}

/**
 * One request to the IdP with a timeout and a body-size bound. Redirects are not followed: an IdP
 * endpoint that moves is a config change, not something to chase silently. Network failures and
 * unreadable bodies become ProviderError('identity provider unreachable').
 */
export async function providerFetch(url: URL, init: RequestInit, call: ProviderCall): Promise<ProviderResponse> {
  let res: Response;
  try {
    res = await fetch(url, { ...init, redirect: 'manual', signal: AbortSignal.timeout(PROVIDER_TIMEOUT_MS) });
  } catch (err) {
    const timedOut = err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError');
    throw new ProviderError('identity provider unreachable', call, timedOut ? 'timed out' : 'request failed');
  }
  let text: string;
  try {
    text = await readBounded(res);
  } catch {
    throw new ProviderError('identity provider unreachable', call, 'response body unreadable or too large');
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: res.status, body };
}

async function readBounded(res: Response): Promise<string> {
  const declared = Number(res.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > MAX_PROVIDER_RESPONSE_BYTES) {
    await res.body?.cancel();
    throw new Error('too large');
  }
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > MAX_PROVIDER_RESPONSE_BYTES) {
      await reader.cancel();
      throw new Error('too large');
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
