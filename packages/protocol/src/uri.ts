/**
 * KMS object URIs (PROTOCOL.md §1): absolute `kms://<authority>/<collection>/<uuid>`, or relative
 * `/<collection>/<uuid>` meaning "this KMS". Responses always carry the absolute form.
 */
import { Limits } from './limits.js';

export type Collection = 'keys' | 'resources' | 'authorizations' | 'ecdhe' | 'cmk';

export interface ParsedUri {
  /** The authority named by the URI, or undefined for the relative form. */
  authority: string | undefined;
  /** Path segments after the authority, e.g. ['resources', '<uuid>', 'keys']. */
  segments: string[];
  /** Query parameters (only `authId` is meaningful to the KMS). */
  query: Map<string, string>;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** A DNS-like authority; may carry a port only for development setups ("kms.localhost"). */
const AUTHORITY = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

export function isUuid(value: string): boolean {
  return UUID.test(value);
}

export function isAuthority(value: string): boolean {
  return value.length <= 253 && AUTHORITY.test(value);
}

/** Parses an absolute or relative KMS URI; returns undefined when it is not one. */
export function parseKmsUri(uri: string): ParsedUri | undefined {
  if (typeof uri !== 'string' || uri.length === 0 || uri.length > Limits.maxUriChars) return undefined;
  let authority: string | undefined;
  let rest = uri;
  if (uri.startsWith('kms://')) {
    const slash = uri.indexOf('/', 6);
    authority = (slash < 0 ? uri.slice(6) : uri.slice(6, slash)).toLowerCase();
    if (!isAuthority(authority)) return undefined;
    rest = slash < 0 ? '/' : uri.slice(slash);
  } else if (!uri.startsWith('/')) {
    return undefined;
  }
  const q = rest.indexOf('?');
  const path = q < 0 ? rest : rest.slice(0, q);
  const query = new Map<string, string>();
  if (q >= 0) {
    const params = new URLSearchParams(rest.slice(q + 1));
    for (const [k, v] of params) {
      if (query.has(k)) return undefined;
      query.set(k, v);
    }
  }
  const segments = path.split('/').filter((s) => s.length > 0);
  if (path !== '/' && path.split('/').slice(1).some((s) => s.length === 0)) {
    // tolerate one trailing slash ("/ecdhe/"), nothing else empty
    if (!(path.endsWith('/') && path.slice(1, -1).split('/').every((s) => s.length > 0))) return undefined;
  }
  return { authority, segments, query };
}

export function absoluteUri(authority: string, collection: Collection, id?: string): string {
  return id === undefined ? `kms://${authority}/${collection}` : `kms://${authority}/${collection}/${id}`;
}

/**
 * Reads `uri` as a reference to one object of `collection`, e.g. a resourceUri or a keyUri.
 * Returns the authority (resolved against `self` for the relative form) and the id.
 */
export function objectRef(
  uri: string,
  collection: Collection,
  self: string,
): { authority: string; id: string } | undefined {
  const parsed = parseKmsUri(uri);
  if (!parsed || parsed.query.size > 0 || parsed.segments.length !== 2) return undefined;
  const [col, id] = parsed.segments as [string, string];
  if (col !== collection || !isUuid(id)) return undefined;
  return { authority: parsed.authority ?? self, id };
}
