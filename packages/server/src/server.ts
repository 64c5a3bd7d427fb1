/**
 * Assembles a running KMS from its configuration: storage, keyring root, static identity, token
 * verification, the core, the transports, the sweeper. `kms serve` and the tests both start it
 * through here, so tests run the real thing.
 */
import { readFileSync } from 'node:fs';
import type { Server as HttpsServer } from 'node:https';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import { isAbsolute, resolve } from 'node:path';
import { createPublicKey, type KeyObject } from 'node:crypto';
import { joseCodec, type MessageCodec } from '@openkms/protocol';
import { AuditLog, newNodeId } from './audit/audit.js';
import { Checkpointer } from './audit/checkpointer.js';
import { CachedRows, evictingWrites } from './cached-rows.js';
import { Channels } from './channels.js';
import { Coherence } from './coherence.js';
import { fastCodec } from './codec/fast-codec.js';
import { configPath, ConfigError, type KmsConfig } from './config.js';
import { Answerer } from './core/answer.js';
import { Authentication } from './core/authenticate.js';
import { Kms, type PublicStaticJwk } from './core/kms.js';
import { Opener } from './core/open.js';
import { Resolver } from './core/resolve.js';
import { Retries, RETRY_WINDOW_MS } from './core/retries.js';
import { Runner } from './core/run.js';
import { Copies } from './federation/copies.js';
import { Forwarding } from './federation/forwarding.js';
import { Invalidations } from './federation/inbox.js';
import { PeerChannels } from './federation/peer-channels.js';
import { PeerVerifier } from './federation/peer-proof.js';
import { PeerRegistry, validatePeers } from './federation/peers.js';
import { InvalidationPush } from './federation/push.js';
import { AnonymousBearers } from './identity/anonymous.js';
import { Authenticator } from './identity/authenticator.js';
import { loadDevIssuer, type DevIssuer } from './identity/dev-issuer.js';
import { chainNotAfter, loadStaticIdentity, type StaticIdentity } from './identity/certificates.js';
import type { TokenVerifier } from './identity/principal.js';
import { createTokenVerifier } from './identity/tokens.js';
import { Keyring, localRootKey, parseRootKey, type RootKey } from './keyring/keyring.js';
import { openPkcs11RootKey } from './keyring/pkcs11.js';
import { createLogger, silentLogger, type Logger } from './logger.js';
import type { Deps } from './operations/context.js';
import { handlers } from './core/handlers.js';
import { PrincipalLimit, RateLimiter } from './rate-limit.js';
import { NETWORK_CODES, withDeadline } from './store/deadline.js';
import { PostgresStore } from './store/postgres.js';
import { SqliteStore } from './store/sqlite.js';
import type { Store } from './store/store.js';
import { instrumented, methodsOf } from './store/instrumented.js';
import { Metrics } from './metrics.js';
import { Heartbeat } from './nodes/heartbeat.js';
import { Leader } from './nodes/leader.js';
import { Transport } from './transport/http.js';

export interface KmsOptions {
  config: KmsConfig;
  store: Store;
  verifier: TokenVerifier;
  staticKey: { privateKey: KeyObject; publicJwk: PublicStaticJwk };
  /** The root of at-rest encryption; the caller opened it and closes it (startKms: on close). */
  rootKey: RootKey;
  now?: () => number;
  codec?: MessageCodec;
  logger?: Logger;
  /** The peers, when the caller keeps them to replace them later (startKms: SIGHUP). */
  peers?: PeerRegistry;
  /** Where the parts count what an operator watches (startKms: served at /metrics). */
  metrics?: Metrics;
  /**
   * One storage deadline per request (ms; startKms: storage.timeoutSeconds), shared by all its
   * storage calls and its audit write. None: each call has only the store's own deadline.
   */
  requestDeadlineMs?: number;
  /** Signs audit checkpoints into this file (startKms: audit.checkpoints.file); none: no checkpoints. */
  checkpointFile?: string;
}

