/** `kms serve`: runs the KMS until SIGTERM/SIGINT, then stops accepting, drains and exits 0. */
import { existsSync } from 'node:fs';
import { relative } from 'node:path';
import { loadConfig } from '../config.js';
import { LOG_LEVELS } from '../config/options.js';
import { createLogger } from '../logger.js';
import { startKms } from '../server.js';
import { DEFAULT_CONFIG, DEFAULT_DIR, UsageError, flagOrEnv, intFlag, parse } from './args.js';
import { initKmsDir } from './init.js';

const USAGE = `usage: kms serve [--config D/kms.json] [--db URL] [--port P] [--host H] [--federation-max-staleness S] [--log-level L]
  runs the KMS until SIGTERM/SIGINT; without --config it uses (and on first run creates) ./${DEFAULT_CONFIG}.
  The flags override kms.json's storage.url, listen.port, listen.host, federation.maxStaleness and log.level.
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
  let configFile = flagOrEnv(values.str('config'), 'KMS_CONFIG');
  if (!configFile) {
    // The embedded default (OPERATING.md "Fresh clone"): ./.kms, made on first start.
    configFile = DEFAULT_CONFIG;
    if (!existsSync(configFile)) {
      process.stderr.write(`no ${DEFAULT_CONFIG} yet: creating a development KMS (authority kms.localhost, domain localhost)\n`);
      await initKmsDir({ dir: DEFAULT_DIR, authority: 'kms.localhost', domains: ['localhost'] });
    }
  }
  const config = loadConfig(configFile);
  if (staleness !== undefined) config.federation.maxStaleness = staleness;
  const logger = createLogger(level ?? config.log.level);
  const running = await startKms(config, { db: flagOrEnv(values.str('db'), 'KMS_DB'), port, host: flagOrEnv(values.str('host'), 'KMS_HOST'), logger });
  logger.info({ authority: config.authority, domains: config.domains, url: running.url }, 'KMS listening');
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
  logger.info({}, 'stopped');
}
