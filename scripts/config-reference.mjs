// Prints the README's configuration reference, generated from packages/server/src/config/options.ts;
// with --write, puts it into README.md in place of the current one. Needs the build (npx tsc -b).
import { readFileSync, writeFileSync } from 'node:fs';
import { configReference, withReference } from '../packages/server/dist/src/config/reference.js';

const readme = new URL('../README.md', import.meta.url);
if (process.argv.includes('--write')) {
  writeFileSync(readme, withReference(readFileSync(readme, 'utf8')));
  console.error('README.md: configuration reference written');
} else {
  console.log(configReference());
}
