// The demo's public parts (re-exported by the package index): the file-sharing service and runDemo.
export { startFileService, type FileService, type StoredFile } from './file-service.js';
export { runDemo, type DemoOptions, type DemoResult } from './demo.js';
