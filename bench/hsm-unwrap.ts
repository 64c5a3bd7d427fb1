/**
 * `npm run bench:hsm`: what the root key in an HSM costs per CMK. A CMK is unwrapped once per
 * process when the keyring opens (and wrapped once when it is created or rotated), never per
 * request, so this is the cost added to a start per CMK the database holds, and to a rotation.
 * Measured on SoftHSMv2 (a private token made for the run) against the same operations with the
 * root key in this process (a key file, KMS_ROOT_KEY): both wrap 32 random bytes with
 * AES-256-GCM, AAD `cmk:<id>`. A hardware HSM adds its own round trip (USB, network) per call:
 * measure it there with the same script (--module, --token, --key, KMS_HSM_PIN).
 *
 * Flags: --count N (default 2000 unwraps per run), --runs R (default 5; the median is reported),
 * --json. Needs softhsm2 and the optional package pkcs11js. Never asserts a time.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { localRootKey, openPkcs11RootKey, type RootKey } from '@openkms/server';
import { softHsm, softHsmProblem } from '@openkms/server/testing';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '2000' },
    runs: { type: 'string', default: '5' },
    module: { type: 'string' },
    token: { type: 'string' },
    key: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const count = Number(values.count);
const runs = Number(values.runs);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Microseconds per call of `op`, median of the runs (after one warm-up run). */
function perCall(op: (i: number) => void): { us: number; runs: number[] } {
  const times: number[] = [];
  for (let r = 0; r <= runs; r++) {
    const start = performance.now();
    for (let i = 0; i < count; i++) op(i);
    if (r > 0) times.push(((performance.now() - start) * 1000) / count);
  }
  return { us: median(times), runs: times.map((t) => Math.round(t * 100) / 100) };
}

function measure(root: RootKey) {
  const sealed = Array.from({ length: 64 }, (_, i) => root.wrap(randomBytes(32), `cmk:${i}`));
  return {
    unwrap: perCall((i) => root.unwrap(sealed[i % 64]!, `cmk:${i % 64}`).fill(0)),
    wrap: perCall((i) => root.wrap(randomBytes(32), `cmk:${i}`)),
  };
}

async function main(): Promise<void> {
  let cleanup = () => {};
  let options: { module: string; token: string; key: string; pin: string | undefined };
  if (values.module && values.token) {
    options = { module: values.module, token: values.token, key: values.key ?? 'openkms-root', pin: process.env.KMS_HSM_PIN };
  } else {
    const problem = softHsmProblem();
    if (problem) throw new Error(`cannot measure: ${problem}`);
    const hsm = softHsm();
    process.env.SOFTHSM2_CONF = hsm.env.SOFTHSM2_CONF;
    const pin = randomBytes(8).toString('hex');
    hsm.initToken('bench', pin);
    options = { module: hsm.module, token: 'bench', key: 'bench-root', pin };
    cleanup = () => hsm.remove();
  }
  try {
    const { root } = await openPkcs11RootKey({ ...options, create: values.module === undefined });
    let hsm;
    try {
      hsm = measure(root);
    } finally {
      root.close();
    }
    const local = measure(localRootKey(randomBytes(32), 'a key in this process'));
    const report = {
      count,
      runs,
      hsm: { module: options.module, unwrapUs: hsm.unwrap.us, wrapUs: hsm.wrap.us, unwrapRuns: hsm.unwrap.runs },
      local: { unwrapUs: local.unwrap.us, wrapUs: local.wrap.us },
      unwrapRatio: Math.round((hsm.unwrap.us / local.unwrap.us) * 10) / 10,
    };
    if (values.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    const f = (us: number) => `${us.toFixed(1)} µs`;
    process.stderr.write(
      `CMK unwrap: HSM (${options.module}) ${f(hsm.unwrap.us)}, in-process root ${f(local.unwrap.us)} (×${report.unwrapRatio})\n` +
        `CMK wrap:   HSM ${f(hsm.wrap.us)}, in-process root ${f(local.wrap.us)}\n` +
        `median of ${runs} runs of ${count} calls; per CMK at keyring open, never per request\n`,
    );
  } finally {
    cleanup();
  }
}

main().catch((err: Error) => {
  process.stderr.write(`bench:hsm: ${err.message}\n`);
  process.exitCode = 1;
});
