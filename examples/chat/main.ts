// `npm run example:chat`: draft §3.2 end to end, step by step on stdout.
import { run } from './chat.js';

run().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
