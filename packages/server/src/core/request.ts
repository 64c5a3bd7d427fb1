/**
 * Reading a request out of an opened message (PROTOCOL.md §4): UTF-8 JSON, the basic request
 * schema (the operation's own members are validated by the operation), and the rule that the
 * static key establishes channels and nothing else.
 */
import { KmsError, Limits, isPlainText, jsonDepthWithin, parseKmsUri, readBasicRequest, topLevelMember, type KmsRequest } from '@openkms/protocol';
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

/**
 * The payload as JSON. One nested deeper than Limits.maxJsonDepth is refused before it is parsed
 * (parsing it is what would cost); its requestId, read from the top level alone, is still noted
 * in `record` so the refusal echoes it.
 */
export function parseJson(plaintext: Uint8Array, record?: RequestRecord): unknown {
  const decoded = text(plaintext);
  if (!jsonDepthWithin(decoded, Limits.maxJsonDepth)) {
    if (record) noteRequestId({ requestId: topLevelMember(decoded, 'requestId') }, record);
    throw new KmsError('PAYLOAD_INVALID', `payload nests deeper than ${Limits.maxJsonDepth} levels`);
  }
  try {
    return JSON.parse(decoded);
  } catch {
    throw new KmsError('PAYLOAD_INVALID', 'payload is not JSON');
  }
}

/**
 * Records the requestId of a payload that may fail later, so that the error answer can echo it:
 * only one that is valid itself (a malformed one, say with a lone surrogate, cannot be echoed or
 * audited verbatim, so the answer carries none: docs/decisions.md).
 */
export function noteRequestId(raw: unknown, record: RequestRecord): void {
  if (raw && typeof raw === 'object' && !Array.isArray(raw)) {
    const rid = (raw as { requestId?: unknown }).requestId;
    if ((typeof rid === 'string' && rid.length <= Limits.maxIdChars && isPlainText(rid)) || (typeof rid === 'number' && Number.isSafeInteger(rid))) record.requestId = rid;
  }
}

/** Validates the basic request and records what it says; the requestId first (noteRequestId). */
export function readRequest(raw: unknown, record: RequestRecord): KmsRequest {
  noteRequestId(raw, record);
  const base = readBasicRequest(raw);
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
