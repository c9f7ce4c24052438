import { html } from 'hono/html';
import type { VersionPoint } from './data.ts';
import { formatMs } from '../cli/format.ts';

const WIDTH = 720;
const HEIGHT = 300;
/** The plotting area; the legend sits in the right margin, version labels below. */
const PLOT = { left: 56, right: 600, top: 16, bottom: 256 };
const COLORS = ['#2563eb', '#d97706', '#059669', '#db2777', '#7c3aed', '#0891b2'];
const STATS = ['p50', 'p99'] as const;

/**
 * Benchmark latency across registered versions as an inline SVG: one series per batch size and
 * statistic (p50 solid with its confidence interval as a bar, p99 dashed where the sample count gave
 * one), one point per version. The y axis is logarithmic: batch 32 takes some twenty times batch 1,
 * and a linear axis would flatten batch 1 to a line.
 */
export function latencyChart(versions: readonly VersionPoint[]) {
  if (versions.length === 0) return html`<p class="empty">No registered version yet: the chart appears with the first one.</p>`;
  const batches = [...new Set(versions.flatMap((v) => v.perBatch.map((s) => s.batch)))].sort((a, b) => a - b);
  const ticks = logTicks(versions.flatMap((v) => v.perBatch.flatMap((s) => [...s.p50Interval, s.p50, ...(s.p99 === undefined ? [] : [s.p99])])));
  const [low, high] = [Math.log10(ticks[0]!), Math.log10(ticks.at(-1)!)];
  const y = (ms: number) => PLOT.bottom - ((Math.log10(Math.max(ms, ticks[0]!)) - low) / (high - low)) * (PLOT.bottom - PLOT.top);
  const inset = 24;
  const x = (i: number) => (versions.length === 1 ? (PLOT.left + PLOT.right) / 2 : PLOT.left + inset + (i * (PLOT.right - PLOT.left - 2 * inset)) / (versions.length - 1));
  const names = new Set(versions.map((v) => v.name));
  const label = (v: VersionPoint) => (names.size > 1 ? `${v.name} v${v.version}` : `v${v.version}`);

  const series = batches.flatMap((batch, b) =>
    STATS.map((stat) => {
      const color = COLORS[b % COLORS.length]!;
      const points = versions.flatMap((v, i) => {
        const s = v.perBatch.find((p) => p.batch === batch);
        const ms = s?.[stat];
        return s && ms !== undefined ? [{ v, s, cx: x(i).toFixed(1), cy: y(ms).toFixed(1), ms }] : [];
      });
      if (points.length === 0) return '';
      const line = points.map((p) => `${p.cx},${p.cy}`).join(' ');
      return html`<g class="series" data-batch="${batch}" data-stat="${stat}">
        <polyline points="${line}" fill="none" stroke="${color}" stroke-width="2" ${stat === 'p99' ? html`stroke-dasharray="5 4"` : ''} />
        ${points.map((p) => {
          const interval = stat === 'p50' ? ` (95% interval ${formatMs(p.s.p50Interval[0])} to ${formatMs(p.s.p50Interval[1])})` : '';
          return html`${stat === 'p50' ? html`<line class="interval" data-version="${p.v.version}" data-batch="${batch}" x1="${p.cx}" x2="${p.cx}" y1="${y(p.s.p50Interval[0]).toFixed(1)}" y2="${y(p.s.p50Interval[1]).toFixed(1)}" stroke="${color}" stroke-width="6" stroke-opacity="0.35" />` : ''}
            <circle class="point" data-version="${p.v.version}" data-batch="${batch}" data-stat="${stat}" cx="${p.cx}" cy="${p.cy}" r="4" fill="${stat === 'p50' ? color : '#fff'}" stroke="${color}" stroke-width="2"><title>${label(p.v)} (run ${p.v.runId}): batch ${batch} ${stat} ${formatMs(p.ms)}${interval}, n = ${p.s.n}</title></circle>`;
        })}
      </g>`;
    }),
  );

  return html`<svg class="chart" viewBox="0 0 ${WIDTH} ${HEIGHT}" width="${WIDTH}" height="${HEIGHT}" role="img" aria-labelledby="chart-title">
    <title id="chart-title">Benchmark latency (ms, log scale) of ${versions.length} registered version${versions.length === 1 ? '' : 's'}</title>
    ${ticks.map((t) => html`<line class="grid" x1="${PLOT.left}" x2="${PLOT.right}" y1="${y(t).toFixed(1)}" y2="${y(t).toFixed(1)}" /><text class="tick" x="${PLOT.left - 6}" y="${(y(t) + 4).toFixed(1)}" text-anchor="end">${t}</text>`)}
    <text class="axis" transform="translate(14 ${(PLOT.top + PLOT.bottom) / 2}) rotate(-90)" text-anchor="middle">latency (ms)</text>
    ${versions.map((v, i) => html`<text class="version" x="${x(i).toFixed(1)}" y="${PLOT.bottom + 20}" text-anchor="middle">${label(v)}</text>`)}
    ${series}
    <g class="legend">
      ${batches.map((batch, b) => html`<line x1="616" x2="640" y1="${28 + b * 20}" y2="${28 + b * 20}" stroke="${COLORS[b % COLORS.length]}" stroke-width="3" /><text x="646" y="${32 + b * 20}">batch ${batch}</text>`)}
      <line x1="616" x2="640" y1="${48 + batches.length * 20}" y2="${48 + batches.length * 20}" stroke="#475569" stroke-width="2" /><text x="646" y="${52 + batches.length * 20}">p50, 95% CI</text>
      <line x1="616" x2="640" y1="${68 + batches.length * 20}" y2="${68 + batches.length * 20}" stroke="#475569" stroke-width="2" stroke-dasharray="5 4" /><text x="646" y="${72 + batches.length * 20}">p99</text>
    </g>
  </svg>`;
}

/** Ticks at 1, 2 and 5 times powers of ten spanning the values (powers of ten only when that is too many). */
export function logTicks(values: readonly number[]): number[] {
  const finite = values.filter((v) => Number.isFinite(v) && v > 0);
  // Without a positive finite value there is no range (and the loop below would not end).
  if (finite.length === 0) return [];
  values = finite;
  const low = Math.max(Math.min(...values), 1e-3);
  const high = Math.max(...values, low);
  const steps: Array<{ value: number; decade: boolean }> = [];
  for (let k = Math.floor(Math.log10(low)) - 1; k <= Math.ceil(Math.log10(high)) + 1; k++) {
    // toPrecision: 2 * 10 ** -2 is 0.020000000000000004 in floating point.
    for (const m of [1, 2, 5]) steps.push({ value: Number((m * 10 ** k).toPrecision(1)), decade: m === 1 });
  }
  const first = steps.findLastIndex((s) => s.value <= low);
  const last = Math.max(steps.findIndex((s) => s.value >= high), first + 1);
  const span = steps.slice(first, last + 1);
  return (span.length > 8 ? span.filter((s, i) => s.decade || i === 0 || i === span.length - 1) : span).map((s) => s.value);
}

