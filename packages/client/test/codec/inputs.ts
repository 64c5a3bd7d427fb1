/**
 * Generated inputs and the independent strictness oracle shared by the codec's differential tests
 * (channel.test.ts, static-signature.test.ts). Everything random comes from the test's seeded source,
 * so a failing case's seed reproduces it.
 */
import type { Decrypted, ProtectedHeader } from '@openkms/protocol';
import type { seededRandom } from '../support.js';

type SeededRandom = ReturnType<typeof seededRandom>;

/** Characters that stress UTF-8 and JSON: multi-byte, astral, combining, RTL, separators, controls, lone surrogates, a BOM. */
const UNICODE = ['é', 'ß', '漢', '字', '😀', '🔑', 'e\u0301', 'שלום', '\u200b', '\u2028', '\u0000', '\n', '"', '\\', '\ud800', '\udfff', '\ufeff'];
const B64ALPHA = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

export const b64u = (bytes: Uint8Array | string): string => (typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : Buffer.from(bytes)).toString('base64url');
export const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;
export const codeOf = (error: unknown): unknown => (error as { code?: unknown } | null)?.code;
export const isCanonical = (segment: string): boolean => Buffer.from(segment, 'base64url').toString('base64url') === segment;

export type Outcome = { ok: true; plaintext: Uint8Array; header: ProtectedHeader } | { ok: false; error: unknown };
export async function outcome(run: () => Promise<Decrypted>): Promise<Outcome> {
  try {
    return { ok: true, ...(await run()) };
  } catch (error) {
    return { ok: false, error };
  }
}

/** A protected header to encode: JSON text, raw bytes, or an object to serialise. */
export type Header = string | Buffer | Record<string, unknown>;
export const headerSegment = (h: Header): string => (typeof h === 'string' ? b64u(h) : Buffer.isBuffer(h) ? h.toString('base64url') : b64u(JSON.stringify(h)));

/**
 * The strictness oracle, computed by decoding and re-encoding (not with the protocol's strict-jose
 * helpers): `segments` segments, each canonical unpadded base64url, and a protected header that is
 * valid UTF-8 JSON (no BOM), an object whose members are among `members`, `kid` and `cty` strings.
 */
export function strictlyWellFormed(compact: string, segments: number, members: readonly string[]): boolean {
  const parts = compact.split('.');
  if (parts.length !== segments || !parts.every(isCanonical)) return false;
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(Buffer.from(parts[0]!, 'base64url')));
  } catch {
    return false;
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) return false;
  return Object.entries(header).every(([name, value]) => members.includes(name) && (name !== 'kid' && name !== 'cty' ? true : typeof value === 'string'));
}

