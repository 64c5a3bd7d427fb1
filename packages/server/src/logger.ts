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

export function createLogger(level: string, destination?: NodeJS.WritableStream): Pino {
  return pino(
    { level, base: { service: 'kms' }, redact: { paths: REDACT_PATHS, censor: '[redacted]' }, timestamp: pino.stdTimeFunctions.isoTime },
    destination ?? process.stdout,
  );
}
