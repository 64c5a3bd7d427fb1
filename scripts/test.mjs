// Runs every compiled test file with node's test runner. Node 20 takes no globs after --test,
// so the files are listed here; PostgreSQL suites decide for themselves whether to skip.
import { spawnSync } from 'node:child_process';
import { readdirSync, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

const roots = ['packages/protocol/dist/test', 'packages/client/dist/test', 'packages/server/dist/test', 'dist-test', 'dist-examples'];
const files = [];
function walk(dir) {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (name.endsWith('.test.js')) files.push(path);
  }
}
roots.forEach(walk);
const only = process.argv.slice(2);
const selected = only.length ? files.filter((f) => only.some((o) => f.includes(o))) : files;
// Given no file, node --test would look for tests on its own: say so instead.
if (selected.length === 0) {
  console.error(`no compiled test file matches ${only.join(' ') || '(all)'}: did the build (tsc -b) pass?`);
  process.exit(1);
}
const result = spawnSync(process.execPath, ['--test', '--test-reporter=spec', ...selected], {
  stdio: 'inherit',
  env: { ...process.env, NODE_ENV: 'test' },
});
process.exit(result.status ?? 1);
