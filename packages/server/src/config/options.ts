/**
 * Every option of kms.json, once: where it sits, its default, its unit, what it means and what we
 * recommend. This is the one place a default is written. The schema (../config.ts) reads its
 * defaults from here, `kms init` and the identity module read theirs from here, and the README's
 * configuration reference is generated from here (`node scripts/config-reference.mjs --write`;
 * test/config.test.ts fails when the README and this table disagree, and when an option of the
 * schema is missing here or one here is not in the schema).
 *
 * Paths name a member of kms.json as `section.member`; `peers[].endpoint` is the member of every
 * entry of the `peers` array. Only leaves are listed: a section (`tls`, `identity.dev`) is present
 * when one of its members is.
 *
 * The numeric limits of the protocol and the server (answer sizes, walk depths) are not options:
 * they bound what the implementation accepts, whatever a deployment prefers.
 */

/** pino's levels, most to least severe; `silent` logs nothing. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface ConfigOption {
  /** What the option does, for an operator reading the README. */
  readonly meaning: string;
  /** The unit of a number (`seconds`), or what a string names (`file`: a path relative to kms.json). */
  readonly unit?: string;
  /** The value the KMS uses when the option is absent. */
  readonly default?: string | number | boolean | readonly string[];
  /** A default computed from other options, in words, when there is no fixed value. */
  readonly derived?: string;
  /** Must be given (inside its section, when the section itself is optional such as `tls`). */
  readonly required?: true;
  /** What to choose, and why. */
  readonly recommendation?: string;
}

const DAY = 24 * 3600;

