export * from './kms.js';
export * from './server.js';
export * from './config.js';
export type { Principal } from './identity/principal.js';
export type { Store } from './store/store.js';
export { initKmsDir, type InitOptions } from './cli/init.js';
export { createCa, issueKmsCertificate, generateStaticKeyPem, loadStaticIdentity } from './identity/certificates.js';
