/**
 * Reading a request out of an opened message (PROTOCOL.md §4): UTF-8 JSON, the basic request
 * schema (the operation's own members are validated by the operation), and the rule that the
 * static key establishes channels and nothing else.
 */
import { KmsError, Limits, basicRequestSchema, parseKmsUri, validate, type KmsRequest } from '@openkms/protocol';
import type { RequestRecord } from './record.js';

const decoder = new TextDecoder('utf-8', { fatal: true });

/** UTF-8 text of a payload; anything else is the client's error (400), never a 500. */
export function text(plaintext: Uint8Array): string {
  try {
    return decoder.decode(plaintext);
  } catch {
    throw new KmsError('PAYLOAD_INVALID', 'payload is not UTF-8');
  }
}

export function parseJson(plaintext: Uint8Array): unknown {
  const decoded = text(plaintext);
  try {
    return JSON.parse(decoded);
  } catch {
    throw new KmsError('PAYLOAD_INVALID', 'payload is not JSON');
  }
}

/**
 * Validates the basic request and records what it says. The requestId is recorded first, even
 * from a request that fails validation, so that the error answer can echo it.
 */
export function readRequest(raw: unknown, record: RequestRecord): KmsRequest {
  if (raw && typeof raw === 'object' && !Array.isArray(raw)) {
    const rid = (raw as { requestId?: unknown }).requestId;
    if ((typeof rid === 'string' && rid.length <= Limits.maxIdChars) || (typeof rid === 'number' && Number.isSafeInteger(rid))) record.requestId = rid;
  }
  const base = validate(basicRequestSchema, raw);
  record.method = base.method;
  record.uri = base.uri;
  record.clientId = base.client.clientId;
  return { ...(raw as object), ...base } as KmsRequest;
}

/** The static key takes `create /ecdhe` and nothing else; checked before any credential. */
export function onlyHandshake(request: KmsRequest, authority: string): KmsRequest {
  const uri = parseKmsUri(request.uri);
  const here = uri && (uri.authority === undefined || uri.authority === authority);
  if (request.method !== 'create' || !here || uri.segments.length !== 1 || uri.segments[0] !== 'ecdhe') {
    throw KmsError.badRequest('invalid field uri: the static key only takes create /ecdhe');
  }
  return request;
}
