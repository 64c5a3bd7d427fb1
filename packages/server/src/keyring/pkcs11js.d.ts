// pkcs11js is an optional dependency: the server must compile where it is not installed, so its
// import is untyped here and pkcs11.ts declares the few calls it makes.
declare module 'pkcs11js';