export const OPTIONS = {
  authority: {
    required: true,
    meaning: "This KMS's name (a DNS name, e.g. `kms.a.example`): the authority of every URI it issues, and the subject its static certificate must name.",
    recommendation: 'Choose it once: keys, resources and peers refer to it, so renaming a KMS orphans them.',
  },
  domains: {
    required: true,
    meaning: 'The user domains this KMS serves (at least one); a token whose user belongs to another domain is refused (403). A user id without `@` belongs to the first.',
  },
  'listen.host': {
    default: '127.0.0.1',
    meaning: 'Address to listen on (`kms serve --host`, `KMS_HOST`).',
    recommendation: 'Keep loopback behind a reverse proxy; `0.0.0.0` or `::` to listen on every interface.',
  },
  'listen.port': {
    default: 7001,
    meaning: 'TCP port, 0 to 65535; 0 picks a free one (`kms serve --port`, `KMS_PORT`).',
  },
  'storage.url': {
    default: 'sqlite:kms.db',
    meaning:
      'Where keys, resources, authorizations and the audit log are kept: `sqlite:PATH` (relative to kms.json) or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME]`, migrated on start (`kms serve --db`, `KMS_DB`).',
    recommendation: 'PostgreSQL when several nodes share one KMS; SQLite for one node.',
  },
  'storage.timeoutSeconds': {
    default: 2,
    unit: 'seconds',
    meaning:
      'The storage deadline of a request, one for the whole request: its storage calls and its audit write share it (and, on SQLite, how long a write waits for a lock held by another process); a request that asks a peer KMS has `federation.peerTimeout` more. Storage that fails to connect, drops the connection or does not answer within it makes the request a 503 (retry later), never a 500 or a hang; `/readyz` then says 503. A write that timed out may still commit afterwards.',
    recommendation: 'Keep it well under the client timeout (the SDK waits 30 s) and above the slowest normal write of your storage; raise it on slow disks or a distant database.',
  },
  'staticKey.key': {
    required: true,
    unit: 'file',
    meaning: "The KMS's static private key (PEM, RSA); clients seal their first message to it.",
    recommendation: 'Owner-only (0600), as `kms init` writes it.',
  },
  'staticKey.cert': {
    required: true,
    unit: 'file',
    meaning: 'The certificate chain of the static key (PEM), issued for `authority`; clients and peers check it against their CA.',
  },
  'ca.cert': {
    required: true,
    unit: 'file',
    meaning: 'The CA that issued the static certificate (PEM): what clients (`kms client --config`) and peers (`kms peer add --ca`) trust.',
  },
  'ca.key': {
    unit: 'file',
    meaning: 'The private key of a CA made by `kms init`; absent when the CA was given (`--ca-cert`, `--ca-key`).',
    recommendation: 'Move it offline once the certificate is issued: the server never reads it.',
  },
  'rootKey.file': {
    unit: 'file',
    meaning: 'The root of at-rest encryption (32 random bytes, base64): every stored key is sealed under a key derived from it. `KMS_ROOT_KEY` (the key itself) takes precedence; one of the two, or `rootKey.pkcs11`, is required.',
    recommendation: 'Owner-only, backed up apart from the database: without it the database cannot be read.',
  },
  'rootKey.pkcs11.module': {
    required: true,
    unit: 'file',
    meaning:
      'The root key in an HSM instead of a file: the PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`) of the token that holds it. CMKs are wrapped and unwrapped inside the token; the user PIN is read from `KMS_HSM_PIN` only, never from kms.json. Needs the optional package `pkcs11js`. Goes without `rootKey.file` and `KMS_ROOT_KEY`.',
    recommendation: '`kms init --hsm-module PATH --hsm-token LABEL` creates the keys and writes this section.',
  },
  'rootKey.pkcs11.token': {
    required: true,
    meaning: 'The label of the PKCS#11 token that holds the root key.',
  },
  'rootKey.pkcs11.key': {
    required: true,
    meaning: 'The label of the non-extractable AES-256 key in the token that wraps the CMKs (`kms init --hsm-key`, default `openkms-root`); the HMAC key beside it that derives the audit chain key is labelled `<key>-audit`.',
    recommendation: 'Back the token up as the HSM allows (both keys): without them the database cannot be read.',
  },
  'tls.cert': {
    required: true,
    unit: 'file',
    meaning: 'Certificate chain (PEM) to serve HTTPS; without a `tls` section the KMS serves plain HTTP.',
    recommendation: 'Confidentiality never depends on TLS (every message is sealed end to end); use it, or a reverse proxy, to hide metadata.',
  },
  'tls.key': {
    required: true,
    unit: 'file',
    meaning: 'The private key (PEM) of `tls.cert`.',
  },
  'cors.origins': {
    default: [],
    meaning: 'Browser origins (`https://app.a.example`: scheme, host and port, no path) allowed to call the KMS directly.',
    recommendation: 'Only the origins of your own applications; none when no browser talks to the KMS.',
  },
  'identity.issuer': {
    meaning: 'Expected `iss` of access tokens from your OAuth 2.0 / OpenID Connect provider.',
  },
  'identity.audience': {
    derived: '`kms://<authority>`',
    meaning: 'The audience access tokens must carry; required with an issuer, JWKS or introspection.',
    recommendation: 'An audience for the KMS only, so a token minted for another service is refused (draft 4.2).',
  },
  'identity.jwksUri': {
    unit: 'URL',
    meaning: "The provider's signing keys (JWKS) by URL. Give one of `jwksUri`, `jwksFile`, `discovery`.",
  },
  'identity.jwksFile': {
    unit: 'file',
    meaning: "The provider's signing keys (JWKS) from a file.",
  },
  'identity.discovery': {
    default: false,
    meaning: 'Find `jwks_uri` through `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery).',
  },
  'identity.introspection.endpoint': {
    required: true,
    unit: 'URL',
    meaning: 'RFC 7662 token introspection endpoint, for opaque (non-JWT) tokens.',
  },
  'identity.introspection.clientId': {
    required: true,
    meaning: 'The client id the KMS authenticates with at the introspection endpoint (HTTP Basic).',
  },
  'identity.introspection.clientSecret': {
    required: true,
    meaning: 'The client secret of `identity.introspection.clientId`.',
    recommendation: 'Keep kms.json owner-only when it holds this secret.',
  },
  'identity.userClaim': {
    default: 'sub',
    meaning: 'The token claim that holds the user id.',
    recommendation: '`email` when your provider\'s `sub` is not of the form `user@domain`.',
  },
  'identity.rolesClaim': {
    default: 'roles',
    meaning: 'The token claim that holds the roles (an array or a space-separated string): `kmsAdmin` and `orgAgent` open the CMK API.',
  },
  'identity.orgClaim': {
    derived: "the user's domain",
    meaning: 'The token claim that holds the organisation an `orgAgent` or `kmsAdmin` acts for.',
  },
  'identity.clockToleranceSeconds': {
    default: 30,
    unit: 'seconds',
    meaning: 'Clock skew allowed when checking a token\'s `exp` and `nbf`, 0 to 300.',
  },
  'identity.dev.enabled': {
    required: true,
    meaning: 'The built-in development token issuer (`kms token`): whoever reads its key file can act as any user.',
    recommendation: '`false` in production.',
  },
  'identity.dev.keyFile': {
    required: true,
    unit: 'file',
    meaning: "The development issuer's RSA private key (a JWK, or PKCS#8 PEM), written by `kms init`.",
  },
  'lifetimes.channel': {
    default: 3600,
    unit: 'seconds',
    meaning: 'How long an ECDHE channel (create `/ecdhe`) is usable before the client must make a new one.',
  },
  'lifetimes.unboundKey': {
    default: 3600,
    unit: 'seconds',
    meaning: 'How long a key created by create `/keys` stays bindable to a resource.',
  },
  'lifetimes.boundKey': {
    default: 365 * DAY,
    unit: 'seconds',
    meaning: 'A key bound to a resource expires this long after its bind.',
  },
  'lifetimes.unboundGrace': {
    default: DAY,
    unit: 'seconds',
    meaning: 'An expired unbound key stays readable by its creator this long, then the sweeper destroys it.',
  },
  'lifetimes.anonymousBearerMax': {
    default: 30 * DAY,
    unit: 'seconds',
    meaning: "Lifetime of an anonymous bearer on a resource without an expiry (otherwise the resource's expiry).",
  },
  'lifetimes.maxResourceTtl': {
    default: 0,
    unit: 'seconds',
    meaning: "The largest `ttl` a create `/resources` may ask for; 0: the protocol's bound (100 years).",
  },
  'audit.checkpoints.file': {
    default: 'audit.checkpoints',
    unit: 'file',
    meaning:
      'Where the KMS appends its signed audit checkpoints (the chain head `{seq, hash, time}`, a JWS by the static key, one a line) at least every `audit.checkpoints.intervalSeconds`, every 10,000 records it writes and when it stops; `kms audit verify` checks the newest. Kept outside the database: removing the newest audit records is detected even by whoever can rewrite the database.',
    recommendation: 'Owner-only, on another disk or shipped off the host with the log stream (each checkpoint is also logged at info): a checkpoint is worth what its file is out of an intruder\'s reach.',
  },
  'audit.checkpoints.intervalSeconds': {
    default: 60,
    unit: 'seconds',
    meaning: 'How often, at least, a checkpoint is signed and appended (1 to 3600).',
    recommendation: 'The default; shorter narrows what can be removed unnoticed between two checkpoints.',
  },
  'sweeper.intervalSeconds': {
    default: 60,
    unit: 'seconds',
    meaning: 'How often expired resources, keys and authorizations are destroyed.',
  },
  'limits.maxAuthorizationsPerResource': {
    default: 10_000,
    unit: 'authorizations',
    meaning: 'The most authorizations one resource holds; more is refused (413).',
  },
  'limits.requestsPerMinutePerPrincipal': {
    default: 1200,
    unit: 'requests per minute',
    meaning:
      'Requests one user or anonymous bearer may make per minute (a fixed one-minute window, counted by each KMS process) before getting 429; 0: no limit. Peer KMSs are not counted (they speak for all of their users, each counted at their own KMS).',
    recommendation:
      'The default, 20 a second sustained, is far above what an interactive client sends (a handshake an hour, a few keys per message) and stops one principal from flooding the KMS. Raise it for service principals that work in bulk (e.g. an `orgAgent`); N processes let a principal make up to N times as many.',
  },
  'limits.handshakesPerMinutePerAddress': {
    default: 600,
    unit: 'handshakes per minute',
    meaning:
      'Handshakes (create `/ecdhe`) one client address may make per minute (IPv6: per /64) before getting 429, counted before the credential is checked and by each KMS process; 0: no limit. The address is the connection\'s: behind a reverse proxy or load balancer every handshake comes from the proxy\'s.',
    recommendation:
      'The default lets a NAT of thousands of clients make their hourly handshakes and stops one host from making channels as fast as it can. Behind a proxy that does not keep the client address, set 0 and limit handshakes (`POST /kms/messages`, `/kms/ws`) per client at the proxy.',
  },
  'peers[].authority': {
    required: true,
    meaning: 'A peer KMS this one federates with (written by `kms peer add`): its authority.',
  },
  'peers[].domains': {
    required: true,
    meaning: "The user domains the peer serves; none of this KMS's or another peer's.",
  },
  'peers[].endpoint': {
    required: true,
    unit: 'URL',
    meaning: "The peer's base URL (where its `/.well-known/kms` is).",
  },
  'peers[].trustAnchors': {
    required: true,
    meaning: "The CA certificates (PEM) the peer's static certificate must chain to.",
  },
  'federation.maxStaleness': {
    default: 30,
    unit: 'seconds',
    meaning: "How long a copy of a peer's resource answers users before it is fetched again: the bound on a revocation at the peer reaching here when its push is lost (`kms serve --federation-max-staleness`).",
    recommendation: 'Lower it to bound revocation delay further, at the cost of more requests to peers.',
  },
  'federation.peerTimeout': {
    default: 5,
    unit: 'seconds',
    meaning: 'How long a user\'s federated request waits for a peer (discovery, channel, answer) before a 504.',
  },
  'log.level': {
    default: 'info',
    meaning: `Least severe log level written (JSON lines on stdout): ${LOG_LEVELS.map((l) => `\`${l}\``).join(', ')} (\`kms serve --log-level\`, \`KMS_LOG_LEVEL\`).`,
  },
} as const satisfies Record<string, ConfigOption>;

export type OptionPath = keyof typeof OPTIONS;

/** The default of an option that has one; arrays are copied, so no parsed config shares one. */
export function defaultOf<P extends { [K in OptionPath]: (typeof OPTIONS)[K] extends { default: unknown } ? K : never }[OptionPath]>(
  path: P,
): (typeof OPTIONS)[P] extends { default: infer D } ? (D extends readonly string[] ? string[] : D) : never {
  const value = (OPTIONS[path] as ConfigOption).default;
  return (Array.isArray(value) ? [...value] : value) as never;
}
