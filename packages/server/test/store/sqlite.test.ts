import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../src/store/sqlite.js';
import { storeContract } from './contract.js';

// One file for the suite: every open() is another instance on it, as another process would be.
const file = join(mkdtempSync(join(tmpdir(), 'kms-store-')), 'kms.db');
storeContract('sqlite', async () => new SqliteStore(file));
