/**
 * What a strict reader of the wire's fixed JOSE shapes accepts beyond what `jose` checks
 * (ARCHITECTURE.md "The hot path"): every segment canonical unpadded base64url, and a protected
 * header with exactly `alg` (and, in a JWE, `enc`) with the expected values, plus optionally `kid`
 * and `cty`, both strings. `jose` ignores unknown members (and inflates `zip: "DEF"`, honours
 * `b64: false`) and, decoding with `atob`, accepts padding, whitespace and non-canonical trailing
 * bits, which would make a message malleable in its encoding. Every KMS and `node-kms` client
 * sends nothing more than this.
 *
 * Pure string and object checks, with no `node:` import, so a `node:crypto` codec anywhere in the
 * project applies the same rules (the SDK's codec/node.ts; the server's fast-codec.ts states them
 * in its own words).
 */
import type { ProtectedHeader } from './codec.js';

/** Canonical unpadded base64url alphabet; length and trailing bits are checked separately. */
const B64URL = /^[A-Za-z0-9_-]*$/;

/** Value of a base64url character (only called on characters that passed `B64URL`). */
function sextet(c: number): number {
  if (c >= 97) return c - 71; // a-z → 26..51
  if (c >= 65) return c - 65; // A-Z → 0..25
  if (c >= 48) return c + 4; // 0-9 → 52..61
  return c === 45 ? 62 : 63; // '-' → 62, '_' → 63
}

/**
 * Whether `segment` is the one canonical unpadded base64url encoding of some bytes: only
 * `A-Z a-z 0-9 - _`, a length that is not 1 mod 4, and zero unused bits in the last character.
 * (Node's `Buffer.from(s, 'base64url')` skips invalid characters and ignores trailing bits, so a
 * decoder that relies on it checks this first.)
 */
export function isCanonicalBase64url(segment: string): boolean {
  const rem = segment.length & 3;
  if (rem === 1 || !B64URL.test(segment)) return false;
  if (rem === 0) return true;
  const last = sextet(segment.charCodeAt(segment.length - 1));
  return (rem === 2 ? last & 0x0f : last & 0x03) === 0;
}

/** Why a parsed protected header is refused; each maps to one error class of the codec refusing it. */
export type HeaderProblem = 'not an object' | 'member of the wrong type' | 'unsupported member' | 'alg not allowed' | 'enc not allowed';

/**
 * Checks a parsed protected header (the value `JSON.parse` gave): a plain JSON object whose members
 * are exactly `alg` (one of `algs`) and, for a JWE, `enc` (= `enc`), plus optionally `kid` and `cty`
 * (strings). For a JWS (`enc` undefined) an `enc` member is one too many. Member order is not
 * significant. Returns the first problem found, or undefined when it is fine.
 */
export function protectedHeaderProblem(header: unknown, algs: readonly string[], enc?: string): HeaderProblem | undefined {
  if (typeof header !== 'object' || header === null || Array.isArray(header)) return 'not an object';
  const members = header as ProtectedHeader;
  for (const name of Object.keys(members)) {
    switch (name) {
      case 'alg':
        break;
      case 'enc':
        if (enc === undefined) return 'unsupported member';
        break;
      case 'kid':
      case 'cty':
        if (typeof members[name] !== 'string') return 'member of the wrong type';
        break;
      default:
        return 'unsupported member'; // also an own `__proto__`, which JSON.parse creates as a plain member
    }
  }
  if (typeof members.alg !== 'string' || !algs.includes(members.alg)) return 'alg not allowed';
  if (enc !== undefined && members.enc !== enc) return 'enc not allowed';
  return undefined;
}
