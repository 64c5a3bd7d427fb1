/**
 * A PostgreSQL of a test's own, in a temp folder (initdb + pg_ctl), for tests that stop, kill or
 * freeze the database: the shared server on 127.0.0.1:5432 stays up for everyone else.
 *
 * The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin. initdb refuses to run
 * as root, and CI runs as root: then the cluster belongs to the `postgres` system user and every
 * command runs through `runuser -u postgres --`. `privatePostgresProblem()` says why none can be
 * had here (no binaries, root without a postgres user), so a test can skip saying so.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { reservablePort } from './ports.js';

function findBin(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) if (dir && existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'pg_ctl'))) return dir;
  const debian = '/usr/lib/postgresql';
  if (!existsSync(debian)) return undefined;
  // The newest version installed.
  const versions = readdirSync(debian).filter((v) => existsSync(join(debian, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(debian, versions[0], 'bin');
}

const isRoot = () => process.getuid?.() === 0;

function postgresUser(): { uid: number; gid: number } | undefined {
  const id = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (id.status !== 0 || gid.status !== 0) return undefined;
  return { uid: Number(id.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/** Why no private PostgreSQL can be started here, or undefined when one can. */
export function privatePostgresProblem(): string | undefined {
  if (process.platform !== 'linux') return 'a private PostgreSQL is set up for Linux only';
  if (!findBin()) return 'no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin';
  if (isRoot() && !postgresUser()) return 'running as root, and there is no postgres user to own the cluster (initdb refuses root)';
  if (isRoot() && spawnSync('runuser', ['--help']).error) return 'running as root without runuser';
  return undefined;
}


export class PrivatePostgres {
  private frozen: number[] = [];

  private constructor(
    private readonly bin: string,
    private readonly base: string,
    readonly port: number,
  ) {}

  private get data(): string {
    return join(this.base, 'data');
  }
  private get run(): string {
    return join(this.base, 'run');
  }
  /** Connects as the cluster's superuser to its `postgres` database, over TCP on loopback. */
  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  /** initdb in a fresh temp folder, then start() on a free loopback port. */
  static async create(): Promise<PrivatePostgres> {
    const problem = privatePostgresProblem();
    if (problem) throw new Error(problem);
    const base = mkdtempSync(join(tmpdir(), 'kms-private-pg-'));
    // The postgres user must reach its folders inside ours.
    chmodSync(base, 0o755);
    const pg = new PrivatePostgres(findBin()!, base, await reservablePort());
    for (const dir of [pg.data, pg.run]) {
      mkdirSync(dir, { mode: 0o700 });
      if (isRoot()) {
        const user = postgresUser()!;
        chownSync(dir, user.uid, user.gid);
      }
    }
    pg.exec('initdb', ['-D', pg.data, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--no-sync']);
    pg.start();
    return pg;
  }

  private exec(tool: string, args: string[]): string {
    const command = join(this.bin, tool);
    const [file, argv] = isRoot() ? ['runuser', ['-u', 'postgres', '--', command, ...args]] : [command, args];
    try {
      return execFileSync(file, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000, cwd: this.base });
    } catch (err) {
      const e = err as { stderr?: string; stdout?: string; message: string };
      throw new Error(`${tool} failed: ${e.stderr || e.stdout || e.message}${this.log()}`);
    }
  }

  private log(): string {
    const file = join(this.run, 'server.log');
    return existsSync(file) ? `\n--- server.log ---\n${readFileSync(file, 'utf8').slice(-4000)}` : '';
  }

  /** Starts the server and waits until it accepts connections. */
  start(): void {
    const options = `-p ${this.port} -c listen_addresses=127.0.0.1 -k ${this.run} -c fsync=off`;
    this.exec('pg_ctl', ['start', '-D', this.data, '-l', join(this.run, 'server.log'), '-w', '-t', '60', '-o', options]);
  }

  /** Stops it the hard way: every process quits at once, nothing is flushed (a crash, as a client sees it). */
  stopImmediately(): void {
    this.exec('pg_ctl', ['stop', '-D', this.data, '-m', 'immediate', '-w', '-t', '60']);
  }

  /** The postmaster and every process it started. */
  private processes(): number[] {
    const postmaster = Number(readFileSync(join(this.data, 'postmaster.pid'), 'utf8').split('\n')[0]);
    const children: number[] = [];
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      try {
        // pid (comm) state ppid …: comm may hold spaces, so read after its closing parenthesis.
        const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        if (ppid === postmaster) children.push(Number(name));
      } catch {
        // The process ended while we looked.
      }
    }
    return [postmaster, ...children];
  }

  /** SIGSTOP to the postmaster and its children: connections stay open and nothing answers. */
  freeze(): void {
    this.frozen = this.processes();
    for (const pid of this.frozen) process.kill(pid, 'SIGSTOP');
  }

  thaw(): void {
    for (const pid of this.frozen) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // Gone already.
      }
    }
    this.frozen = [];
  }

  /** Thaws, stops and removes everything; safe to call in any state, more than once. */
  destroy(): void {
    this.thaw();
    if (existsSync(join(this.data, 'postmaster.pid'))) {
      try {
        this.stopImmediately();
      } catch {
        // Stopped already.
      }
    }
    rmSync(this.base, { recursive: true, force: true });
  }
}
