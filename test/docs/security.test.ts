/**
 * docs/security.md cites, for each claim, the test that pins it: `path/to/file.ts` › "test name".
 * This test reads every citation and fails, naming it, when the file is gone or declares no test
 * (test, it or describe) of exactly that name, so the threat model cannot drift from the tests.
 * Every row of a claim table must cite at least one test, or say **untested**.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';

const ROOT = new URL('../../', import.meta.url);
const DOC = 'docs/security.md';

export interface Citation {
  line: number;
  file: string;
  name: string;
}

/**
 * The citations of a Markdown text. A name runs from `› "` to the last `"` before the next
 * `<br>`, table cell or the end of the line, so a name may itself hold quotes; a `<` or `*` in it is
 * written `\<` or `\*` so that Markdown shows it.
 */
export function citationsOf(markdown: string): Citation[] {
  const out: Citation[] = [];
  markdown.split('\n').forEach((text, i) => {
    for (const m of text.matchAll(/`([^`\s]+\.ts)` › "/g)) {
      const start = m.index! + m[0].length;
      const ends = ['<br>', ' |'].map((s) => text.indexOf(s, start)).filter((at) => at >= 0);
      const piece = text.slice(start, ends.length > 0 ? Math.min(...ends) : text.length).trimEnd();
      assert.ok(piece.endsWith('"'), `${DOC}:${i + 1}: the name cited from ${m[1]} does not end with a quote`);
      // Markdown's backslash escapes (\" \< \*) are the characters themselves, as a reader sees them.
      out.push({ line: i + 1, file: m[1]!, name: piece.slice(0, -1).replace(/\\([!-/:-@[-`{-~])/g, '$1') });
    }
  });
  return out;
}

/** The value of a JS string literal whose opening quote is at `source[at]`; undefined for a template with `${`. */
function literalAt(source: string, at: number): string | undefined {
  const quote = source[at]!;
  let value = '';
  for (let i = at + 1; i < source.length; i++) {
    const c = source[i]!;
    if (c === quote) return value;
    if (quote === '`' && c === '$' && source[i + 1] === '{') return undefined;
    if (c !== '\\') {
      value += c;
      continue;
    }
    const next = source[++i]!;
    if (next === 'u' && source[i + 1] === '{') {
      const close = source.indexOf('}', i);
      value += String.fromCodePoint(parseInt(source.slice(i + 2, close), 16));
      i = close;
    } else if (next === 'u' || next === 'x') {
      const digits = next === 'u' ? 4 : 2;
      value += String.fromCharCode(parseInt(source.slice(i + 1, i + 1 + digits), 16));
      i += digits;
    } else {
      value += ({ n: '\n', t: '\t', r: '\r' } as Record<string, string>)[next] ?? next;
    }
  }
  return undefined;
}

/** The names a test file gives its tests and suites, as the runner reports them. */
export function testNamesOf(source: string): Set<string> {
  const names = new Set<string>();
  for (const m of source.matchAll(/\b(?:test|it|describe)\s*\(\s*(['"`])/g)) {
    const name = literalAt(source, m.index! + m[0].length - 1);
    if (name !== undefined) names.add(name);
  }
  return names;
}

test('docs/security.md: every cited test file exists and declares a test of that name', () => {
  const citations = citationsOf(readFileSync(new URL(DOC, ROOT), 'utf8'));
  assert.ok(citations.length >= 50, `only ${citations.length} citations found: is the format \`file\` › "name" still used?`);
  const names = new Map<string, Set<string>>();
  const problems: string[] = [];
  for (const c of citations) {
    const path = new URL(c.file, ROOT);
    if (!existsSync(path)) {
      problems.push(`${DOC}:${c.line}: ${c.file} does not exist`);
      continue;
    }
    if (!names.has(c.file)) names.set(c.file, testNamesOf(readFileSync(path, 'utf8')));
    if (!names.get(c.file)!.has(c.name)) problems.push(`${DOC}:${c.line}: ${c.file} has no test named "${c.name}"`);
  }
  assert.deepEqual(problems, []);
});

test('docs/security.md: every claim row cites a test or says it is untested', () => {
  const lines = readFileSync(new URL(DOC, ROOT), 'utf8').split('\n');
  let inClaims = false;
  const bare: string[] = [];
  lines.forEach((text, i) => {
    if (/^\| claim \| pinned by \|$/.test(text)) inClaims = true;
    else if (!text.startsWith('|')) inClaims = false;
    else if (inClaims && !text.startsWith('|---')) {
      const pinned = text.split(' | ').at(-1)!;
      if (citationsOf(pinned).length === 0 && !pinned.includes('**untested**')) bare.push(`${DOC}:${i + 1}`);
    }
  });
  assert.deepEqual(bare, [], 'claim rows that cite no test');
});

test('the citation reader: names with quotes, several citations a cell, escapes in test files', () => {
  const cell = '| a claim | `a/b.test.ts` › "HS256 \\"x\\" is "refused" at /ecdhe/\\<id\\>"<br>`c.ts` › "two" |';
  assert.deepEqual(citationsOf(cell).map((c) => [c.file, c.name]), [['a/b.test.ts', 'HS256 "x" is "refused" at /ecdhe/<id>'], ['c.ts', 'two']]);
  const source = "test('Alice\\'s key', f);\ndescribe(\"a \\u2019 b\", f);\n  it(\n  `plain`, f);\ntest(`made ${name}`, f);";
  assert.deepEqual([...testNamesOf(source)], ["Alice's key", 'a \u2019 b', 'plain']);
});
