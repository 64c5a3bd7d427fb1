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
  GATEWAY_TIMEOUT: 504,
} as const;
export type StatusCode = (typeof Status)[keyof typeof Status];

/**
 * The one error type of the project. Operations throw it; the core maps it to an error (or reset)
 * message in one place. `reason` is shown to the client, so it names the offending field and never
 * carries key material, tokens or internals.
 */
export class KmsError extends Error {
  readonly status: number;
  readonly reason: string;
  /** The requestId of the failed request, when known (clients set it from the response). */
  readonly requestId: string | number | undefined;

  constructor(status: number, reason: string, requestId?: string | number) {
    super(`${status} ${reason}`);
    this.name = 'KmsError';
    this.status = status;
    this.reason = reason;
    this.requestId = requestId;
  }

  static badRequest(reason: string): KmsError {
    return new KmsError(Status.BAD_REQUEST, reason);
  }
  static unauthorized(reason = 'credential missing, invalid or expired'): KmsError {
    return new KmsError(Status.UNAUTHORIZED, reason);
  }
  static forbidden(reason = 'not allowed'): KmsError {
    return new KmsError(Status.FORBIDDEN, reason);
  }
  static notFound(reason = 'no such object'): KmsError {
    return new KmsError(Status.NOT_FOUND, reason);
  }
  static conflict(reason: string): KmsError {
    return new KmsError(Status.CONFLICT, reason);
  }
  static tooLarge(reason: string): KmsError {
    return new KmsError(Status.TOO_LARGE, reason);
  }
  static reset(reason = 'request could not be decrypted'): KmsError {
    return new KmsError(Status.RESET, reason);
  }
}
