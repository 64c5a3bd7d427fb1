/**
 * Which strings may reach storage or the audit log (PROTOCOL.md §4 "Strings"). A lone UTF-16
 * surrogate has no UTF-8 form: an encoder replaces it with U+FFFD, so what a database stores is
 * not what was validated and hashed. U+0000 is refused by PostgreSQL's TEXT and kept by SQLite's:
 * accepting it would make the backends differ. Both are refused everywhere; identifiers and URIs
 * refuse the other C0 controls and DEL as well, which make no sense in them.
 */

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const NUL = /\u0000/;
const CONTROL = /[\u0000-\u001f\u007f]/;

/**
 * One pass over a string for any character the checks below could object to: nearly every string
 * has none, and then the precise checks (the surrogate one looks behind at every character, four
 * times the cost of this) are not needed. Every string member of every request goes through here.
 */
const SUSPECT_TEXT = /[\u0000\ud800-\udfff]/;
const SUSPECT_PLAIN = /[\u0000-\u001f\u007f\ud800-\udfff]/;

/** Text every backend stores and every encoder writes as it is: no lone surrogate, no U+0000. */
export function isWellFormedText(value: string): boolean {
  return !SUSPECT_TEXT.test(value) || (!NUL.test(value) && !LONE_SURROGATE.test(value));
}

/** Well-formed text without control characters: identifiers, URIs, request ids, user ids. */
export function isPlainText(value: string): boolean {
  return !SUSPECT_PLAIN.test(value) || (!CONTROL.test(value) && !LONE_SURROGATE.test(value));
}

/** Why `value` is not well-formed (or, with `plain`, not plain) text; undefined when it is. */
export function textProblem(value: string, plain = false): string | undefined {
  if (!(plain ? SUSPECT_PLAIN : SUSPECT_TEXT).test(value)) return undefined;
  if (LONE_SURROGATE.test(value)) return 'contains a lone UTF-16 surrogate';
  if (NUL.test(value)) return 'contains U+0000';
  if (plain && CONTROL.test(value)) return 'contains a control character';
  return undefined;
}
