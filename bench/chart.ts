/**
 * The benchmark's chart: one horizontal bar per measurement, its length the ratio to the crypto
 * limit (messages per server CPU-second ÷ the limit), with the 50 % and 80 % targets drawn as lines.
 * Plain SVG text, no dependency: it opens in any browser and diffs as text.
 */
import type { Result } from './bench.js';

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function chart(results: readonly Result[], { title }: { title: string }): string {
  const rowH = 16;
  const labelW = 430;
  const barW = 520;
  const top = 40;
  const height = top + results.length * rowH + 30;
  const max = Math.max(1, ...results.map((r) => r.ratioToLimit));
  const x = (ratio: number) => labelW + (barW * ratio) / max;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${labelW + barW + 90}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<text x="8" y="18" font-size="13" font-weight="bold">${esc(title)}</text>`,
  ];
  for (const [ratio, label] of [[0.5, '50 %'], [0.8, '80 %'], [1, 'limit']] as const) {
    out.push(`<line x1="${x(ratio)}" y1="${top - 8}" x2="${x(ratio)}" y2="${height - 24}" stroke="#999" stroke-dasharray="3,3"/>`);
    out.push(`<text x="${x(ratio) - 12}" y="${top - 12}" fill="#666">${label}</text>`);
  }
  results.forEach((r, i) => {
    const y = top + i * rowH;
    const label = `${r.name} · ${r.backend} · ${r.transport} · c=${r.concurrency}${r.workers > 1 ? ` · ${r.workers} workers` : ''}`;
    const colour = r.backend === 'pykmip' ? '#c77' : r.transport === 'http' ? '#4a7ab5' : '#5a9e6f';
    out.push(`<text x="${labelW - 6}" y="${y + 11}" text-anchor="end">${esc(label)}</text>`);
    out.push(`<rect x="${labelW}" y="${y + 2}" width="${Math.max(1, x(r.ratioToLimit) - labelW)}" height="${rowH - 4}" fill="${colour}"/>`);
    out.push(`<text x="${x(r.ratioToLimit) + 4}" y="${y + 11}">${(r.ratioToLimit * 100).toFixed(1)} %</text>`);
  });
  out.push(`<text x="8" y="${height - 8}" fill="#666">blue: HTTP batch · green: WebSocket · red: PyKMIP (per its server CPU-second, against the same common-message limit)</text>`);
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
