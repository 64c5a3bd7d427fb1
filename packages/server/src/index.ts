/**
 * @openkms/server: the KMS as a library. Start one from its configuration (what `kms serve`
 * does), write a KMS folder (what `kms init` does), make a CA for a test of federation. The names
 * listed are the ones the examples, the benchmark and the tests use, and the types of their
 * options and results; a development KMS for tests is `startDevKms` of `@openkms/server/testing`.
 */
export { Kms } from './core/kms.js';
export type { Logger } from './logger.js';
export { startKms, assembleKms, devIssuerOf, type KmsOptions, type StartOptions, type RunningKms } from './server.js';
export { loadConfig, parseConfig, configPath, ConfigError, type KmsConfig } from './config.js';
export type { Store } from './store/store.js';
export { initKmsDir, type InitOptions } from './cli/init.js';
export { createCa, type CaMaterial } from './identity/certificates.js';
export { localRootKey, type RootKey } from './keyring/keyring.js';
export { openPkcs11RootKey, type Pkcs11Options } from './keyring/pkcs11.js';