/**
 * The composition root: builds every part of a KMS from its configuration and wires them
 * together. Nothing else in the server constructs parts for another part.
 */
export async function assembleKms(options: KmsOptions): Promise<Kms> {
  const { config, store, staticKey, rootKey } = options;
  const now = options.now ?? Date.now;
  const codec = options.codec ?? joseCodec;
  const logger = options.logger ?? silentLogger;
  const kid = staticKey.publicJwk.kid;
  const signing = { privateKey: staticKey.privateKey, kid };

  const keyring = await Keyring.open(rootKey, store, now());
  const channels = new Channels(config.authority, store, keyring, now);
  const rows = new CachedRows(store, now);
  // Follows other nodes' writes on this database; until it listens, nothing is cached.
  const coherence = new Coherence(store, channels, rows, keyring, logger);
  coherence.start();
  await coherence.settled(config.storage.timeoutSeconds * 1000);
  // One id per process: its audit records, its heartbeat and its claim to lead all carry it.
  const node = newNodeId();
  const audit = new AuditLog(store, rootKey.auditKey(), node);
  audit.onWriteFailure = options.metrics?.auditWriteFailed;
  const checkpointer =
    options.checkpointFile === undefined
      ? undefined
      : new Checkpointer({ store, file: options.checkpointFile, intervalMs: config.audit.checkpoints.intervalSeconds * 1000, key: signing, logger, now });
  if (checkpointer) audit.onWritten = (records) => checkpointer.written(records);
  const peers = options.peers ?? new PeerRegistry(config);
  const bearers = new AnonymousBearers(config.authority, staticKey.privateKey, createPublicKey(staticKey.privateKey), now);

  const peerChannels = new PeerChannels({
    authority: config.authority,
    peers,
    staticKey: { ...signing, publicJwk: { ...staticKey.publicJwk } },
    codec,
    timeoutMs: config.federation.peerTimeout * 1000,
    now,
    audit: (entry) => audit.record(entry),
    logger,
    onCall: options.metrics?.peerCall,
  });
  const inbox = new Invalidations(store);
  const push = new InvalidationPush(config.authority, peers, store, peerChannels, logger);
  const copies = new Copies({ authority: config.authority, store, keyring, channels: peerChannels, inbox, maxStalenessMs: config.federation.maxStaleness * 1000, now });
  const forwarder = new Forwarding(peerChannels);

  // The background work of all processes on this database is done by one of them (nodes/leader.ts).
  const leader = new Leader(await store.leadership(node), node, logger);
  const heartbeat = new Heartbeat(store, node, () => leader.leads, logger);
  leader.onChange = () => void heartbeat.beat();
  leader.whileLeading(() => push.lead());
  await leader.start();
  await heartbeat.start();
  checkpointer?.start();

  // This process's own writes evict what they change from the cached rows before they are answered.
  const deps: Deps = { authority: config.authority, config, store: evictingWrites(store, rows), rows, keyring, channels, bearers, changes: push, inbox, now };
  return new Kms({
    authority: config.authority,
    domains: config.domains,
    staticJwk: staticKey.publicJwk,
    opener: new Opener(config.authority, signing, channels, codec),
    authentication: new Authentication(
      config.authority,
      new Authenticator(config.domains, options.verifier, bearers, store, now),
      new PeerVerifier(config.authority, peers, store, now),
      peers,
      config.lifetimes.channel * 1000,
      new PrincipalLimit(new RateLimiter(config.limits.requestsPerMinutePerPrincipal, now)),
    ),
    handshakes: new RateLimiter(config.limits.handshakesPerMinutePerAddress, now),
    resolver: new Resolver(config.authority, peers),
    runner: new Runner(handlers, deps, { ...deps, copies, forwarder }),
    // A claim outlives any request that holds it: its storage deadline plus a peer's timeout, twice.
    retries: new Retries(store, keyring, { windowMs: RETRY_WINDOW_MS, leaseMs: 2 * (config.storage.timeoutSeconds + config.federation.peerTimeout) * 1000 }, logger, now),
    deadline: options.requestDeadlineMs === undefined ? undefined : { storageMs: options.requestDeadlineMs, peerMs: config.federation.peerTimeout * 1000 },
    answerer: new Answerer(audit, codec, signing, logger, now),
    channels,
    store,
    changes: push,
    node,
    leader,
    coherence,
    lifetimes: { unboundGraceMs: config.lifetimes.unboundGrace * 1000 },
    logger,
    now,
    async close() {
      await leader.close();
      coherence.close();
      await push.close();
      await heartbeat.close();
      await peerChannels.close();
      await audit.flush();
      // After the flush: the last checkpoint covers every record this process wrote.
      await checkpointer?.close();
    },
  });
}

