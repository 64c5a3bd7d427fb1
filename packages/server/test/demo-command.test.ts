/**
 * `kms demo` finds the demo in the clone it runs from (examples/federation-demo, built to
 * dist-examples): the package does not ship it. Run from an installed package, or from a clone
 * whose examples are not built, it says so in one line and exits non-zero. (The demo itself, run
 * through `kms demo` from this clone, is tested in examples/federation-demo/demo.test.ts.)
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DEMO_MODULE, DemoUnavailable, loadDemo } from '../src/cli/demo.js';

/** packages/server, from packages/server/dist/test/. */
const PACKAGE = fileURLToPath(new URL('../../', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'kms-demo-command-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

/** A folder that looks like a clone of the repository: its package.json, and `demo` as dist-examples/federation-demo/demo.js. */
function clone(name: string, demo?: string): string {
  const root = join(scratch, name);
  mkdirSync(root);
  writeFileSync(join(root, 'package.json'), JSON.stringify({ name: 'openkms', private: true, type: 'module' }));
  if (demo !== undefined) {
    mkdirSync(dirname(join(root, DEMO_MODULE)), { recursive: true });
    writeFileSync(join(root, DEMO_MODULE), demo);
  }
  return root;
}

test('kms demo from an installed package (no clone around it): one line naming where it runs, exit 1', () => {
  // The package as npm installs it into an application: bin and dist/src under node_modules, its
  // dependencies resolved through this clone's node_modules.
  const app = join(scratch, 'app');
  const installed = join(app, 'node_modules', '@openkms', 'server');
  cpSync(join(PACKAGE, 'bin'), join(installed, 'bin'), { recursive: true });
  cpSync(join(PACKAGE, 'dist', 'src'), join(installed, 'dist', 'src'), { recursive: true });
  cpSync(join(PACKAGE, 'package.json'), join(installed, 'package.json'));
  symlinkSync(join(PACKAGE, '..', '..', 'node_modules'), join(installed, 'node_modules'), 'dir');
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'an-application', private: true }));

  const r = spawnSync(process.execPath, [join(installed, 'bin', 'kms.js'), 'demo'], { cwd: app, encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.stderr, 'kms: the demo runs from a clone of the openkms repository: npm run demo\n');
  assert.equal(r.status, 1);
  assert.equal(r.stdout, '');

  // Its help still answers, and a bad flag is still a usage error (2), as in the clone.
  const help = spawnSync(process.execPath, [join(installed, 'bin', 'kms.js'), 'demo', '--help'], { cwd: app, encoding: 'utf8', timeout: 30_000 });
  assert.equal(help.status, 0);
  assert.match(help.stderr, /^usage: kms demo \[--federation-max-staleness S\] \[--without-push\]/);
  const bad = spawnSync(process.execPath, [join(installed, 'bin', 'kms.js'), 'demo', '--federation-max-staleness', '0'], { cwd: app, encoding: 'utf8', timeout: 30_000 });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^kms: --federation-max-staleness must be a whole number, from 1 to 300, got 0\n$/);
});

test('loadDemo: a folder that is no clone of the repository is refused with the same line', async () => {
  const elsewhere = join(scratch, 'elsewhere');
  mkdirSync(elsewhere);
  await assert.rejects(loadDemo(elsewhere), (err: unknown) => err instanceof DemoUnavailable && err.message === 'the demo runs from a clone of the openkms repository: npm run demo');
  writeFileSync(join(elsewhere, 'package.json'), '{ not json');
  await assert.rejects(loadDemo(elsewhere), /runs from a clone of the openkms repository/);
});

test('loadDemo: a clone whose examples are not built is told how to build them', async () => {
  const root = clone('unbuilt');
  await assert.rejects(loadDemo(root), (err: unknown) => err instanceof DemoUnavailable && err.message === `the demo is not built (no ${join(root, DEMO_MODULE)}): npm run demo builds and runs it`);
});

test('loadDemo: a built module without runDemo is refused; one with it is what kms demo runs', async () => {
  const stale = clone('stale', 'export const somethingElse = 1;\n');
  await assert.rejects(loadDemo(stale), (err: unknown) => err instanceof DemoUnavailable && /does not export runDemo: rebuild with npm run demo$/.test(err.message));

  const built = clone('built', 'export async function runDemo(options) { options.log("ran"); return { bobDecrypted: true, revokedRefused: true, serviceSawOnlyCiphertext: true }; }\n');
  const runDemo = await loadDemo(built);
  const lines: string[] = [];
  assert.deepEqual(await runDemo({ log: (line) => lines.push(line) }), { bobDecrypted: true, revokedRefused: true, serviceSawOnlyCiphertext: true });
  assert.deepEqual(lines, ['ran']);
});
