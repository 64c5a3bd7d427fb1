/**
 * The README's configuration reference, rendered from options.ts: one table row per option.
 * `node scripts/config-reference.mjs` prints it, `--write` puts it into README.md between the
 * markers below; test/config.test.ts fails when the README holds anything else there.
 */
import { OPTIONS, type ConfigOption } from './options.js';

export const REFERENCE_BEGIN = '<!-- configuration reference: generated from packages/server/src/config/options.ts by `node scripts/config-reference.mjs --write`; do not edit -->';
export const REFERENCE_END = '<!-- end of the configuration reference -->';

const cell = (text: string) => text.replace(/\|/g, '\\|');

/** `31536000` reads better with "365 d" beside it. */
function duration(seconds: number): string | undefined {
  for (const [unit, size] of [['d', 86_400], ['h', 3600], ['min', 60]] as const) {
    if (seconds >= size && seconds % size === 0) return `${seconds / size} ${unit}`;
  }
  return undefined;
}

function defaultCell(option: ConfigOption): string {
  if (option.required) return 'required';
  if (option.derived !== undefined) return option.derived;
  if (option.default === undefined) return '—';
  const shown = `\`${JSON.stringify(option.default)}\``;
  const human = option.unit === 'seconds' && typeof option.default === 'number' ? duration(option.default) : undefined;
  return human ? `${shown} (${human})` : shown;
}

/** The rows of the table, keyed by option path, in the order of options.ts. */
export function referenceRows(): Map<string, string> {
  const rows = new Map<string, string>();
  for (const [path, option] of Object.entries(OPTIONS) as [string, ConfigOption][]) {
    rows.set(path, `| \`${path}\` | ${cell(defaultCell(option))} | ${cell(option.unit ?? '')} | ${cell(option.meaning)} | ${cell(option.recommendation ?? '')} |`);
  }
  return rows;
}

/** The whole block, markers included. */
export function configReference(): string {
  return [
    REFERENCE_BEGIN,
    '',
    '| option | default | unit | meaning | recommendation |',
    '|---|---|---|---|---|',
    ...referenceRows().values(),
    '',
    REFERENCE_END,
  ].join('\n');
}

/** The block as it stands in `readme`, or undefined when the markers are missing. */
export function referenceIn(readme: string): string | undefined {
  const begin = readme.indexOf(REFERENCE_BEGIN);
  const end = readme.indexOf(REFERENCE_END, begin);
  return begin < 0 || end < 0 ? undefined : readme.slice(begin, end + REFERENCE_END.length);
}

/** `readme` with its block replaced by the one generated now. */
export function withReference(readme: string): string {
  const current = referenceIn(readme);
  if (current === undefined) throw new Error(`README.md has no configuration reference markers (${REFERENCE_BEGIN} … ${REFERENCE_END})`);
  return readme.replace(current, () => configReference());
}
