/** Status codes of PROTOCOL.md §4 (RFC 7231 semantics, plus the KMS reset 499). */
export const Status = {
  OK: 200,
  CREATED: 201,
  NO_CONTENT: 204,
  BAD_REQUEST: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  CONFLICT: 409,
  TOO_LARGE: 413,
  TOO_MANY: 429,
  RESET: 499,
  INTERNAL: 500,
  BAD_GATEWAY: 502,
  SERVICE_UNAVAILABLE: 503,
  GATEWAY_TIMEOUT: 504,
} as const;
export type StatusCode = (typeof Status)[keyof typeof Status];

/**
 * Every failure the project reports, as a closed table: code -> status and meaning. Behaviour is
 * decided by the code, never by the reason text (which is for people and may change). The wire
 * carries only `status` and `reason`; a client that receives an error answer gets the code its
 * status stands for (the first code of that status below). docs/errors.md lists the same table and
 * a test keeps the two in sync. `by` says who produces a code: a KMS, in an error answer, or the SDK
 * itself. Mind that a status maps back to one code only: a new KMS code of a status that already
 * has one (a second 409, another 400) reaches clients and peers as that first code.
 */
export const ErrorCodes = {
  // Answers a KMS sends (the wire).
  INVALID_FIELD: { status: 400, by: 'kms', meaning: 'a request member is missing, malformed or out of range; the reason names it' },
  PAYLOAD_INVALID: { status: 400, by: 'kms', meaning: 'the decrypted payload is not UTF-8 JSON, nests arrays and objects deeper than 32 levels, or is nested where it must not be' },
  KEY_EXPIRED: { status: 400, by: 'kms', meaning: 'an unbound key expired before it was bound' },
  CREDENTIAL_INVALID: { status: 401, by: 'kms', meaning: 'the bearer token or peer proof is missing, invalid, expired or not for this KMS' },
  NOT_AUTHORIZED: { status: 403, by: 'kms', meaning: 'the principal may not do this to this object' },
  NOT_FOUND: { status: 404, by: 'kms', meaning: 'no such object, or not served by this KMS' },
  KEY_ALREADY_BOUND: { status: 409, by: 'kms', meaning: 'the key is bound to a resource already' },
  TOO_LARGE: { status: 413, by: 'kms', meaning: 'a count, list or size is over its limit' },
  RATE_LIMITED: { status: 429, by: 'kms', meaning: 'the principal (for a handshake: the client address) sent more requests than its limit allows' },
  CHANNEL_RESET: { status: 499, by: 'kms', meaning: 'the message could not be opened: handshake again' },
  INTERNAL: { status: 500, by: 'kms', meaning: 'a failure inside the KMS; nothing about it is revealed' },
  PEER_FAILED: { status: 502, by: 'kms', meaning: 'a peer KMS failed, refused this KMS, or answered something unusable' },
  STORAGE_UNAVAILABLE: { status: 503, by: 'kms', meaning: 'the KMS cannot reach its storage now: retry later' },
  PEER_TIMEOUT: { status: 504, by: 'kms', meaning: 'a peer KMS did not answer within the federation peer timeout' },
  // Failures the client SDK detects itself (never sent by a KMS).
  INVALID_ARGUMENT: { status: 400, by: 'sdk', meaning: 'the SDK was called with an option or argument it cannot use' },
  CONTENT_INVALID: { status: 400, by: 'sdk', meaning: 'encrypted content is malformed, tampered, truncated or under another key' },
  ANSWER_INVALID: { status: 502, by: 'sdk', meaning: 'the KMS answered something the SDK refuses (unsigned, for another request, malformed)' },
  DISCOVERY_INVALID: { status: 502, by: 'sdk', meaning: 'the discovery document is malformed or names another KMS' },
  CERTIFICATE_REFUSED: { status: 502, by: 'sdk', meaning: 'the KMS certificate does not chain to a trust anchor, or names another KMS' },
  KMS_UNREACHABLE: { status: 503, by: 'sdk', meaning: 'the KMS could not be reached, or the connection closed before it answered; see cause' },
  CLIENT_CLOSED: { status: 503, by: 'sdk', meaning: 'the client was closed before the request was answered' },
  KMS_TIMEOUT: { status: 504, by: 'sdk', meaning: 'the KMS did not answer within the request timeout' },
} as const satisfies Record<string, { status: number; by: 'kms' | 'sdk'; meaning: string }>;

export type ErrorCode = keyof typeof ErrorCodes;

/** The code a status received on the wire stands for (the first code of that status). */
const WIRE_CODES = new Map<number, ErrorCode>();
for (const [code, { status, by }] of Object.entries(ErrorCodes) as [ErrorCode, { status: number; by: string }][]) {
  if (by === 'kms' && !WIRE_CODES.has(status)) WIRE_CODES.set(status, code);
}

/** The codes a KMS sends on the wire, as a client receives them (one per status). */
export const WIRE_ERROR_CODES: readonly ErrorCode[] = [...WIRE_CODES.values()];

export interface KmsErrorOptions {
  /** The requestId of the failed request, when known. */
  requestId?: string | number;
  /** The underlying failure (a network error, a certificate error), kept for diagnosis. */
  cause?: unknown;
  /**
   * Set by the SDK when the KMS refused the ECDHE handshake itself rather than a request on the
   * channel: for a peer KMS that is a refusal of this KMS, not of the user it asks for.
   */
  handshake?: boolean;
}

/**
 * The one error type of the project. Operations throw it; the core maps it to an error (or reset)
 * message in one place. `reason` is shown to the client, so it names the offending field and never
 * carries key material, tokens or internals.
 */
export class KmsError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly reason: string;
  /** The requestId of the failed request, when known (clients set it from the response). */
  readonly requestId: string | number | undefined;
  readonly handshake: boolean;

  constructor(code: ErrorCode, reason: string, options: KmsErrorOptions = {}) {
    const status = ErrorCodes[code].status;
    super(`${status} ${reason}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KmsError';
    this.code = code;
    this.status = status;
    this.reason = reason;
    this.requestId = options.requestId;
    this.handshake = options.handshake ?? false;
  }

  /**
   * An error answer received on the wire. A status outside the profile is the KMS's failure to
   * follow it (ANSWER_INVALID), with the status it sent named in the reason.
   */
  static fromWire(status: number, reason: string, options: KmsErrorOptions = {}): KmsError {
    const code = WIRE_CODES.get(status);
    if (code === undefined) return new KmsError('ANSWER_INVALID', `KMS answered with status ${status} outside the profile: ${reason}`, options);
    return new KmsError(code, reason, options);
  }

  static badRequest(reason: string): KmsError {
    return new KmsError('INVALID_FIELD', reason);
  }
  static unauthorized(reason = 'credential missing, invalid or expired'): KmsError {
    return new KmsError('CREDENTIAL_INVALID', reason);
  }
  static forbidden(reason = 'not allowed'): KmsError {
    return new KmsError('NOT_AUTHORIZED', reason);
  }
  static notFound(reason = 'no such object'): KmsError {
    return new KmsError('NOT_FOUND', reason);
  }
  static tooLarge(reason: string): KmsError {
    return new KmsError('TOO_LARGE', reason);
  }
  static reset(reason = 'request could not be decrypted'): KmsError {
    return new KmsError('CHANNEL_RESET', reason);
  }
}

/** True when `err` is a KmsError with one of `codes`. */
export function hasCode(err: unknown, ...codes: ErrorCode[]): boolean {
  return err instanceof KmsError && codes.includes(err.code);
}
