/**
 * @openkms/protocol: the wire, shared by the SDK and the server (browser-safe). The names listed
 * here are the ones the SDK, the server, the examples, the benchmark and the tests use; anything
 * else in this package is internal to it.
 */
export { Status, ErrorCodes, WIRE_ERROR_CODES, KmsError, hasCode, type StatusCode, type ErrorCode, type KmsErrorOptions } from './errors.js';
export { formatDate, parseDate } from './dates.js';
export { absoluteUri, isAuthority, isUuid, objectRef, parseKmsUri, type Collection } from './uri.js';
export {
  STATIC_KEY_ALGS,
  encryptStatic,
  joseCodec,
  peekHeader,
  segmentCount,
  verifyStatic,
  type AsymmetricKey,
  type Decrypted,
  type MessageCodec,
  type ProtectedHeader,
} from './codec.js';
export { isCanonicalBase64url, protectedHeaderProblem, type HeaderProblem } from './strict-jose.js';
export { deriveChannelKey, generateEphemeralKeyPair, importEcPublicKey } from './ecdhe.js';
export {
  type AuthorizationRep,
  type CmkRep,
  type Credential,
  type EphemeralKeyRep,
  type KeyRep,
  type KmsRequest,
  type KmsResponse,
  type Method,
  type RequestId,
  type ResourceRep,
} from './messages.js';
export {
  basicRequestSchema,
  bindKeySchema,
  bulkDeleteAuthorizationsSchema,
  createAuthorizationsSchema,
  createCmkSchema,
  createKeysSchema,
  createResourceSchema,
  ecdheSchema,
  invalidationsSchema,
  listCmksSchema,
  retrieveKeysSchema,
  readBasicRequest,
  updateCmkSchema,
  validate,
  type BasicRequest,
} from './schemas.js';
export { CertificateError, checkOwnCertificateChain, loadX509, parsePemCertificates, verifyKmsCertificate } from './certs.js';
export { Limits } from './limits.js';
export { jsonDepthWithin, parseBoundedJson, topLevelMember } from './json.js';
export { isPlainText, isWellFormedText, textProblem } from './text.js';
export { matchOperation, operation, operations, operationsFor, type Caller, type FederationMode, type Operation, type OperationName, type OperationSpec, type RetryMode } from './operations.js';
