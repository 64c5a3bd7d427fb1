/**
 * What the SDK accepts as an answer once it has verified or decrypted it (PROTOCOL.md §4): a JSON
 * object with a status of the profile, naming the request it answers. The transport is untrusted,
 * so an answer to another request (replayed or misrouted) is refused even when it decrypts.
 */
import { KmsError, type KmsResponse, type RequestId } from '@openkms/protocol';
import type { Answer } from './transport.js';

const dec = new TextDecoder();

/** The success statuses of §4; any other status is an error answer. */
const SUCCESS: ReadonlySet<number> = new Set([200, 201, 204]);

/** The payload of a verified or decrypted answer; ANSWER_INVALID unless it has the shape of one. */
export function readPayload(plaintext: Uint8Array): KmsResponse {
  let payload: unknown;
  try {
    payload = JSON.parse(dec.decode(plaintext));
  } catch (err) {
    throw new KmsError('ANSWER_INVALID', 'KMS answer is not JSON', { cause: err });
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) throw new KmsError('ANSWER_INVALID', 'KMS answer is not a JSON object');
  const { status, reason, requestId } = payload as Record<string, unknown>;
  if (!Number.isInteger(status)) throw new KmsError('ANSWER_INVALID', 'KMS answer has no integer status');
  if (reason !== undefined && typeof reason !== 'string') throw new KmsError('ANSWER_INVALID', 'KMS answer has a reason that is not a string');
  if (requestId !== undefined && typeof requestId !== 'string' && typeof requestId !== 'number') throw new KmsError('ANSWER_INVALID', 'KMS answer has a requestId that is neither a string nor a number');
  return payload as KmsResponse;
}

/** Throws unless the answer names the request it answers: the same requestId, of the same type. */
export function answerFor(answer: Answer, requestId: RequestId): void {
  if (answer.payload.requestId !== requestId) throw new KmsError('ANSWER_INVALID', 'KMS answer is for another request (replayed or misrouted)', { requestId });
}

/**
 * Throws the KmsError an error answer stands for (its status mapped by `KmsError.fromWire`);
 * returns when the answer is a success. A handshake succeeds with 201 only, and its refusal is
 * marked `handshake`: for a peer KMS that is a refusal of this KMS, not of the user it asks for.
 */
export function checkStatus(payload: KmsResponse, requestId: RequestId, handshake = false): void {
  const { status } = payload;
  if (handshake ? status === 201 : SUCCESS.has(status)) return;
  if (SUCCESS.has(status)) throw new KmsError('ANSWER_INVALID', `KMS answered the handshake with status ${status}, not 201`, { requestId });
  const reason = payload.reason ?? (handshake ? 'no reason given' : 'request failed');
  throw KmsError.fromWire(status, handshake ? `handshake refused: ${reason}` : reason, { requestId, handshake });
}
