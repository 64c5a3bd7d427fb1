/**
 * How the SDK reports what went wrong on the way to the KMS (docs/errors.md): the code says what
 * failed, the reason names the request and the endpoint, and the underlying error stays as `cause`.
 * An unreachable KMS then reads `KMS unreachable: POST https://kms/kms/messages: connect
 * ECONNREFUSED 10.0.0.7:443` instead of the runtime's bare "fetch failed".
 */
import { KmsError, type ErrorCode, type RequestId } from '@openkms/protocol';

/**
 * The most specific words of a failure: the innermost error in its `cause` chain that says
 * something (undici's "fetch failed" hides the socket error as its cause), with its system code
 * when the message does not already carry it.
 */
export function failureDetail(err: unknown): string {
  let detail = typeof err === 'string' && err !== '' ? err : 'no detail given';
  let current = err;
  for (let depth = 0; depth < 8 && typeof current === 'object' && current !== null; depth++) {
    const { message, code, cause } = current as { message?: unknown; code?: unknown; cause?: unknown };
    const words = typeof message === 'string' ? message : '';
    if (typeof code === 'string' && !words.includes(code)) detail = words ? `${words} (${code})` : code;
    else if (words) detail = words;
    current = cause;
  }
  return detail;
}

/**
 * Failures of the connection itself (refused, reset, a WebSocket closed before the answer), as
 * opposed to an answer (an HTTP status, a KMS error) or a timeout: after these, and only these, the
 * client retries a request at once (client.ts). Both are KMS_UNREACHABLE: the code says what the
 * application sees, this mark what the client may do about it.
 */
const lostConnections = new WeakSet<KmsError>();

/** Marks `err` as the failure of a connection: nothing came back, the request may be retried. */
export function connectionLost(err: KmsError): KmsError {
  lostConnections.add(err);
  return err;
}

/** Whether `err` says the connection failed before an answer came (see connectionLost). */
export function isConnectionLost(err: unknown): boolean {
  return err instanceof KmsError && lostConnections.has(err);
}

/** `what` (e.g. "POST https://kms/kms/messages") never reached the KMS, or its connection broke. */
export function unreachable(what: string, cause: unknown, requestId?: RequestId): KmsError {
  return connectionLost(new KmsError('KMS_UNREACHABLE', `KMS unreachable: ${what}: ${failureDetail(cause)}`, { cause, requestId }));
}

/** `what` got no answer within the request timeout. */
export function timedOut(what: string, timeoutMs: number, cause?: unknown, requestId?: RequestId): KmsError {
  return new KmsError('KMS_TIMEOUT', `KMS did not answer in time: ${what} (timeout ${timeoutMs} ms)`, { cause, requestId });
}

/** The `error` member of the KMS's JSON error body, else the body's first characters. */
function bodyDetail(body: string): string {
  try {
    const error = (JSON.parse(body) as { error?: unknown } | null)?.error;
    if (typeof error === 'string') return error;
  } catch {
    // Not JSON: whatever answered is not the KMS's HTTP layer; show what it said.
  }
  return body.trim().slice(0, 200) || 'empty body';
}

/**
 * An HTTP status other than 200 from a KMS endpoint. The statuses the KMS's own HTTP layer answers
 * there (`kmsStatuses`: 500 for its internal failures, 413 for a batch over the limit) keep their
 * wire meaning. A gateway in front of the KMS answers 502, 503 or 504 when it cannot reach it:
 * unreachable, worth a retry. Any other status (a 404, a redirect, a proxy's 401) is no answer of
 * the profile: `otherwise` (ANSWER_INVALID, or DISCOVERY_INVALID for the discovery document).
 */
export function httpFailure(what: string, status: number, body: string, otherwise: ErrorCode, kmsStatuses: readonly number[] = [500]): KmsError {
  const said = `${what} answered HTTP ${status}: ${bodyDetail(body)}`;
  if (kmsStatuses.includes(status)) return KmsError.fromWire(status, said);
  // A gateway that gave up waiting for the KMS: a timeout, as if the SDK had waited itself.
  if (status === 504) return new KmsError('KMS_TIMEOUT', `KMS did not answer in time: ${said}`);
  if (status === 502 || status === 503) return new KmsError('KMS_UNREACHABLE', `KMS unreachable: ${said}`);
  return new KmsError(otherwise, said);
}

/** Runs one step of reading an answer; any failure but a KmsError becomes ANSWER_INVALID, naming the step. */
export async function answerStep<T>(what: string, step: () => Promise<T> | T): Promise<T> {
  try {
    return await step();
  } catch (err) {
    if (err instanceof KmsError) throw err;
    throw new KmsError('ANSWER_INVALID', `${what}: ${failureDetail(err)}`, { cause: err });
  }
}
