/**
 * The README's operation table is the protocol package's operation table, rendered: this test
 * renders it again and fails, printing the block to paste, when the two differ.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { operations, type Caller } from '@openkms/protocol';

const README = new URL('../../README.md', import.meta.url);
const BEGIN = '<!-- operations: generated from packages/protocol/src/operations.ts (test/docs/operations-table.test.ts) -->';
const END = '<!-- /operations -->';

const CALLERS: Record<Caller, string> = { user: 'user', anonymous: 'anonymous bearer', peer: 'peer KMS', peerUser: "peer's user", agent: 'compliance (`onBehalfOf`)' };
const FEDERATION = { local: 'local', read: 'federated read', forward: 'forwarded' } as const;

function renderOperations(): string {
  const rows = operations.map((o) => {
    const who = o.callers.map((c) => CALLERS[c]).join(', ') + (o.roles.length > 0 ? ` (${o.roles.map((r) => `\`${r}\``).join(' or ')})` : '');
    const key = o.key === 'static' ? ' (static key)' : '';
    return `| \`${o.name}\` | \`${o.method} ${o.path.replaceAll('{id}', '<id>')}\`${key} | ${o.section} | ${who} | ${FEDERATION[o.federation]} | ${o.summary} |`;
  });
  return [BEGIN, '| operation | method + uri | draft | who may call it | federation | what it does |', '|---|---|---|---|---|---|', ...rows, END].join('\n');
}

test('README: the operation table is the protocol package’s, rendered', () => {
  const readme = readFileSync(README, 'utf8');
  const start = readme.indexOf(BEGIN);
  const end = readme.indexOf(END);
  const expected = renderOperations();
  assert.ok(start >= 0 && end > start, `README.md has no generated operation table; add:\n${expected}`);
  assert.equal(readme.slice(start, end + END.length), expected, `README.md's operation table is out of date; replace it with:\n${expected}`);
});

test('every operation names a draft section, its callers and a summary', () => {
  const names = new Set<string>();
  for (const o of operations) {
    assert.ok(!names.has(o.name), `${o.name} twice`);
    names.add(o.name);
    assert.ok(o.section && o.summary && o.callers.length > 0, o.name);
    assert.ok(o.path.startsWith('/'), o.name);
  }
});