export interface StartOptions {
  /** Overrides storage.url: `sqlite:PATH` or `postgres://…`. */
  db?: string;
  port?: number;
  host?: string;
  now?: () => number;
  logger?: Logger;
  /** Turn off the periodic sweeper (tests call kms.sweep() themselves). */
  sweeper?: boolean;
}

export interface RunningKms {
  kms: Kms;
  store: Store;
  transport: Transport;
  /** What /metrics serves; parts started later register their gauges here (metrics.gauge). */
  metrics: Metrics;
  /** http://host:port */
  url: string;
  /**
   * Takes what of a changed config applies without a restart: the peers (with their CA anchors) and
   * the TLS certificate and key. Everything is checked first; on any problem it throws ConfigError
   * and nothing changes. Says what it applied and which other settings differ (they wait for a restart).
   */
  reload(next: KmsConfig): Reloaded;
  close(): Promise<void>;
}

export interface Reloaded {
  /** The settings taken: `peers`, `tls`. */
  applied: string[];
  /** Top-level settings of the new config that differ and take effect only at the next start. */
  atNextStart: string[];
}

/** What reload() takes live, or leaves to whoever applies it (log: the logger's owner). */
const RELOADED_LIVE = new Set(['peers', 'tls', 'log', 'baseDir']);

/** The top-level settings that differ between two configs, except those a reload takes. */
function needingRestart(running: KmsConfig, next: KmsConfig): string[] {
  const keys = new Set([...Object.keys(running), ...Object.keys(next)]);
  const differ = (k: string) => JSON.stringify((running as Record<string, unknown>)[k]) !== JSON.stringify((next as Record<string, unknown>)[k]);
  return [...keys].filter((k) => !RELOADED_LIVE.has(k) && differ(k)).sort();
}

