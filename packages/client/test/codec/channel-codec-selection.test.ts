/**
 * Which channel codec a runtime gets (package.json "imports" `#channel-codec`, see
 * src/codec/channel-codec.ts): Node loads the node:crypto variant; a bundle for browsers holds the
 * web variant and nothing that imports `node:` (esbuild refuses to bundle a `node:` import for the
 * browser platform), and a bundle for Node the node variant. test/browser.test.ts runs such a
 * browser bundle in Chromium against a real KMS.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { build, type Platform } from 'esbuild';
import { channelCodec } from '#channel-codec';
import { channelCodec as nodeCodec } from '../../src/codec/channel-node.js';

/** The compiled SDK entry, as an application imports it. */
const entry = fileURLToPath(new URL('../../src/index.js', import.meta.url));

async function bundledCodecs(platform: Platform): Promise<string[]> {
  const { metafile } = await build({ entryPoints: [entry], bundle: true, platform, format: 'esm', write: false, metafile: true, logLevel: 'silent', packages: platform === 'node' ? 'external' : undefined });
  return Object.keys(metafile.inputs).filter((path) => path.includes('/codec/channel-')).map((path) => path.slice(path.lastIndexOf('/') + 1)).sort();
}

test('Node loads the node:crypto variant', () => {
  assert.equal(channelCodec, nodeCodec);
});

test('a bundle for browsers holds the web variant, one for Node the node variant', async () => {
  assert.deepEqual(await bundledCodecs('browser'), ['channel-web.js']);
  assert.deepEqual(await bundledCodecs('node'), ['channel-node.js']);
});
