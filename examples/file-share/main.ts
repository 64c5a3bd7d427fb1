// `npm run example:file-share`: draft §3.1 end to end, step by step on stdout.
import { run } from './file-share.js';

run().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