function read(config: KmsConfig, path: string, what: string): string {
  const full = configPath(config, path);
  try {
    return readFileSync(full, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${what} ${full}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/**
 * Opens the storage a URL names: `sqlite:PATH` (relative to baseDir) or `postgres://…` /
 * `postgresql://…` (connects and migrates; a `schema=NAME` query parameter keeps the tables in that
 * schema). Any failure is a ConfigError of one line, never a stack trace. `timeoutMs`, for a
 * serving KMS (storage.timeoutSeconds): SQLite waits at most that long for another process's lock,
 * PostgreSQL connections and statements give up after it; the deadline itself is withDeadline's.
 * `backgroundCheckpoints`, for a serving KMS: SQLite's checkpoints run on a thread of their own.
 */
export async function openStore(url: string, baseDir: string, options: { timeoutMs?: number; backgroundCheckpoints?: boolean } = {}): Promise<Store> {
  const { timeoutMs, backgroundCheckpoints } = options;
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length);
    if (!path) throw new ConfigError('storage url sqlite: needs a path, e.g. sqlite:kms.db');
    try {
      return new SqliteStore(path === ':memory:' || isAbsolute(path) ? path : resolve(baseDir, path), { busyTimeoutMs: timeoutMs, backgroundCheckpoints });
    } catch (err) {
      throw new ConfigError(`cannot open SQLite database ${path}: ${(err as Error).message}`);
    }
  }
  if (url.startsWith('postgres://') || url.startsWith('postgresql://')) {
    try {
      return await PostgresStore.open(url, { connectionTimeoutMillis: timeoutMs, statementTimeoutMillis: timeoutMs });
    } catch (err) {
      throw new ConfigError(postgresProblem(url, err));
    }
  }
  throw new ConfigError(`storage url must be sqlite:PATH or postgres://…, got ${url.split(':')[0]}:`);
}

/** host:port of a postgres:// URL, for messages (never the password); undefined if it does not parse. */
export function postgresAddress(url: string): string | undefined {
  try {
    const u = new URL(url);
    const host = u.searchParams.get('host') ?? (u.hostname.replace(/^\[(.*)\]$/, '$1') || 'localhost');
    return `${host}:${u.searchParams.get('port') ?? (u.port || '5432')}`;
  } catch {
    return undefined;
  }
}

/** One line about a PostgreSQL that could not be opened; names host:port, never the password. */
export function postgresProblem(url: string, err: unknown): string {
  const where = postgresAddress(url);
  if (where === undefined) return 'storage url is not a valid postgres:// URL';
  const e = err as { code?: unknown; message?: unknown; errors?: { code?: unknown }[] };
  // Node reports a refused dual-stack connect as an AggregateError of one error per address.
  const code = typeof e.code === 'string' ? e.code : e.errors?.map((x) => x.code).find((c): c is string => typeof c === 'string');
  const message = String(e.message ?? err).split('\n')[0]!.trim();
  if (code && NETWORK_CODES.has(code)) return `cannot reach PostgreSQL at ${where}: ${code}`;
  if (/timeout/i.test(message)) return `cannot reach PostgreSQL at ${where}: connection timed out`;
  if (/Connection terminated/i.test(message)) return `cannot reach PostgreSQL at ${where}: the connection was closed before PostgreSQL answered`;
  return `cannot open PostgreSQL storage at ${where}: ${message || code || 'error'}`;
}

/**
 * The configured root key: KMS_ROOT_KEY, rootKey.file, or a key in an HSM (rootKey.pkcs11, PIN
 * from KMS_HSM_PIN). The caller closes it. Every problem is a ConfigError of one line.
 */
export async function openRootKey(config: KmsConfig): Promise<RootKey> {
  const fromEnv = process.env.KMS_ROOT_KEY;
  const hsm = config.rootKey.pkcs11;
  if (hsm) {
    if (config.rootKey.file) throw new ConfigError('rootKey.file and rootKey.pkcs11 name two root keys: keep one');
    // Two root keys would make which one sealed the CMKs a guess.
    if (fromEnv) throw new ConfigError('KMS_ROOT_KEY is set, but the root key of this config is in an HSM (rootKey.pkcs11): unset KMS_ROOT_KEY');
    const opened = await openPkcs11RootKey({ module: configPath(config, hsm.module), token: hsm.token, key: hsm.key, pin: process.env.KMS_HSM_PIN });
    return opened.root;
  }
  try {
    if (fromEnv) return localRootKey(parseRootKey(fromEnv), 'KMS_ROOT_KEY');
    if (!config.rootKey.file) throw new ConfigError('no root key: set rootKey.file or rootKey.pkcs11 in the config, or KMS_ROOT_KEY');
    return localRootKey(parseRootKey(read(config, config.rootKey.file, 'root key')), `the root key file ${configPath(config, config.rootKey.file)}`);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`root key: ${(err as Error).message}`);
  }
}

/** Runs `use` with the configured root key open, and closes it after. */
/** The static key and its certificate chain (checked for the authority); a ConfigError otherwise. */
export function staticIdentityOf(config: KmsConfig, certChainPem = read(config, config.staticKey.cert, 'static certificate')): Promise<StaticIdentity> {
  return loadStaticIdentity({ keyPem: read(config, config.staticKey.key, 'static key'), certChainPem, authority: config.authority }).catch((err: Error) => {
    throw new ConfigError(err.message);
  });
}

