/**
 * `kms serve`: runs the KMS until SIGTERM/SIGINT, then stops accepting, drains and exits 0. SIGHUP
 * re-reads kms.json and takes the peers, the log level and the TLS certificate without a restart;
 * an invalid file is refused with a warning and the running settings stay. It never stops the server.
 */
import { existsSync } from 'node:fs';
import { relative } from 'node:path';
import { loadConfig, type KmsConfig } from '../config.js';
import { LOG_LEVELS } from '../config/options.js';
import { createLogger } from '../logger.js';
import { startKms } from '../server.js';
import { DEFAULT_CONFIG, DEFAULT_DIR, UsageError, flagOrEnv, intFlag, parse } from './args.js';
import { initKmsDir } from './init.js';

const USAGE = `usage: kms serve [--config D/kms.json] [--db URL] [--port P] [--host H] [--federation-max-staleness S] [--log-level L]
  runs the KMS until SIGTERM/SIGINT; without --config it uses (and on first run creates) ./${DEFAULT_CONFIG}.
  The flags override kms.json's storage.url, listen.port, listen.host, federation.maxStaleness and log.level.
  SIGHUP re-reads kms.json: peers, log.level (unless --log-level) and the TLS certificate take effect at
  once; an invalid file is refused with a warning, keeping the running settings.
Environment: KMS_CONFIG, KMS_DB, KMS_PORT, KMS_HOST, KMS_FEDERATION_MAX_STALENESS, KMS_LOG_LEVEL, KMS_ROOT_KEY.`;

export async function serveCommand(argv: string[]): Promise<void> {
  const { values } = parse(
    argv,
    {
      config: { type: 'string' },
      db: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      'federation-max-staleness': { type: 'string' },
      'log-level': { type: 'string' },
    },
    { usage: USAGE },
  );
  // Every flag is checked before anything is read or created.
  const staleness = intFlag(flagOrEnv(values.str('federation-max-staleness'), 'KMS_FEDERATION_MAX_STALENESS'), '--federation-max-staleness', 1, undefined, 'seconds');
  const port = intFlag(flagOrEnv(values.str('port'), 'KMS_PORT'), '--port', 0, 65535);
  const level = flagOrEnv(values.str('log-level'), 'KMS_LOG_LEVEL');
  if (level !== undefined && !(LOG_LEVELS as readonly string[]).includes(level)) throw new UsageError(`--log-level ${level} is not one of ${LOG_LEVELS.join(', ')}`);
  // From here on SIGHUP never kills (its default): until the KMS runs, there is nothing to reload.
  let reload: () => void = () => {};
  const onHangup = () => reload();
  process.on('SIGHUP', onHangup);
  let configFile = flagOrEnv(values.str('config'), 'KMS_CONFIG');
  if (!configFile) {
    // The embedded default (OPERATING.md "Fresh clone"): ./.kms, made on first start.
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
  const logger = createLogger(level ?? config.log.level);
  const running = await startKms(config, { db: flagOrEnv(values.str('db'), 'KMS_DB'), port, host: flagOrEnv(values.str('host'), 'KMS_HOST'), logger });
  logger.info({ authority: config.authority, domains: config.domains, url: running.url }, 'KMS listening');
  const file = configFile;
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
  const shown = relative(process.cwd(), configFile) || configFile;
  if (config.identity.dev?.enabled) {
    process.stderr.write(
      `KMS ${config.authority} listening on ${running.url}\n` +
        `get a development token: TOKEN=$(npx kms token --config ${shown} --user alice@${config.domains[0]})\n`,
    );
  } else {
    process.stderr.write(`KMS ${config.authority} listening on ${running.url}\n`);
  }
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      logger.info({ signal }, 'shutting down: finishing in-flight requests');
      void running.close().then(resolve, (err: Error) => {
        logger.error({ err: { message: err.message } }, 'shutdown failed');
        process.exitCode = 1;
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  process.off('SIGHUP', onHangup);
  logger.info({}, 'stopped');
}
