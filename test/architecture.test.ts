/**
 * The dependency rules, checked rather than only written down (ARCHITECTURE.md "The shape", issue 7
 * item 7). Every TypeScript source under packages/<name>/src, examples/ and bench/ is parsed; every
 * import it writes — type imports, re-exports and `import('…')` included — is resolved to the file it
 * means, and the test fails on an import cycle inside a package or on an arrow the table below
 * forbids, naming each offending file, line and arrow.
 *
 * The second half proves the checker on small synthetic graphs, so a green run means the tree obeys
 * the rules, not that the checker sees nothing.
 */
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import {
  buildGraph,
  describeCycle,
  describeViolations,
  findCycles,
  findViolations,
  globToRegExp,
  listSources,
  packageFromManifest,
  readImports,
  resolveSpecifier,
  shortestCycles,
  vacuousRules,
  type Arrow,
  type DependencyRule,
  type WorkspacePackage,
} from './support/import-graph.js';

/**
 * The rules. `from`: the importing files (less `except`); `forbidden`: files they may not import,
 * directly or by package name (`@openkms/server` is its source entry, packages/server/src/index.ts).
 * Paths are repository-relative globs: `*` inside one segment, `**` across segments.
 */
const RULES: readonly DependencyRule[] = [
  {
    name: 'the protocol knows no SDK or server',
    from: ['packages/protocol/src/**'],
    forbidden: ['packages/client/**', 'packages/server/**'],
    why: 'the wire is shared and browser-safe; it must build and ship without either side',
  },
  {
    name: 'the SDK knows no server',
    from: ['packages/client/src/**'],
    forbidden: ['packages/server/**'],
    why: 'an application that only needs the client installs no server and no native code',
  },
  {
    name: 'policy knows no storage, transport or CLI',
    from: ['packages/server/src/policy.ts', 'packages/server/src/policy/**'],
    forbidden: ['packages/server/src/store/**', 'packages/server/src/transport/**', 'packages/server/src/cli/**'],
    why: 'policy is pure decisions over plain model types, tested without a database or a socket',
  },
  {
    name: 'the core knows no transport or CLI',
    from: ['packages/server/src/core/**'],
    forbidden: ['packages/server/src/transport/**', 'packages/server/src/cli/**'],
    why: 'the pipeline is driven directly by tests and by every transport alike',
  },
  {
    name: 'operations know no federation',
    from: ['packages/server/src/operations/**'],
    forbidden: ['packages/server/src/federation/**'],
    why: 'an operation is the local handler; the core picks the federation handlers from core/handlers.ts',
  },
  {
    name: 'transports know no storage',
    from: ['packages/server/src/transport/**'],
    forbidden: ['packages/server/src/store/**'],
    why: 'a transport is a thin adapter over the small handler interface, not a second way into the data',
  },
  {
    name: 'packages know no examples, bench or tests',
    from: ['packages/*/src/**'],
    forbidden: ['examples/**', 'bench/**', 'test/**', 'packages/*/test/**'],
    why: 'what a package ships must build from its own src; examples and tests depend on it, never the reverse',
  },
  {
    name: 'the server ships no demo',
    from: ['packages/server/src/**'],
    forbidden: ['examples/federation-demo/**', 'examples/common/**'],
    why: 'the demo and its file service are examples; `kms demo` finds the clone\'s built demo at run time (see OPAQUE_IMPORTS)',
  },
];

/**
 * Dynamic imports of a computed path, each allowed here with the reason no rule needs to see it.
 * Anything else that no rule can place fails the test below.
 */
const OPAQUE_IMPORTS: Readonly<Record<string, string>> = {
  'packages/server/src/cli/demo.ts': 'runs the demo built in a clone (dist-examples/federation-demo); the package itself ships no demo',
};

const root = fileURLToPath(new URL('..', import.meta.url));
const isFile = (path: string) => {
  try {
    return statSync(join(root, path)).isFile();
  } catch {
    return false;
  }
};
const readText = (path: string) => readFileSync(join(root, path), 'utf8');

function workspacePackages(): WorkspacePackage[] {
  const { workspaces } = JSON.parse(readText('package.json')) as { workspaces: string[] };
  return workspaces.map((dir) => packageFromManifest(dir, JSON.parse(readText(`${dir}/package.json`))));
}

