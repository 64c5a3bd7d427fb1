/**
 * The import graph of the repository's TypeScript sources, for the dependency-rule test
 * (test/architecture.test.ts). Imports are read with the TypeScript parser, not with regexes, so an
 * import in a comment or a string never counts and none hides behind unusual spacing. Type imports
 * count like any other: a type-only cycle still means two modules cannot be read, changed or moved
 * one without the other.
 *
 * Every function here is pure over its inputs (the file system is reached only through the
 * `isFile` and `readText` arguments), so the test can prove each one fails when it should on small
 * synthetic graphs before trusting it on the real tree.
 */
import ts from 'typescript';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, posix } from 'node:path';

/** One import written in a file: what it names, where, and whether only types cross it. */
export interface ImportSite {
  specifier: string;
  line: number;
  typeOnly: boolean;
}

/** An `import(x)` whose `x` is not a string literal: no rule can see where it leads. */
export interface OpaqueImport {
  line: number;
  text: string;
}

/**
 * Every import of one file: `import … from`, `import type`, `import './side-effect.js'`,
 * `export … from`, `export type … from`, `import x = require(…)`, `import('…')` called, and
 * `import('…')` in a type position.
 */
export function readImports(fileName: string, sourceText: string): { imports: ImportSite[]; opaque: OpaqueImport[] } {
  const source = ts.createSourceFile(fileName, sourceText, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const imports: ImportSite[] = [];
  const opaque: OpaqueImport[] = [];
  const lineOf = (node: ts.Node) => source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1;
  const add = (literal: ts.Node, typeOnly: boolean) => {
    if (ts.isStringLiteralLike(literal)) imports.push({ specifier: literal.text, line: lineOf(literal), typeOnly });
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node)) {
      add(node.moduleSpecifier, isTypeOnlyImport(node.importClause));
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier) {
      const clause = node.exportClause;
      const typeOnly = node.isTypeOnly || (clause !== undefined && ts.isNamedExports(clause) && clause.elements.length > 0 && clause.elements.every((e) => e.isTypeOnly));
      add(node.moduleSpecifier, typeOnly);
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      add(node.moduleReference.expression, node.isTypeOnly);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const argument = node.arguments[0];
      if (argument && ts.isStringLiteralLike(argument)) add(argument, false);
      else opaque.push({ line: lineOf(node), text: node.getText(source) });
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) {
      add(node.argument.literal, true);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return { imports, opaque };
}

function isTypeOnlyImport(clause: ts.ImportClause | undefined): boolean {
  if (!clause) return false; // `import './x.js'` runs the module
  if (clause.isTypeOnly) return true;
  const bindings = clause.namedBindings;
  return clause.name === undefined && bindings !== undefined && ts.isNamedImports(bindings) && bindings.elements.length > 0 && bindings.elements.every((e) => e.isTypeOnly);
}

/** A workspace package as the resolver sees it: its folder, its exports and its imports, as source files. */
export interface WorkspacePackage {
  name: string;
  /** Repository-relative folder, e.g. `packages/server`. */
  dir: string;
  /** Export subpath (`.`, `./testing`) -> repository-relative source file. */
  exports: Map<string, string>;
  /**
   * Private import (`#codec`) -> the source file of every condition's target: which one a
   * runtime loads depends on its conditions, so each is a dependency the rules must see.
   */
  imports: Map<string, string[]>;
}

/** `files`: a private import, one file per condition (see WorkspacePackage.imports). */
export type Resolution = { kind: 'file'; path: string } | { kind: 'files'; paths: string[] } | { kind: 'external' } | { kind: 'unresolved'; why: string };

/**
 * Resolves a specifier written in `fromFile` (repository-relative, `/`-separated) to the source file
 * it means. Relative specifiers name the compiled `.js`, so `.js` maps to `.ts` (and `.mjs` to
 * `.mts`); a workspace package name maps through that package's `exports` to its source entry.
 * Anything else (`node:*`, dependencies from npm) is external and no rule here concerns it.
 */
export function resolveSpecifier(fromFile: string, specifier: string, packages: WorkspacePackage[], isFile: (path: string) => boolean): Resolution {
  if (specifier.startsWith('./') || specifier.startsWith('../')) {
    const target = posix.normalize(posix.join(posix.dirname(fromFile), specifier));
    const candidates = [target.replace(/\.js$/, '.ts'), target.replace(/\.js$/, '.tsx'), target.replace(/\.js$/, '.d.ts'), target.replace(/\.mjs$/, '.mts'), target, `${target}.ts`, `${target}/index.ts`];
    const found = candidates.find((c) => !c.endsWith('.js') && !c.endsWith('.mjs') && isFile(c));
    if (found) return { kind: 'file', path: found };
    // the compiled output of a package has no source beside it: say so rather than "missing"
    if (/(^|\/)dist(-[^/]*)?\//.test(target)) return { kind: 'unresolved', why: `${target} is compiled output; import the package by its name (or, inside it, the source)` };
    return { kind: 'unresolved', why: `no source file for ${target}` };
  }
  if (specifier.startsWith('#')) {
    const home = packages.find((p) => fromFile.startsWith(`${p.dir}/`));
    if (!home) return { kind: 'unresolved', why: `${specifier} is a private import, and ${fromFile} is in no workspace package` };
    const paths = home.imports.get(specifier);
    return paths ? { kind: 'files', paths } : { kind: 'unresolved', why: `${home.name} has no ${specifier} (its package.json "imports")` };
  }
  const owner = packages.find((p) => specifier === p.name || specifier.startsWith(`${p.name}/`));
  if (!owner) return { kind: 'external' };
  const subpath = specifier === owner.name ? '.' : `.${specifier.slice(owner.name.length)}`;
  const entry = owner.exports.get(subpath);
  return entry ? { kind: 'file', path: entry } : { kind: 'unresolved', why: `${owner.name} exports no ${subpath} (its package.json "exports")` };
}

/**
 * Reads a package.json's `exports` and `imports` into source files: the build compiles `<dir>/X.ts`
 * to `<dir>/dist/X.js`, so a target `./dist/src/index.js` is the source `<dir>/src/index.ts`.
 */
export function packageFromManifest(
  dir: string,
  manifest: { name: string; exports?: Record<string, string | Record<string, string>>; imports?: Record<string, string | Record<string, string>> },
): WorkspacePackage {
  const source = (target: string) => posix.join(dir, target.replace(/^\.\/dist\//, './').replace(/\.js$/, '.ts'));
  const exports = new Map<string, string>();
  for (const [subpath, target] of Object.entries(manifest.exports ?? {})) {
    const file = typeof target === 'string' ? target : (target.default ?? target.import);
    if (!file) continue;
    exports.set(subpath, source(file));
  }
  const imports = new Map<string, string[]>();
  for (const [name, target] of Object.entries(manifest.imports ?? {})) {
    const files = typeof target === 'string' ? [target] : Object.values(target);
    imports.set(name, [...new Set(files.map(source))]);
  }
  return { name: manifest.name, dir, exports, imports };
}

/** An arrow from one source file to another, with where it is written. */
export interface Arrow {
  from: string;
  to: string;
  line: number;
  typeOnly: boolean;
  specifier: string;
}

export interface ImportGraph {
  files: string[];
  arrows: Arrow[];
  /** Imports the graph cannot place: each would be an arrow no rule checks, so each is a failure. */
  problems: string[];
}

/** Builds the graph of `files` (repository-relative); `readText` gives a file's source. */
export function buildGraph(files: string[], packages: WorkspacePackage[], readText: (path: string) => string, isFile: (path: string) => boolean): ImportGraph {
  const arrows: Arrow[] = [];
  const problems: string[] = [];
  for (const from of files) {
    const { imports, opaque } = readImports(from, readText(from));
    for (const o of opaque) problems.push(`${from}:${o.line}: ${o.text} is not a string literal, so no dependency rule can see where it leads`);
    for (const site of imports) {
      const resolved = resolveSpecifier(from, site.specifier, packages, isFile);
      if (resolved.kind === 'file' || resolved.kind === 'files') {
        for (const to of resolved.kind === 'file' ? [resolved.path] : resolved.paths) arrows.push({ from, to, line: site.line, typeOnly: site.typeOnly, specifier: site.specifier });
      }
      else if (resolved.kind === 'unresolved') problems.push(`${from}:${site.line}: '${site.specifier}' resolves to nothing (${resolved.why})`);
    }
  }
  return { files, arrows, problems };
}

/** Every `.ts` source (no `.d.ts`) under `dir` of `root`, repository-relative, sorted. */
export function listSources(root: string, dir: string): string[] {
  const out: string[] = [];
  const walk = (relative: string) => {
    for (const name of readdirSync(join(root, relative)).sort()) {
      const path = posix.join(relative, name);
      if (statSync(join(root, path)).isDirectory()) {
        // compiled output and installed dependencies are not sources
        if (name !== 'node_modules' && !/^dist(-|$)/.test(name)) walk(path);
      } else if (/\.(ts|mts|tsx)$/.test(name) && !name.endsWith('.d.ts')) {
        out.push(path);
      }
    }
  };
  // a tree that does not exist (a package without tests) holds no source
  if (existsSync(join(root, dir))) walk(dir);
  return out;
}

/**
 * The strongly connected components of the graph that hold a cycle (two or more files, or a file
 * importing itself), each sorted, largest first. Tarjan's algorithm: every arrow between two files of
 * one component lies on some cycle, so these are exactly the files that cannot be untangled alone.
 */
export function findCycles(nodes: readonly string[], edges: ReadonlyArray<{ from: string; to: string }>): string[][] {
  const next = new Map<string, string[]>(nodes.map((n) => [n, []]));
  for (const e of edges) if (next.has(e.from) && next.has(e.to)) next.get(e.from)!.push(e.to);
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const components: string[][] = [];
  let counter = 0;
  const connect = (node: string) => {
    index.set(node, counter);
    low.set(node, counter);
    counter += 1;
    stack.push(node);
    onStack.add(node);
    for (const to of next.get(node)!) {
      if (!index.has(to)) {
        connect(to);
        low.set(node, Math.min(low.get(node)!, low.get(to)!));
      } else if (onStack.has(to)) {
        low.set(node, Math.min(low.get(node)!, index.get(to)!));
      }
    }
    if (low.get(node) !== index.get(node)) return;
    const component: string[] = [];
    let member: string;
    do {
      member = stack.pop()!;
      onStack.delete(member);
      component.push(member);
    } while (member !== node);
    if (component.length > 1 || next.get(node)!.includes(node)) components.push(component.sort());
  };
  for (const node of [...nodes].sort()) if (!index.has(node)) connect(node);
  return components.sort((a, b) => b.length - a.length || a[0]!.localeCompare(b[0]!));
}

/**
 * For each file of a component, a shortest cycle through it, as a closed path (first = last), each
 * cycle once however many of its files it was found from. Together they show how every file is
 * caught in the tangle, in paths short enough to read.
 */
export function shortestCycles(component: string[], edges: ReadonlyArray<{ from: string; to: string }>): string[][] {
  const members = new Set(component);
  const inside = edges.filter((e) => members.has(e.from) && members.has(e.to));
  const seen = new Set<string>();
  const cycles: string[][] = [];
  for (const file of component) {
    const loop = shortestHop(file, (n) => n === file, inside).slice(0, -1);
    // the same cycle found from another of its files is a rotation of this one
    const first = loop.indexOf([...loop].sort()[0]!);
    const canonical = [...loop.slice(first), ...loop.slice(0, first)];
    const key = canonical.join('\n');
    if (seen.has(key)) continue;
    seen.add(key);
    cycles.push([...canonical, canonical[0]!]);
  }
  return cycles;
}

/** Breadth-first: the shortest path from `from` (excluded as a goal) to a node `isGoal` accepts. */
function shortestHop(from: string, isGoal: (node: string) => boolean, edges: ReadonlyArray<{ from: string; to: string }>): string[] {
  const cameFrom = new Map<string, string>();
  const queue = [from];
  for (let i = 0; i < queue.length; i++) {
    const node = queue[i]!;
    for (const e of edges) {
      if (e.from !== node) continue;
      if (isGoal(e.to)) {
        const path = [e.to, node];
        while (path[path.length - 1] !== from) path.push(cameFrom.get(path[path.length - 1]!)!);
        return path.reverse();
      }
      if (e.to !== from && !cameFrom.has(e.to)) {
        cameFrom.set(e.to, node);
        queue.push(e.to);
      }
    }
  }
  throw new Error(`no path from ${from}: the files given are not one strongly connected component`);
}

/**
 * A glob over repository-relative paths: `*` is any run of characters inside one path segment,
 * `**` followed by `/` any number of whole segments, `**` at the end anything at all.
 */
export function globToRegExp(glob: string): RegExp {
  let pattern = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      if (glob[i + 2] === '/') {
        pattern += '(?:[^/]+/)*';
        i += 2;
      } else {
        pattern += '.*';
        i += 1;
      }
    } else if (c === '*') {
      pattern += '[^/]*';
    } else {
      pattern += c.replace(/[.+?^${}()|[\]\\]/g, '\\$&');
    }
  }
  return new RegExp(`^${pattern}$`);
}

export const matchesAny = (path: string, globs: readonly string[]) => globs.some((g) => globToRegExp(g).test(path));

/** One line of the rule table: files matching `from` (less `except`) import nothing matching `forbidden`. */
export interface DependencyRule {
  name: string;
  from: readonly string[];
  except?: readonly string[];
  forbidden: readonly string[];
  why: string;
  /** The rule may match no file yet (its folder is still to come); every other rule must match one. */
  mayBeEmpty?: boolean;
}

export const ruleApplies = (rule: DependencyRule, file: string) => matchesAny(file, rule.from) && !matchesAny(file, rule.except ?? []);

export interface Violation {
  rule: DependencyRule;
  arrow: Arrow;
}

/** Every arrow that breaks a rule, in rule order then file order. */
export function findViolations(rules: readonly DependencyRule[], arrows: readonly Arrow[]): Violation[] {
  return rules.flatMap((rule) => arrows.filter((a) => ruleApplies(rule, a.from) && matchesAny(a.to, rule.forbidden)).map((arrow) => ({ rule, arrow })));
}

/**
 * The rules that check nothing: a `from` side matching no source file (unless `mayBeEmpty`), or a
 * forbidden pattern matching no file at all. Either means the rule was written for a tree that has
 * since moved, and would pass forever.
 */
export function vacuousRules(rules: readonly DependencyRule[], sources: readonly string[], allFiles: readonly string[]): string[] {
  const out: string[] = [];
  for (const rule of rules) {
    if (!rule.mayBeEmpty && !sources.some((f) => ruleApplies(rule, f))) out.push(`rule "${rule.name}" matches nothing: no source file matches from ${rule.from.join(', ')}${rule.except ? ` less ${rule.except.join(', ')}` : ''}`);
    for (const glob of rule.forbidden) if (!allFiles.some((f) => globToRegExp(glob).test(f))) out.push(`rule "${rule.name}" matches nothing: no file matches its forbidden pattern ${glob}`);
  }
  return out;
}

const arrowText = (a: Arrow) => `${a.from}:${a.line} -> ${a.to}${a.typeOnly ? ' (type only)' : ''}`;

/** Every violation, grouped by rule, each with its reason and every offending arrow. */
export function describeViolations(violations: readonly Violation[]): string {
  const byRule = new Map<DependencyRule, Arrow[]>();
  for (const v of violations) byRule.set(v.rule, [...(byRule.get(v.rule) ?? []), v.arrow]);
  return [...byRule]
    .map(([rule, arrows]) => [`forbidden import, rule "${rule.name}" (${rule.why}):`, ...arrows.map((a) => `  ${arrowText(a)}  ['${a.specifier}']`)].join('\n'))
    .join('\n');
}

/**
 * One cycle: its files, a shortest cycle through each of them, and every arrow inside it (the ones
 * to cut from). Paths in the cycles are shortened to the package's src/; arrows keep the full path.
 */
export function describeCycle(group: string, component: string[], arrows: readonly Arrow[]): string {
  const members = new Set(component);
  const inside = arrows.filter((a) => members.has(a.from) && members.has(a.to));
  const short = (file: string) => (file.startsWith(`${group}/src/`) ? file.slice(group.length + 5) : file);
  return [
    `import cycle in ${group}: ${component.length} files import each other, type imports included`,
    `  files: ${component.join(', ')}`,
    `  a shortest cycle through each (under ${group}/src/):`,
    ...shortestCycles(component, inside).map((cycle) => `    ${cycle.map(short).join(' -> ')}`),
    `  every arrow inside it (${inside.length}; each lies on a cycle, cut enough to leave none):`,
    ...inside.map((a) => `    ${arrowText(a)}`),
  ].join('\n');
}
