/**
 * JSON-lines logging to stdout (pino). Redaction paths are a second line of defence: the code
 * never hands key material, bearers or credentials to the logger in the first place.
 */
import { pino, type Logger as Pino } from 'pino';

export const REDACT_PATHS = [
  '*.jwk.k',
  '*.jwk.d',
  'jwk.k',
  'jwk.d',
  '*.bearer',
  'bearer',
  '*.credential',
  'credential',
  '*.client.credential',
  '*.key',
  '*.token',
  'token',
];

/** What the KMS logs through (pino fits it); parts take it as an interface so tests can watch. */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** An error as a log field: name and message only (messages here never carry secrets). */
export function describeError(err: unknown): { name: string; message: string; stack?: string } {
  if (err instanceof Error) return { name: err.name, message: err.message, stack: err.stack };
  return { name: 'unknown', message: String(err) };
}

/** `fields` go on every line (`kms serve --workers`: which process of the KMS wrote it). */
export function createLogger(level: string, destination?: NodeJS.WritableStream, fields: Record<string, string | number> = {}): Pino {
  return pino(
    { level, base: { service: 'kms', ...fields }, redact: { paths: REDACT_PATHS, censor: '[redacted]' }, timestamp: pino.stdTimeFunctions.isoTime },
    destination ?? process.stdout,
  );
}
