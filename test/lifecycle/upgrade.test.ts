/**
 * Upgrades roll forward (README, "Rolling upgrades"): a kms started on a database that a newer kms
 * has migrated refuses to serve it, with one line naming both schema versions, rather than writing
 * rows the newer nodes would read wrong. The database is left as it was.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { oneClearLine, runKms, serve } from '../support/cli.js';
import { onEachBackend, type Backend } from '../support/nodes.js';

const TEST = { timeout: 120_000 };

await onEachBackend('a database of a newer kms', (backend: Backend) => {
  describe(`a ${backend.name} database migrated by a newer kms`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'kms-upgrade-'));
    const config = join(dir, 'kms.json');
    after(() => rmSync(dir, { recursive: true, force: true }));

    test('is refused at start with one line naming both versions, and left as it was', TEST, async () => {
      assert.equal(runKms(['init', '--dir', dir, '--authority', 'kms.upgrade.example', '--domain', 'upgrade.example']).code, 0);
      // This kms migrates the database, then a "newer" one records a migration it does not know.
      const first = await serve(['--config', config, '--port', '0', ...backend.dbArgs]);
      assert.equal(await first.stop(), 0);
      const known = Number((await backend.sql<{ v: number }>(dir, 'SELECT MAX(version) AS v FROM schema_migrations'))[0]!.v);
      const newer = known + 1;
      await backend.sql(dir, 'INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [newer, 'from a newer kms', Date.now()]);

      const refused = runKms(['serve', '--config', config, '--port', '0', ...backend.dbArgs]);
      assert.equal(refused.code, 1, refused.stderr);
      oneClearLine(refused.stderr);
      assert.match(refused.stderr, new RegExp(`schema is at version ${newer}, newer than this kms knows \\(${known}\\)`));
      const versions = await backend.sql<{ version: number }>(dir, 'SELECT version FROM schema_migrations ORDER BY version');
      assert.equal(Number(versions.at(-1)!.version), newer, 'the newer migration is still recorded');
    });
  });
});