export async function withRootKey<T>(config: KmsConfig, use: (root: RootKey) => T | Promise<T>): Promise<T> {
  const root = await openRootKey(config);
  try {
    return await use(root);
  } finally {
    root.close();
  }
}

export function devIssuerOf(config: KmsConfig): DevIssuer | undefined {
  const dev = config.identity.dev;
  if (!dev?.enabled) return undefined;
  return loadDevIssuer(read(config, dev.keyFile, 'development issuer key'), devIssuerName(config), audienceOf(config));
}

export const devIssuerName = (config: KmsConfig) => `https://${config.authority}/dev-issuer`;
export const audienceOf = (config: KmsConfig) => config.identity.audience ?? `kms://${config.authority}`;

/**
 * The certificate expiry gauges: seconds until the static certificate chain and, when the KMS
 * serves TLS, the TLS chain stop being valid (negative once expired). `tls(pem)` follows a reload.
 */
function certificateExpiry(metrics: Metrics, staticPem: string, tlsPem: string | undefined, now: () => number): { tls(pem: string): void } {
  const notAfter = (pem: string | undefined) => {
    try {
      return pem === undefined ? undefined : chainNotAfter(pem).getTime();
    } catch {
      return undefined; // TLS accepts what it accepts; a chain this cannot read has no gauge
    }
  };
  const staticAt = notAfter(staticPem);
  let tlsAt = notAfter(tlsPem);
  metrics.labelledGauge('kms_certificate_expires_in_seconds', 'Seconds until a certificate chain of this KMS expires, by certificate (static, tls); negative once expired', 'certificate', () => {
    const values: [string, number][] = [];
    if (staticAt !== undefined) values.push(['static', (staticAt - now()) / 1000]);
    if (tlsAt !== undefined) values.push(['tls', (tlsAt - now()) / 1000]);
    return values;
  });
  return {
    tls(pem) {
      tlsAt = notAfter(pem);
    },
  };
}

