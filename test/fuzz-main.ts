/**
 * `npm run fuzz [-- --seed N --messages N --ws N --backend sqlite|postgres|both --concurrency N]`:
 * a longer fuzz campaign (test/support/fuzz.ts) than CI's, against a fresh `kms serve` per backend.
 * Prints the seed first and a status histogram at the end; a failure prints the seed and the
 * offending messages (plaintext, bearers blanked) and exits 1. Same seed, same messages.
 */
import { parseArgs } from 'node:util';
import { assertHealthy } from '../packages/server/dist/test/support/client.js';
import { OVERLOADED, runCampaign } from './support/fuzz.js';
import { runKms } from './support/cli.js';
import { availableBackends, startNodes } from './support/nodes.js';

const { values } = parseArgs({
  options: {
    seed: { type: 'string' },
    messages: { type: 'string', default: '100000' },
    ws: { type: 'string' },
    backend: { type: 'string', default: 'both' },
    concurrency: { type: 'string', default: '4' },
  },
});
const seed = values.seed !== undefined ? Number(values.seed) >>> 0 : (Date.now() ^ (process.pid << 10)) >>> 0;
const httpMessages = Number(values.messages);
const wsMessages = values.ws !== undefined ? Number(values.ws) : Math.ceil(httpMessages / 5);
const concurrency = Number(values.concurrency);
console.log(`fuzz: --seed ${seed} --messages ${httpMessages} --ws ${wsMessages} --backend ${values.backend}`);

const available = await availableBackends();
if (available.problem !== undefined && values.backend !== 'sqlite') console.log(`PostgreSQL skipped: ${available.problem}`);
const backends = available.backends.filter((b) => values.backend === 'both' || b.name.toLowerCase().startsWith(values.backend!.toLowerCase()));

let failed = false;
for (const backend of backends) {
  const cluster = await startNodes(backend, 1, 'kms.a.example', 'a.example', { limits: { requestsPerMinutePerPrincipal: 0, handshakesPerMinutePerAddress: 0 } });
  try {
    const server = cluster.nodes[0]!;
    const token = (user: string, roles?: string) => runKms(['token', '--config', cluster.config, '--user', user, ...(roles ? ['--roles', roles] : [])]).stdout.trim();
    const result = await runCampaign({
      url: server.url,
      pid: server.pid,
      seed,
      httpMessages,
      wsMessages,
      concurrency,
      tokens: { alice: token('alice@a.example'), bob: token('bob@a.example'), carol: token('carol@a.example', 'kmsAdmin'), foreign: token('eve@b.example') },
      log: (line) => console.log(`  ${backend.name}: ${line}`),
    });
    await assertHealthy(server.url);
    const verify = cluster.verifyAudit();
    console.log(`${backend.name}: sent ${JSON.stringify(result.sent)}`);
    console.log(`${backend.name}: statuses ${JSON.stringify(result.statuses)}`);
    console.log(`${backend.name}: kinds ${JSON.stringify(result.kinds)}`);
    console.log(`${backend.name}: server RSS ${result.rss.warm} KiB after the warm-up, ${result.rss.end} KiB at the end`);
    console.log(`${backend.name}: kms audit verify: ${verify.code === 0 ? verify.stdout.trim() : `FAILED ${verify.stderr.trim()}`}`);
    if (verify.code !== 0) failed = true;
    // What the server logged at warn level or above (pino: 40 warn, 50 error, 60 fatal).
    const loud = [...server.stdout, ...server.stderr].join('').split('\n').filter((l) => /"level":(40|50|60)/.test(l) && !l.includes('development token issuer'));
    console.log(`${backend.name}: ${loud.length} server log lines at warn or above${loud.length ? `, e.g.\n    ${loud.slice(0, 3).map((l) => l.slice(0, 1500)).join('\n    ')}` : ''}`);
    if (loud.some((l) => /"level":(50|60)/.test(l) && !l.includes(OVERLOADED))) failed = true;
    if (result.failures.length) {
      failed = true;
      console.log(`${backend.name}: ${result.failures.length} failures (seed ${seed}):`);
      for (const f of result.failures) console.log(`  ${f}`);
    }
  } finally {
    await cluster.stop();
  }
}
await available.drop();
console.log(failed ? `fuzz: FAILED (--seed ${seed})` : `fuzz: passed (--seed ${seed})`);
process.exit(failed ? 1 : 0);
