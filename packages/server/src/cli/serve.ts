/**
 * `kms serve`: runs the KMS until SIGTERM/SIGINT, then stops accepting, drains and exits 0. SIGHUP
 * re-reads kms.json and takes the peers, the log level and the TLS certificate without a restart;
 * an invalid file is refused with a warning and the running settings stay. It never stops the server.
 * With --workers N (N > 1) this process is the primary of N workers that each run this same path
 * (cli/workers.ts); with 1 it serves itself.
 */
import { existsSync } from 'node:fs';
import { relative } from 'node:path';
import { loadConfig, type KmsConfig } from '../config.js';
import { LOG_LEVELS } from '../config/options.js';
import { createLogger } from '../logger.js';
import { startKms } from '../server.js';
import { DEFAULT_CONFIG, DEFAULT_DIR, UsageError, flagOrEnv, intFlag, parse } from './args.js';
import { initKmsDir } from './init.js';
import { MAX_WORKERS, WorkerSide, isWorker, superviseWorkers, workerCount } from './workers.js';

const USAGE = `usage: kms serve [--config D/kms.json] [--db URL] [--port P] [--host H] [--federation-max-staleness S] [--log-level L] [--workers N|auto]
  runs the KMS until SIGTERM/SIGINT; without --config it uses (and on first run creates) ./${DEFAULT_CONFIG}.
  The flags override kms.json's storage.url, listen.port, listen.host, federation.maxStaleness and log.level.
  --workers: N worker processes (1 to ${MAX_WORKERS}; auto: one per core) on one port, each a node of the
  one database; default 1 (no workers: this process serves).
  SIGHUP re-reads kms.json: peers, log.level (unless --log-level) and the TLS certificate take effect at
  once; an invalid file is refused with a warning, keeping the running settings.
Environment: KMS_CONFIG, KMS_DB, KMS_PORT, KMS_HOST, KMS_FEDERATION_MAX_STALENESS, KMS_LOG_LEVEL, KMS_WORKERS, KMS_ROOT_KEY.`;

export async function serveCommand(argv: string[]): Promise<void> {
  if (!isWorker()) return serve(argv);
  // A worker of `--workers N` takes its orders from the primary (cli/workers.ts), not from signals,
  // and tells it, not stderr, why it cannot start: the primary prints that line once.
  const worker = new WorkerSide();
  try {
    await serve(argv, worker);
  } catch (err) {
    worker.failed(err);
  }
}

