/**
 * User identifiers are `local@domain` (PROTOCOL.md §1). An identifier without `@` belongs to the
 * KMS's first domain, so IdPs whose subject is an opaque id (and authIds written that way) map to
 * the same principal. Domains compare case-insensitively; the local part is kept as given.
 */
import { isPlainText } from '@openkms/protocol';

export function normalizeUserId(raw: string, defaultDomain: string): string {
  const at = raw.lastIndexOf('@');
  if (at < 0) return `${raw}@${defaultDomain.toLowerCase()}`;
  return `${raw.slice(0, at)}@${raw.slice(at + 1).toLowerCase()}`;
}

export function domainOf(userId: string): string {
  return userId.slice(userId.lastIndexOf('@') + 1);
}

/**
 * A syntactically acceptable user id: non-empty local part and a dotted or single-label domain,
 * plain text (no control character or lone surrogate: ids are stored and audited as they are).
 */
export function isUserId(userId: string): boolean {
  const at = userId.lastIndexOf('@');
  if (at <= 0 || at === userId.length - 1) return false;
  return /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/.test(userId.slice(at + 1)) && !/\s/.test(userId) && isPlainText(userId);
}
