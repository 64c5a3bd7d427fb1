/**
 * Files a command writes that hold what only their owner may read (audit records, a discovery
 * export): written beside the target under a temporary name, owner-only from the first byte,
 * fsynced, then renamed over the target, so a reader never sees half a file.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ConfigError } from '../config.js';

export async function writeOwnerOnly<T>(target: string, fill: (write: (text: string) => void) => Promise<T>): Promise<T> {
  if (!existsSync(dirname(target))) throw new ConfigError(`no folder ${dirname(target)} for ${basename(target)}`);
  const temp = join(dirname(target), `.${basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(temp, 'wx', 0o600);
  let result: T;
  try {
    result = await fill((text) => writeSync(fd, text));
    fsyncSync(fd);
    closeSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(temp, { force: true });
    throw err;
  }
  renameSync(temp, target);
  return result;
}