export async function startKms(config: KmsConfig, options: StartOptions = {}): Promise<RunningKms> {
  validatePeers(config);
  const logger = options.logger ?? createLogger(config.log.level);
  const metrics = new Metrics();
  const staticCertPem = read(config, config.staticKey.cert, 'static certificate');
  const staticKey = await staticIdentityOf(config, staticCertPem);
  const dev = devIssuerOf(config);
  // Opened before the identity provider and the store, so a problem with it (a wrong HSM PIN) is
  // told first; every failure below closes it again, and so does the KMS's close.
  const rootKey = await openRootKey(config);
  if (dev) {
    const id = config.identity;
    const alsoProduction = Boolean(id.issuer || id.jwksUri || id.jwksFile || id.introspection);
    logger.warn(
      { keyFile: config.identity.dev?.keyFile },
      alsoProduction
        ? 'the development token issuer is enabled next to a production identity provider: whoever reads its key file can act as any user; set identity.dev.enabled to false'
        : 'the development token issuer is enabled (kms token): for development only',
    );
  }
  let verifier: ReturnType<typeof createTokenVerifier>;
  try {
    verifier = createTokenVerifier(
    { ...config.identity, audience: audienceOf(config) },
    {
      baseDir: config.baseDir,
      now: options.now,
      devPublicJwk: dev?.publicJwk,
      devIssuer: dev ? devIssuerName(config) : undefined,
      devAudience: dev ? audienceOf(config) : undefined,
      onProviderError: (detail, call) => {
        metrics.providerFailed(call);
        logger.warn({ detail }, 'identity provider problem');
      },
    },
  );
  } catch (err) {
    rootKey.close();
    throw err;
  }
  const peers = new PeerRegistry(config);
  const timeoutMs = config.storage.timeoutSeconds * 1000;
  // Every storage call of the running KMS has a deadline: storage that is down or stuck is a 503.
  const bounded = withDeadline(
    await openStore(options.db ?? config.storage.url, config.baseDir, { timeoutMs, backgroundCheckpoints: true }).catch((err: unknown) => {
      verifier.close?.();
      rootKey.close();
      throw err;
    }),
    timeoutMs,
  );
  // Measured outside the deadline: a call that ran out of time counts as the 503 it became.
  metrics.storageMethods(methodsOf(bounded));
  const store = instrumented(bounded, metrics.storageCall);
  let kms: Kms;
  try {
    kms = await assembleKms({ config, store, verifier, staticKey, rootKey, now: options.now, logger, codec: fastCodec, peers, metrics, requestDeadlineMs: timeoutMs, checkpointFile: configPath(config, config.audit.checkpoints.file) });
  } catch (err) {
    await store.close();
    rootKey.close();
    throw err;
  }
  kms.onRequest = metrics.request;
  kms.onSweep = metrics.sweep;
  metrics.gauge('kms_channels_open', 'Ephemeral-key channels held open (not expired) by this process', () => kms.channels.openCount());
  metrics.gauge('kms_leader', 'Whether this process leads the background work (sweeper, invalidation pushes) of the processes on its database: 1 or 0', () => kms.leads);
  const tls = config.tls ? { cert: read(config, config.tls.cert, 'TLS certificate'), key: read(config, config.tls.key, 'TLS key') } : undefined;
  const expiry = certificateExpiry(metrics, staticCertPem, tls?.cert, options.now ?? Date.now);
  const transport = new Transport({ kms, metrics: metrics.registry, logger, tls, corsOrigins: config.cors.origins });
  const host = options.host ?? config.listen.host;
  let bound: { port: number };
  try {
    bound = await transport.listen(options.port ?? config.listen.port, host);
  } catch (err) {
    await kms.close();
    await store.close();
    rootKey.close();
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(code === 'EADDRINUSE' ? `port ${options.port ?? config.listen.port} on ${host} is in use` : `cannot listen: ${code ?? (err as Error).message}`);
  }
  // The sweeper is elected work: of the processes on one database, only the leader runs it.
  if (options.sweeper !== false) {
    kms.whileLeading(() => {
      const sweeper = setInterval(
        () => void kms.sweep().catch((err: Error) => logger.error({ err: { message: err.message } }, 'sweeper failed')),
        config.sweeper.intervalSeconds * 1000,
      );
      sweeper.unref();
      return () => clearInterval(sweeper);
    });
  }
  const url = `${config.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${bound.port}`;
  let closing: Promise<void> | undefined;
  let running = config;
  return {
    kms,
    store,
    transport,
    metrics,
    url,
    reload(next) {
      const own = { authority: running.authority, domains: running.domains, peers: next.peers };
      validatePeers(own);
      const atNextStart = needingRestart(running, next);
      let secure: SecureContextOptions | undefined;
      if (config.tls && next.tls) {
        secure = { cert: read(next, next.tls.cert, 'TLS certificate'), key: read(next, next.tls.key, 'TLS key') };
        try {
          createSecureContext(secure);
        } catch (err) {
          throw new ConfigError(`TLS certificate and key: ${(err as Error).message}`);
        }
      } else if (Boolean(config.tls) !== Boolean(next.tls)) {
        atNextStart.push('tls');
      }
      peers.replace(own);
      const applied = ['peers'];
      if (secure) {
        // New TLS handshakes get the new certificate; connections already open keep theirs.
        (transport.server as HttpsServer).setSecureContext(secure);
        expiry.tls(secure.cert as string);
        applied.push('tls');
      }
      // What runs: the start config with what was taken live, so a later reload still names the rest.
      running = { ...running, peers: next.peers, log: next.log, tls: secure ? next.tls : running.tls };
      return { applied, atNextStart };
    },
    close: () =>
      (closing ??= (async () => {
        await transport.close();
        await kms.close();
        verifier.close?.();
        await store.close();
        rootKey.close();
      })()),
  };
}
