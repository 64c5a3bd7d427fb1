/** The server package's version, from its package.json (bin/ and dist/ ship beside it). */
import { readFileSync } from 'node:fs';

export const KMS_VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
