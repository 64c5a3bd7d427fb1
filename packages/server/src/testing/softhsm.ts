/**
 * SoftHSMv2 for tests of the PKCS#11 root key: a private token folder (its own softhsm2.conf,
 * named by SOFTHSM2_CONF), so a test never sees or changes another's tokens. Debian's package
 * `softhsm2` provides the module and softhsm2-util; `.ci/run` installs it when it is missing.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

export const SOFTHSM_MODULE = process.env.KMS_TEST_SOFTHSM_MODULE ?? '/usr/lib/softhsm/libsofthsm2.so';

/**
 * Why the HSM tests cannot run on this machine, or undefined when they can. Under CI=true a
 * missing part is a failure, not a skip: the caller fails with this reason there.
 */
export function softHsmProblem(): string | undefined {
  if (!existsSync(SOFTHSM_MODULE)) return `no SoftHSMv2 module at ${SOFTHSM_MODULE} (apt-get install softhsm2)`;
  if (spawnSync('softhsm2-util', ['--version']).error) return 'softhsm2-util is not on the PATH (apt-get install softhsm2)';
  try {
    createRequire(import.meta.url).resolve('pkcs11js');
  } catch {
    return 'the optional package pkcs11js is not installed (npm install pkcs11js)';
  }
  return undefined;
}

/**
 * For a suite of HSM tests: when SoftHSM cannot run here, registers one test that is skipped
 * with the reason, or that fails under CI=true (where .ci/run installs softhsm2), and says so.
 */
export function withoutSoftHsm(): boolean {
  const problem = softHsmProblem();
  if (problem === undefined) return false;
  if (process.env.CI === 'true') test('SoftHSMv2', () => assert.fail(`${problem} (required under CI=true)`));
  else test('SoftHSMv2', { skip: `skipped: ${problem}` }, () => {});
  return true;
}

export interface SoftHsm {
  /** The module to give rootKey.pkcs11.module / --hsm-module. */
  module: string;
  /** The environment a process needs to see these tokens: SOFTHSM2_CONF. */
  env: { SOFTHSM2_CONF: string };
  /** Makes a token with this label and user PIN (a random SO PIN). */
  initToken(label: string, pin: string): void;
  remove(): void;
}

export function softHsm(): SoftHsm {
  const dir = mkdtempSync(join(tmpdir(), 'kms-softhsm-'));
  const tokens = join(dir, 'tokens');
  mkdirSync(tokens);
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const env = { SOFTHSM2_CONF: conf };
  return {
    module: SOFTHSM_MODULE,
    env,
    initToken(label, pin) {
      const soPin = randomBytes(8).toString('hex');
      const r = spawnSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', soPin], { env: { ...process.env, ...env }, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`softhsm2-util --init-token ${label}: ${r.stderr || r.stdout || r.error?.message}`);
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