const packages = workspacePackages();
/** The trees whose sources are read: every workspace package's src, and the examples and bench that use them. */
const SOURCE_TREES = [...packages.map((p) => `${p.dir}/src`), 'examples', 'bench'];
/** Trees read only to know which files exist, so a forbidden pattern into them is not vacuous. */
const OTHER_TREES = ['test', ...packages.map((p) => `${p.dir}/test`)];

/** The package a source file belongs to (`packages/server`), or undefined outside packages/<name>/src. */
const packageOf = (file: string) => /^(packages\/[^/]+)\/src\//.exec(file)?.[1];

/** Every cycle inside one package, described. Arrows between packages never close a cycle here. */
function cyclesByPackage(files: readonly string[], arrows: readonly Arrow[]): string[] {
  const groups = [...new Set(files.map(packageOf).filter((p): p is string => p !== undefined))].sort();
  return groups.flatMap((group) => {
    const members = files.filter((f) => packageOf(f) === group);
    return findCycles(members, arrows).map((component) => describeCycle(group, component, arrows));
  });
}

describe('the dependency rules hold in this repository', () => {
  const sources = SOURCE_TREES.flatMap((dir) => listSources(root, dir));
  const allFiles = [...sources, ...OTHER_TREES.flatMap((dir) => listSources(root, dir))];
  const graph = buildGraph(sources, packages, readText, isFile);

  test('the sources were found and their imports read', () => {
    for (const dir of SOURCE_TREES) assert.ok(sources.some((f) => f.startsWith(`${dir}/`)), `no source under ${dir}: is the repository root ${root}?`);
    assert.ok(graph.arrows.some((a) => a.typeOnly), 'type-only imports are among the arrows');
  });

  test('every import resolves to a file the rules can check', () => {
    const problems = graph.problems.filter((p) => !(p.split(':')[0]! in OPAQUE_IMPORTS && p.includes('is not a string literal')));
    if (problems.length > 0) assert.fail(`imports the rules cannot place:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    for (const file of Object.keys(OPAQUE_IMPORTS)) assert.ok(graph.problems.some((p) => p.startsWith(`${file}:`)), `${file} no longer needs its OPAQUE_IMPORTS entry: remove it`);
  });

  test('every rule applies to at least one file', () => {
    const vacuous = vacuousRules(RULES, sources, allFiles);
    if (vacuous.length > 0) assert.fail(vacuous.join('\n'));
  });

  test('no import cycle inside any package, type imports included', () => {
    const cycles = cyclesByPackage(sources, graph.arrows);
    if (cycles.length > 0) assert.fail(cycles.join('\n\n'));
  });

  test('no forbidden arrow', () => {
    const violations = findViolations(RULES, graph.arrows);
    if (violations.length > 0) assert.fail(describeViolations(violations));
  });
});

describe('the import reader', () => {
  test('reads every kind of import, type imports included, and marks the type-only ones', () => {
    const source = [
      "import { a } from './value.js';",
      "import type { T } from './type.js';",
      "import { type U, type V } from './named-types.js';",
      "import { type W, x } from './mixed.js';",
      "import def, { type Y } from './default.js';",
      "import './side-effect.js';",
      "import * as ns from './namespace.js';",
      "export { b } from './reexport.js';",
      "export type { Z } from './reexport-type.js';",
      "export * from './star.js';",
      "import legacy = require('./legacy.js');",
      'async function load() { return import(`./template.js`), import("./dynamic.js"); }',
      "let t: typeof import('./type-position.js');",
    ].join('\n');
    const { imports, opaque } = readImports('x.ts', source);
    assert.deepEqual(
      imports.map((i) => [i.specifier, i.line, i.typeOnly]),
      [
        ['./value.js', 1, false],
        ['./type.js', 2, true],
        ['./named-types.js', 3, true],
        ['./mixed.js', 4, false],
        ['./default.js', 5, false],
        ['./side-effect.js', 6, false],
        ['./namespace.js', 7, false],
        ['./reexport.js', 8, false],
        ['./reexport-type.js', 9, true],
        ['./star.js', 10, false],
        ['./legacy.js', 11, false],
        ['./template.js', 12, false],
        ['./dynamic.js', 12, false],
        ['./type-position.js', 13, true],
      ],
    );
    assert.deepEqual(opaque, []);
  });

  test('an import in a comment or a string is no import', () => {
    const source = "// import { a } from './commented.js';\n/* export * from './block.js'; */\nconst s = \"import('./in-string.js')\";\n";
    assert.deepEqual(readImports('x.ts', source).imports, []);
  });

  test('an import() of a computed name is reported, since no rule could see where it leads', () => {
    const { imports, opaque } = readImports('x.ts', "const name = './a.js';\nawait import(name);\n");
    assert.deepEqual(imports, []);
    assert.deepEqual(opaque, [{ line: 2, text: 'import(name)' }]);
  });
});

describe('the specifier resolver', () => {
  const files = new Set(['packages/server/src/kms.ts', 'packages/server/src/ops/index.ts', 'packages/server/src/testing/harness.ts', 'packages/server/src/index.ts', 'packages/client/src/index.ts', 'bench/load.mts']);
  const isKnown = (path: string) => files.has(path);
  const packages = [
    packageFromManifest('packages/server', { name: '@openkms/server', exports: { '.': { types: './dist/src/index.d.ts', default: './dist/src/index.js' }, './testing': { default: './dist/src/testing/harness.js' } } }),
    packageFromManifest('packages/client', {
      name: '@openkms/client',
      exports: { '.': './dist/src/index.js' },
      imports: { '#codec': { browser: './dist/src/codec/web.js', node: './dist/src/codec/node.js', default: './dist/src/codec/web.js' } },
    }),
  ];
  const resolve = (from: string, specifier: string) => resolveSpecifier(from, specifier, packages, isKnown);

  test('a relative .js specifier is its .ts source, a folder index included', () => {
    assert.deepEqual(resolve('packages/server/src/routes.ts', './kms.js'), { kind: 'file', path: 'packages/server/src/kms.ts' });
    assert.deepEqual(resolve('packages/server/src/store/sqlite.ts', '../ops/index.js'), { kind: 'file', path: 'packages/server/src/ops/index.ts' });
    assert.deepEqual(resolve('bench/bench.ts', './load.mjs'), { kind: 'file', path: 'bench/load.mts' });
  });

  test('a workspace package name is the source of its export', () => {
    assert.deepEqual(resolve('examples/chat/chat.ts', '@openkms/server'), { kind: 'file', path: 'packages/server/src/index.ts' });
    assert.deepEqual(resolve('bench/bench.ts', '@openkms/server/testing'), { kind: 'file', path: 'packages/server/src/testing/harness.ts' });
    assert.deepEqual(resolve('packages/server/src/kms.ts', '@openkms/client'), { kind: 'file', path: 'packages/client/src/index.ts' });
  });

  test('a private import is the source of every condition\'s target, resolved in the importing package only', () => {
    assert.deepEqual(resolve('packages/client/src/client.ts', '#codec'), { kind: 'files', paths: ['packages/client/src/codec/web.ts', 'packages/client/src/codec/node.ts'] });
    assert.match((resolve('packages/client/src/client.ts', '#other') as { why: string }).why, /@openkms\/client has no #other/);
    assert.match((resolve('packages/server/src/kms.ts', '#codec') as { why: string }).why, /@openkms\/server has no #codec/, "another package's private import");
    assert.match((resolve('bench/bench.ts', '#codec') as { why: string }).why, /in no workspace package/);
  });

  test('a dependency from npm or node is external, a missing file or export unresolved', () => {
    assert.deepEqual(resolve('packages/server/src/kms.ts', 'node:crypto'), { kind: 'external' });
    assert.deepEqual(resolve('packages/server/src/kms.ts', 'jose'), { kind: 'external' });
    assert.deepEqual(resolve('packages/server/src/kms.ts', '@openkms/serverless'), { kind: 'external' }, 'a name that only starts like a package is another package');
    assert.deepEqual(resolve('packages/server/src/kms.ts', './missing.js'), { kind: 'unresolved', why: 'no source file for packages/server/src/missing.js' });
    assert.match((resolve('examples/chat/chat.ts', '../../packages/server/dist/src/kms.js') as { why: string }).why, /compiled output; import the package by its name/);
    assert.equal(resolve('bench/bench.ts', '@openkms/server/src/kms.js').kind, 'unresolved', 'a deep import the exports do not offer');
  });

  test('the graph reports what it cannot place and keeps every arrow it can', () => {
    const sourcesByFile: Record<string, string> = {
      'packages/server/src/kms.ts': "import type { X } from './ops/index.js';\nimport { y } from './gone.js';\nimport 'node:fs';\n",
      'packages/server/src/ops/index.ts': "const m = 'kms';\nexport const load = () => import(m);\n",
    };
    const graph = buildGraph(Object.keys(sourcesByFile), packages, (f) => sourcesByFile[f]!, isKnown);
    assert.deepEqual(graph.arrows, [{ from: 'packages/server/src/kms.ts', to: 'packages/server/src/ops/index.ts', line: 1, typeOnly: true, specifier: './ops/index.js' }]);
    assert.equal(graph.problems.length, 2);
    assert.match(graph.problems[0]!, /^packages\/server\/src\/kms\.ts:2: '\.\/gone\.js' resolves to nothing/);
    assert.match(graph.problems[1]!, /^packages\/server\/src\/ops\/index\.ts:2: import\(m\) is not a string literal/);
  });

  test('a private import with conditions is an arrow to each variant', () => {
    const graph = buildGraph(['packages/client/src/client.ts'], packages, () => "import { codec } from '#codec';\n", isKnown);
    assert.deepEqual(graph.arrows.map((a) => `${a.from}:${a.line} -> ${a.to}`), ['packages/client/src/client.ts:1 -> packages/client/src/codec/web.ts', 'packages/client/src/client.ts:1 -> packages/client/src/codec/node.ts']);
    assert.deepEqual(graph.problems, []);
  });
});

describe('the cycle finder', () => {
  const edges = (...pairs: string[]) => pairs.map((p) => ({ from: p[0]!, to: p[1]! }));

  test('an acyclic graph has no cycle, however many paths join', () => {
    assert.deepEqual(findCycles(['a', 'b', 'c', 'd'], edges('ab', 'ac', 'bd', 'cd')), []);
  });

  test('finds a two-file cycle, a self-import and a long cycle, without the files that only lead into them', () => {
    const nodes = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 's', 't'];
    const cycles = findCycles(nodes, edges('ab', 'ba', 'ss', 'tc', 'cd', 'de', 'ef', 'fc', 'fg'));
    assert.deepEqual(cycles, [['c', 'd', 'e', 'f'], ['a', 'b'], ['s']]);
  });

  test('two loops sharing a file are one tangle', () => {
    assert.deepEqual(findCycles(['a', 'b', 'c', 'x'], edges('ab', 'ba', 'bc', 'cb', 'ax')), [['a', 'b', 'c']]);
  });

  test('arrows to files outside the given set close no cycle', () => {
    assert.deepEqual(findCycles(['a', 'b'], edges('ax', 'xb', 'bx', 'xa')), []);
  });

  test('a shortest cycle through each file of the tangle, each cycle once', () => {
    assert.deepEqual(shortestCycles(['c', 'd', 'e', 'f'], edges('cd', 'de', 'ef', 'fc')), [['c', 'd', 'e', 'f', 'c']]);
    assert.deepEqual(shortestCycles(['s'], edges('ss')), [['s', 's']]);
    // a <-> b <-> c: no single loop holds all three, two short ones do; arrows leaving the tangle are ignored.
    assert.deepEqual(shortestCycles(['a', 'b', 'c'], edges('ab', 'ba', 'bc', 'cb', 'cx', 'xa')), [['a', 'b', 'a'], ['b', 'c', 'b']]);
  });

  test('a cycle is described with its files, its path and every arrow inside it', () => {
    const arrows: Arrow[] = [
      { from: 'p/src/a.ts', to: 'p/src/b.ts', line: 3, typeOnly: false, specifier: './b.js' },
      { from: 'p/src/b.ts', to: 'p/src/a.ts', line: 7, typeOnly: true, specifier: './a.js' },
      { from: 'p/src/b.ts', to: 'p/src/c.ts', line: 8, typeOnly: false, specifier: './c.js' },
    ];
    assert.equal(
      describeCycle('p', ['p/src/a.ts', 'p/src/b.ts'], arrows),
      [
        'import cycle in p: 2 files import each other, type imports included',
        '  files: p/src/a.ts, p/src/b.ts',
        '  a shortest cycle through each (under p/src/):',
        '    a.ts -> b.ts -> a.ts',
        '  every arrow inside it (2; each lies on a cycle, cut enough to leave none):',
        '    p/src/a.ts:3 -> p/src/b.ts',
        '    p/src/b.ts:7 -> p/src/a.ts (type only)',
      ].join('\n'),
    );
  });
});

describe('the rule matcher', () => {
  test('globs: * stays inside a segment, ** crosses them', () => {
    const cases: Array<[string, string, boolean]> = [
      ['packages/*/src/**', 'packages/server/src/kms.ts', true],
      ['packages/*/src/**', 'packages/server/test/kms.test.ts', false],
      ['packages/server/src/policy.ts', 'packages/server/src/policy.ts', true],
      ['packages/server/src/policy.ts', 'packages/server/src/policyXts', false],
      ['packages/server/src/policy/**', 'packages/server/src/policy-extra.ts', false],
      ['packages/server/src/store/**', 'packages/server/src/store/sql/postgres.ts', true],
      ['**/demo/**', 'packages/server/src/demo/index.ts', true],
      ['**/demo/**', 'examples/demo/main.ts', true],
      ['**/demo/**', 'demo/main.ts', true],
      ['**/demo/**', 'packages/server/src/cli/demo.ts', false],
      ['**/demo/**', 'examples/demos/main.ts', false],
    ];
    for (const [glob, path, expected] of cases) assert.equal(globToRegExp(glob).test(path), expected, `${glob} on ${path}`);
  });

  const rule: DependencyRule = { name: 'core knows no transport', from: ['s/core/**'], except: ['s/core/allowed.ts'], forbidden: ['s/transport/**'], why: 'because' };
  const arrow = (from: string, to: string, line = 1): Arrow => ({ from, to, line, typeOnly: false, specifier: to });

  test('an arrow from a matched file to a forbidden one is a violation; except, elsewhere and allowed targets are not', () => {
    const arrows = [
      arrow('s/core/pipeline.ts', 's/transport/http.ts', 4),
      arrow('s/core/pipeline.ts', 's/store/store.ts'),
      arrow('s/core/allowed.ts', 's/transport/http.ts'),
      arrow('s/cli/main.ts', 's/transport/http.ts'),
      arrow('s/core/deep/step.ts', 's/transport/ws/server.ts', 9),
    ];
    const violations = findViolations([rule], arrows);
    assert.deepEqual(violations.map((v) => `${v.arrow.from}:${v.arrow.line}`), ['s/core/pipeline.ts:4', 's/core/deep/step.ts:9']);
    assert.equal(
      describeViolations(violations),
      [
        'forbidden import, rule "core knows no transport" (because):',
        "  s/core/pipeline.ts:4 -> s/transport/http.ts  ['s/transport/http.ts']",
        "  s/core/deep/step.ts:9 -> s/transport/ws/server.ts  ['s/transport/ws/server.ts']",
      ].join('\n'),
    );
  });

  test('a rule that matches no file fails, unless it is marked as allowed to be empty for now', () => {
    const sources = ['s/cli/main.ts', 's/transport/http.ts'];
    assert.deepEqual(vacuousRules([rule], sources, sources), ['rule "core knows no transport" matches nothing: no source file matches from s/core/** less s/core/allowed.ts']);
    assert.deepEqual(vacuousRules([{ ...rule, mayBeEmpty: true }], sources, sources), []);
    assert.deepEqual(vacuousRules([rule], ['s/core/allowed.ts'], ['s/core/allowed.ts', 's/transport/http.ts']), ['rule "core knows no transport" matches nothing: no source file matches from s/core/** less s/core/allowed.ts'], 'a file the except removes does not count');
  });

  test('a forbidden pattern that matches no file fails: it would pass forever after a rename', () => {
    const sources = ['s/core/pipeline.ts'];
    assert.deepEqual(vacuousRules([rule], sources, [...sources, 's/transports/http.ts']), ['rule "core knows no transport" matches nothing: no file matches its forbidden pattern s/transport/**']);
    assert.deepEqual(vacuousRules([rule], sources, [...sources, 's/transport/http.ts']), []);
  });
});