async function serve(argv: string[], worker?: WorkerSide): Promise<void> {
  const { values } = parse(
    argv,
    {
      config: { type: 'string' },
      db: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      'federation-max-staleness': { type: 'string' },
      'log-level': { type: 'string' },
      workers: { type: 'string' },
    },
    { usage: USAGE },
  );
  // Every flag is checked before anything is read or created.
  const staleness = intFlag(flagOrEnv(values.str('federation-max-staleness'), 'KMS_FEDERATION_MAX_STALENESS'), '--federation-max-staleness', 1, undefined, 'seconds');
  const port = intFlag(flagOrEnv(values.str('port'), 'KMS_PORT'), '--port', 0, 65535);
  const level = flagOrEnv(values.str('log-level'), 'KMS_LOG_LEVEL');
  if (level !== undefined && !(LOG_LEVELS as readonly string[]).includes(level)) throw new UsageError(`--log-level ${level} is not one of ${LOG_LEVELS.join(', ')}`);
  const workers = workerCount(flagOrEnv(values.str('workers'), 'KMS_WORKERS'));
  // From here on SIGHUP never kills (its default): until the KMS runs, there is nothing to reload.
  let reload: () => void = () => {};
  const onHangup = () => reload();
  if (worker) worker.onReload(onHangup);
  else process.on('SIGHUP', onHangup);
  let configFile = flagOrEnv(values.str('config'), 'KMS_CONFIG');
  if (!configFile) {
    // The embedded default (OPERATING.md "Fresh clone"): ./.kms, made on first start (by the
    // primary of --workers, before any worker is forked).
    configFile = DEFAULT_CONFIG;
    if (!existsSync(configFile)) {
      process.stderr.write(`no ${DEFAULT_CONFIG} yet: creating a development KMS (authority kms.localhost, domain localhost)\n`);
      await initKmsDir({ dir: DEFAULT_DIR, authority: 'kms.localhost', domains: ['localhost'] });
    }
  }
  const overridden = (c: KmsConfig): KmsConfig => {
    if (staleness !== undefined) c.federation.maxStaleness = staleness;
    return c;
  };
  const config = overridden(loadConfig(configFile));
  const file = configFile;
  if (!worker && workers > 1) {
    // The primary: checked the flags and kms.json above, so a bad one is one line, not one per worker.
    const logger = createLogger(level ?? config.log.level, undefined, { role: 'primary', pid: process.pid });
    process.off('SIGHUP', onHangup);
    await superviseWorkers({
      count: workers,
      logger,
      announce: (url) => announce(config, file, url),
      onReload() {
        try {
          logger.level = level ?? loadConfig(file).log.level;
        } catch {
          // Each worker says why it refused the file.
        }
      },
    });
    return;
  }
  const logger = createLogger(level ?? config.log.level, undefined, worker?.fields);
  const running = await startKms(config, { db: flagOrEnv(values.str('db'), 'KMS_DB'), port, host: flagOrEnv(values.str('host'), 'KMS_HOST'), logger });
  // Caught before anyone is told where the KMS listens: a SIGTERM sent as soon as the line is read
  // must drain and exit 0, not meet the default action (death by signal) while this is set up.
  const stopRequested =
    worker?.stopRequested ??
    new Promise<string>((resolve) => {
      process.once('SIGTERM', () => resolve('SIGTERM'));
      process.once('SIGINT', () => resolve('SIGINT'));
    });
  logger.info({ authority: config.authority, domains: config.domains, url: running.url, node: running.kms.node }, 'KMS listening');
  reload = () => {
    try {
      const next = overridden(loadConfig(file));
      const { applied, atNextStart } = running.reload(next);
      // A --log-level flag (or KMS_LOG_LEVEL) outranks kms.json, on a reload as at start.
      const [was, now] = [logger.level, level ?? next.log.level];
      // The reload is told at the more talkative of the two levels, so it shows going either way.
      logger.level = logger.levels.values[was]! < logger.levels.values[now]! ? was : now;
      logger.info({ config: file, applied: [...applied, 'log.level'], logLevel: now, peers: next.peers.map((p) => p.authority), atNextStart }, 'SIGHUP: reloaded kms.json');
      logger.level = now;
      if (atNextStart.length > 0) logger.warn({ settings: atNextStart }, 'SIGHUP: these settings changed in kms.json and take effect at the next start');
    } catch (err) {
      logger.warn({ config: file, problem: (err as Error).message }, 'SIGHUP: kms.json refused, keeping the running settings');
    }
  };
  if (worker) worker.listening(running.url, (running.transport.server.address() as { port: number }).port, running.kms.node);
  else announce(config, file, running.url);
  const signal = await stopRequested;
  logger.info({ signal }, 'shutting down: finishing in-flight requests');
  await running.close().catch((err: Error) => {
    logger.error({ err: { message: err.message } }, 'shutdown failed');
    process.exitCode = 1;
  });
  process.off('SIGHUP', onHangup);
  logger.info({}, 'stopped');
  worker?.leave();
}

/** Where the KMS listens (and, for a development KMS, how to get a token): on stderr, once. */
function announce(config: KmsConfig, configFile: string, url: string): void {
  const shown = relative(process.cwd(), configFile) || configFile;
  if (config.identity.dev?.enabled) {
    process.stderr.write(
      `KMS ${config.authority} listening on ${url}\n` +
        `get a development token: TOKEN=$(npx kms token --config ${shown} --user alice@${config.domains[0]})\n`,
    );
  } else {
    process.stderr.write(`KMS ${config.authority} listening on ${url}\n`);
  }
}
