/**
 * `kms demo` (and `npm run demo`): the seed scenario, draft §3.3 "KMS Key Federation", end to end
 * on loopback — two KMS processes, a file-sharing service, Alice and Bob — printing each of the ten
 * steps and what crossed which wire, then Alice's revocation of Bob. Exits 0 only if Bob decrypted
 * Alice's file and was refused after the revocation.
 *
 * The demo is an example (examples/federation-demo), not part of this package: the package cannot
 * depend on the examples, and an installed KMS has no business shipping them. So the command
 * finds the built demo in the clone of the repository it runs from and loads it at run time.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { intFlag, parse } from './args.js';

/** The part of examples/federation-demo/demo.ts the command uses. */
interface DemoModule {
  runDemo(options: {
    log: (line: string) => void;
    maxStaleness?: number;
    withoutPush?: boolean;
    signal?: AbortSignal;
  }): Promise<{ bobDecrypted: boolean; revokedRefused: boolean; serviceSawOnlyCiphertext: boolean }>;
}

/**
 * The root of the clone this command runs from, if it does: five folders up from this file
 * (packages/server/dist/src/cli/demo.js). From an installed package, that is some other project.
 */
export const CLONE_ROOT = fileURLToPath(new URL('../../../../../', import.meta.url));

/** Where `tsc -b` writes the demo, relative to the clone's root. */
export const DEMO_MODULE = join('dist-examples', 'federation-demo', 'demo.js');

/** Why the demo cannot run from here, in one line for stderr (after "kms: "). */
export class DemoUnavailable extends Error {}

function isClone(root: string): boolean {
  try {
    return (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name?: unknown }).name === 'openkms';
  } catch {
    return false;
  }
}

/** The built demo of the clone at `root`, or DemoUnavailable saying what to do instead. */
export async function loadDemo(root = CLONE_ROOT): Promise<DemoModule['runDemo']> {
  if (!isClone(root)) throw new DemoUnavailable('the demo runs from a clone of the openkms repository: npm run demo');
  const file = join(root, DEMO_MODULE);
  if (!existsSync(file)) throw new DemoUnavailable(`the demo is not built (no ${file}): npm run demo builds and runs it`);
  const mod = (await import(pathToFileURL(file).href)) as Partial<DemoModule>;
  if (typeof mod.runDemo !== 'function') throw new DemoUnavailable(`${file} does not export runDemo: rebuild with npm run demo`);
  return mod.runDemo;
}

export async function demoCommand(argv: string[]): Promise<void> {
  const { values } = parse(argv, { 'federation-max-staleness': { type: 'string' }, 'without-push': { type: 'boolean' } });
  if (values.bool('help')) {
    process.stderr.write(
      'usage: kms demo [--federation-max-staleness S] [--without-push]\n' +
        '  runs two federating KMSs (kms.a.example, kms.b.example), a file-sharing service, Alice and Bob on loopback;\n' +
        "  --federation-max-staleness: KMS B's bound on a federated copy (default 5 s);\n" +
        '  --without-push: cut the A → B wire before the revocation, so that B relies on that bound\n',
    );
    return;
  }
  const maxStaleness = intFlag(values.str('federation-max-staleness'), '--federation-max-staleness', 1, 300);
  let runDemo: DemoModule['runDemo'];
  try {
    runDemo = await loadDemo();
  } catch (err) {
    if (!(err instanceof DemoUnavailable)) throw err;
    process.stderr.write(`kms: ${err.message}\n`);
    process.exitCode = 1;
    return;
  }
  const controller = new AbortController();
  const stop = () => controller.abort(new Error('interrupted'));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const r = await runDemo({ log: (line) => process.stdout.write(line + '\n'), maxStaleness, withoutPush: values.bool('without-push'), signal: controller.signal });
    process.exitCode = r.bobDecrypted && r.revokedRefused && r.serviceSawOnlyCiphertext ? 0 : 1;
  } catch (err) {
    process.stderr.write(`kms: demo failed: ${(err as Error)?.message ?? String(err)}\n`);
    process.exitCode = 1;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}
