/**
 * `kms demo` (and `npm run demo`): the seed scenario, draft §3.3 "KMS Key Federation", end to end
 * on loopback — two KMS processes, a file-sharing service, Alice and Bob — printing each of the ten
 * steps and what crossed which wire, then Alice's revocation of Bob. Exits 0 only if Bob decrypted
 * Alice's file and was refused after the revocation.
 */
import { runDemo } from '../demo/demo.js';
import { intFlag, parse } from './args.js';

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
