export * from './errors.js';
export * from './dates.js';
export * from './uri.js';
export * from './codec.js';
export * from './ecdhe.js';
export * from './messages.js';
export * from './schemas.js';
export * from './certs.js';