export function codecInputs(random: SeededRandom) {
  const { rand, int, pick } = random;

  function randomText(chars: number): string {
    let s = '';
    for (let i = 0; i < chars; i++) s += rand() < 0.6 ? String.fromCharCode(32 + int(95)) : pick(UNICODE);
    return s;
  }

  /** A payload size: empty, small, around the usual answer, several KB, or 64 KB. */
  function randomSize(): number {
    const r = rand();
    if (r < 0.05) return 0;
    if (r < 0.3) return 1 + int(64);
    if (r < 0.8) return int(2048);
    if (r < 0.98) return 2048 + int(14_000);
    return 65_536;
  }

  /** Binary bytes, or a JSON answer whose strings are unicode (what the KMS and the SDK send), of about `size` bytes. */
  function randomPayload(size = randomSize()): Uint8Array {
    if (size === 0 || rand() < 0.35) return random.bytes(size);
    const text = JSON.stringify({ status: 200, requestId: randomText(8), value: randomText(Math.max(0, Math.floor(size / 2) - 30)) });
    return new TextEncoder().encode(text);
  }

  const hex = (n: number) => Array.from(random.bytes(n), (b) => b.toString(16).padStart(2, '0')).join('');
  const channelUri = () => `kms://kms.${pick(['a.example', 'b.example'])}/ecdhe/${hex(4)}-${hex(2)}-${hex(2)}-${hex(2)}-${hex(6)}`;

  /** One bit of a segment's decoded bytes flipped, re-encoded canonically (undefined when the segment is empty). */
  function flipBit(segment: string): string | undefined {
    const bytes = Buffer.from(segment, 'base64url');
    if (bytes.length === 0) return undefined;
    const i = int(bytes.length);
    bytes[i] = bytes[i]! ^ (1 << int(8));
    return bytes.toString('base64url');
  }

  /**
   * Tamperings of any compact serialisation, on a random segment: a character, a bit, truncation, a
   * segment added, removed or emptied, padding, the standard alphabet, whitespace, non-canonical
   * trailing bits, a character outside the alphabet. Returns [kind, tampered].
   */
  function segmentTamper(compact: string): [string, string] {
    const parts = compact.split('.');
    const i = int(parts.length);
    const seg = parts[i]!;
    const set = (s: string): string => parts.map((p, j) => (j === i ? s : p)).join('.');
    switch (int(11)) {
      case 0: {
        if (!seg) return ['char:into-empty', set(pick([...B64ALPHA]) + pick([...B64ALPHA]))];
        const j = int(seg.length);
        let c = pick([...B64ALPHA]);
        while (c === seg[j]) c = pick([...B64ALPHA]);
        return [`char:seg${i}`, set(seg.slice(0, j) + c + seg.slice(j + 1))];
      }
      case 1:
        return [`bit:seg${i}`, set(flipBit(seg) ?? b64u(random.bytes(1 + int(3))))];
      case 2:
        return ['truncate', compact.slice(0, int(compact.length))];
      case 3: {
        const copy = [...parts];
        copy.splice(int(copy.length + 1), 0, rand() < 0.5 ? '' : b64u(random.bytes(int(20))));
        return ['add-segment', copy.join('.')];
      }
      case 4:
        return ['remove-segment', parts.filter((_, j) => j !== i).join('.')];
      case 5: {
        const correct = (4 - (seg.length % 4)) % 4;
        return [`padding:seg${i}`, set(seg + '='.repeat(correct && rand() < 0.7 ? correct : 1 + int(2)))];
      }
      case 6: {
        if (/[-_]/.test(seg)) return [`plus-slash:seg${i}`, set(seg.replace(/-/g, '+').replace(/_/g, '/'))];
        const j = int(seg.length + 1);
        return [`plus-slash-insert:seg${i}`, set(seg.slice(0, j) + pick(['+', '/']) + seg.slice(j))];
      }
      case 7: {
        const j = int(seg.length + 1);
        return [`whitespace:seg${i}`, set(seg.slice(0, j) + pick([' ', '\n', '\t', '\r\n']) + seg.slice(j))];
      }
      case 8: {
        // non-canonical trailing bits on a segment whose length leaves unused bits: same bytes for atob
        const candidates = parts.flatMap((p, k) => (p.length % 4 >= 2 ? [k] : []));
        if (candidates.length === 0) return ['noncanonical:none', compact];
        const k = pick(candidates);
        const s = parts[k]!;
        const mask = s.length % 4 === 2 ? 0x0f : 0x03;
        const value = (B64ALPHA.indexOf(s[s.length - 1]!) & ~mask) | (1 + int(mask));
        return [`noncanonical:seg${k}`, parts.map((p, j) => (j === k ? s.slice(0, -1) + B64ALPHA[value] : p)).join('.')];
      }
      case 9:
        return [`empty:seg${i}`, set('')];
      default:
        return ['invalid-char', set(seg + pick(['!', '.', '*', '%', '~', 'é', '\u0000']))];
    }
  }

  /** Header members no KMS writes, for either shape: [label, members to add]. */
  function extraMembers(): [string, Record<string, unknown>] {
    switch (int(8)) {
      case 0: return ['zip', { zip: pick(['DEF', 'GZIP']) }];
      case 1: return ['crit', { crit: pick([['exp'], ['b64'], []]), exp: 1 }];
      case 2: return ['key-reference', { [pick(['jku', 'jwk', 'x5u', 'x5c', 'x5t'])]: pick(['https://attacker.example/jwks', { kty: 'oct', k: 'AAAA' }]) }];
      case 3: return ['typ', { typ: pick(['JOSE', 'JWT']) }];
      case 4: return ['kid-not-string', { kid: pick([7, null, true, ['a'], {}]) }];
      case 5: return ['cty-not-string', { cty: pick([1, null, { a: 1 }]) }];
      case 6: return ['b64', { b64: pick([true, false]) }];
      default: return ['other', { [pick(['epk', 'p2s', 'iv', 'tag', 'x'])]: pick(['AAAAAAAAAAA', 1000, {}]) }];
    }
  }

  return { randomText, randomPayload, channelUri, flipBit, segmentTamper, extraMembers };
}
