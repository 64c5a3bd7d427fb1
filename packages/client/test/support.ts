/** Assertions shared by the SDK's offline tests. */
import assert from 'node:assert/strict';
import { ErrorCodes, KmsError, type ErrorCode } from '@openkms/protocol';

/** Awaits the rejection of `promise` and checks it is a KmsError with `code` (and its status). */
export async function refusal(promise: Promise<unknown> | (() => unknown), code: ErrorCode, reason?: RegExp): Promise<KmsError> {
  let caught: unknown;
  await assert.rejects(
    async () => (typeof promise === 'function' ? promise() : promise),
    (err: unknown) => {
      caught = err;
      return true;
    },
  );
  assert.ok(caught instanceof KmsError, `expected a KmsError, got ${String(caught)}`);
  assert.equal(caught.code, code, `code of: ${caught.message}`);
  assert.equal(caught.status, ErrorCodes[code].status);
  if (reason) assert.match(caught.reason, reason);
  return caught;
}


