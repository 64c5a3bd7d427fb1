/**
 * The real `kms` command, run as child processes by `kms demo`: `kms init`, `kms peer add`,
 * `kms token` (run to completion) and `kms serve` (kept running until stopped with SIGTERM).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

/**
 * The `kms` command of the @openkms/server package the demo is built with: its bin/kms.js, two
 * folders up from the package's entry (dist/src/index.js).
 */
export const KMS_BIN = fileURLToPath(new URL('../../bin/kms.js', import.meta.resolve('@openkms/server')));

/** The children's environment: ours, without KMS_* variables, which would override their flags' defaults. */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) env[k] = v;
  return env;
}

function spawnKms(args: string[]): ChildProcess {
  if (!existsSync(KMS_BIN)) throw new Error(`the kms command is not at ${KMS_BIN}`);
  return spawn(process.execPath, [KMS_BIN, ...args], { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
}

export interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `kms <args>` to completion, whatever its exit code (killed after `timeoutMs`). */
export async function runKms(args: string[], timeoutMs = 30_000): Promise<Finished> {
  const child = spawnKms(args);
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const code = await new Promise<number | null>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`kms ${args[0]} did not finish within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  return { code, stdout, stderr };
}

/** Runs `kms <args>` to completion; fails with its stderr's last line unless it exits 0. */
export async function kms(args: string[], timeoutMs = 30_000): Promise<Finished> {
  const r = await runKms(args, timeoutMs);
  if (r.code !== 0) throw new Error(`kms ${args.slice(0, 2).join(' ')} failed (exit ${r.code}): ${r.stderr.trim().split('\n').pop() ?? ''}`);
  return r;
}

export interface ServedKms {
  /** As printed: "listening on <url>". */
  url: string;
  pid: number;
  /** Its JSON log lines (stdout) and messages (stderr), as received. */
  stdout: string[];
  stderr: string[];
  /** True once the process has exited. */
  readonly exited: boolean;
  /** SIGTERM, then the exit code (SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<number | null>;
}

/** Starts `kms serve <args>` and resolves once it prints where it listens. */
export function serveKms(args: string[], startTimeoutMs = 30_000): Promise<ServedKms> {
  const child = spawnKms(['serve', ...args]);
  const stdout: string[] = [];
  const stderr: string[] = [];
  let exited = false;
  let started = false;
  const exit = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      exited = true;
      resolve(code);
    }),
  );
  child.stdout!.setEncoding('utf8').on('data', (d: string) => stdout.push(d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`kms serve did not start within ${startTimeoutMs / 1000} s: ${stderr.join('').trim()}`));
    }, startTimeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr.push(d);
      const m = /listening on (\S+)/.exec(stderr.join(''));
      if (m && !started) {
        started = true;
        clearTimeout(timer);
        resolve({
          url: m[1]!,
          pid: child.pid!,
          stdout,
          stderr,
          get exited() {
            return exited;
          },
          async stop(graceMs = 10_000) {
            if (!exited) child.kill('SIGTERM');
            const killer = setTimeout(() => child.kill('SIGKILL'), graceMs);
            try {
              return await exit;
            } finally {
              clearTimeout(killer);
            }
          },
        });
      }
    });
    void exit.then((code) => {
      clearTimeout(timer);
      reject(new Error(`kms serve exited with ${code}: ${stderr.join('').trim().split('\n').pop() ?? ''}`));
    });
  });
}

/** Loopback ports that were free a moment ago (bound to port 0, then released). */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, () =>
      new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
        const s = createServer();
        s.once('error', reject);
        s.listen(0, '127.0.0.1', () => resolve(s));
      }),
    ),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  return ports;
}
