/** Runs the real `kms` command (the package bin) as a child process. */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { request } from 'node:https';
import type { TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';

export const KMS_BIN = fileURLToPath(new URL('../../packages/server/bin/kms.js', import.meta.url));

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runKms(args: string[], env: Record<string, string> = {}, options: { cwd?: string } = {}): RunResult {
  const r = spawnSync(process.execPath, [KMS_BIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000, cwd: options.cwd });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** runKms without blocking this process: the test's own clients go on meanwhile (e.g. writing to a KMS while it is backed up). */
export function runKmsAsync(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  const child = spawn(process.execPath, [KMS_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** What OPERATING.md promises for bad input: one `kms: …` line on stderr, no stack trace. */
export function oneClearLine(stderr: string): void {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got: ${stderr}`);
  assert.match(lines[0]!, /^kms: /);
  assert.doesNotMatch(stderr, /\n\s+at |Error: /);
}

/**
 * How many requests a KMS has answered, from its SQLite database: every request is in the audit
 * log before it is answered, so an unchanged count means the KMS was not asked anything.
 */
export function auditedRequests(dbPath: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT count(*) AS n FROM audit').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

export interface Served {
  url: string;
  /** The server process's id. */
  pid: number;
  stdout: string[];
  stderr: string[];
  /** Sends a signal to the server process. */
  signal(name: NodeJS.Signals): void;
  /** Sends SIGTERM and resolves with the exit code. */
  stop(): Promise<number | null>;
  /** Sends SIGKILL (no shutdown of any kind: a crash) and resolves once the process is gone. */
  kill(): Promise<void>;
}

/** Starts `kms serve` and resolves once it prints where it listens. */
export function serve(args: string[], env: Record<string, string> = {}, options: { cwd?: string } = {}): Promise<Served> {
  const child = spawn(process.execPath, [KMS_BIN, 'serve', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], cwd: options.cwd });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`kms serve did not start: ${stderr.join('')}`));
    }, 30_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => stdout.push(d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr.push(d);
      const m = /listening on (\S+)/.exec(stderr.join(''));
      if (m) {
        clearTimeout(timer);
        resolve({
          url: m[1]!,
          pid: child.pid!,
          stdout,
          stderr,
          signal: (name) => void child.kill(name),
          stop: () => {
            child.kill('SIGTERM');
            return exited;
          },
          kill: async () => {
            child.kill('SIGKILL');
            await exited;
          },
        });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`kms serve exited with ${code}: ${stderr.join('')}`));
    });
  });
}

/** The SHA-256 fingerprint of the certificate a new TLS connection to `url` gets (read only, not verified). */
export function servedCertificate(url: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const req = request(`${url}/.well-known/kms`, { rejectUnauthorized: false, agent: false }, (res) => {
      const fingerprint = (res.socket as TLSSocket).getPeerCertificate().fingerprint256;
      res.resume();
      res.on('end', () => resolve(fingerprint));
    });
    req.on('error', reject);
    req.end();
  });
}
