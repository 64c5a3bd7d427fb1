/**
 * Which codec a runtime gets (package.json "imports" `#codec`, see src/codec/client-codec.ts):
 * Node loads the node:crypto variant; a bundle for browsers holds the
 * web variant and nothing that imports `node:` (esbuild refuses to bundle a `node:` import for the
 * browser platform), and a bundle for Node the node variant. test/browser.test.ts runs such a
 * browser bundle in Chromium against a real KMS.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { build, type Platform } from 'esbuild';
import { clientCodec } from '#codec';
import { clientCodec as nodeCodec } from '../../src/codec/node.js';

/** The compiled SDK entry, as an application imports it. */
const entry = fileURLToPath(new URL('../../src/index.js', import.meta.url));

async function bundledCodecs(platform: Platform): Promise<string[]> {
  const { metafile } = await build({ entryPoints: [entry], bundle: true, platform, format: 'esm', write: false, metafile: true, logLevel: 'silent', packages: platform === 'node' ? 'external' : undefined });
  // Input paths are relative to the working directory; the SDK's codec files are named by their tail.
  return Object.keys(metafile.inputs).flatMap((path) => /(?:^|\/)dist\/src\/codec\/([^/]+)$/.exec(path)?.[1] ?? []).sort();
}

test('Node loads the node:crypto variant', () => {
  assert.equal(clientCodec, nodeCodec);
});

test('a bundle for browsers holds the web variant, one for Node the node variant', async () => {
  assert.deepEqual(await bundledCodecs('browser'), ['web.js']);
  assert.deepEqual(await bundledCodecs('node'), ['node.js']);
});
