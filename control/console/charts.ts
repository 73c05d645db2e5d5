/**
 * Two small charts as inline SVG, drawn on the server (no script, no library): a line per gateway
 * replica of requests per second over the last hour, and stacked bars of runs created in the last
 * hour per 5-minute slot, coloured by the phase they are in now. Colours come from the console's
 * stylesheet (classes), so the CSP needs no inline styles.
 */
import { html } from './html.js';
import type { SafeHtml } from './html.js';
import { HOUR_MS } from './gateway-metrics.js';

const WIDTH = 640;
const HEIGHT = 140;
const PAD_LEFT = 48;
const PAD_BOTTOM = 18;
const PAD_TOP = 8;

function niceMax(value: number): number {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function formatNumber(value: number): string {
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

function frame(max: number, unit: string, body: SafeHtml, label: string): SafeHtml {
  const plotHeight = HEIGHT - PAD_BOTTOM - PAD_TOP;
  return html`<svg class="chart" viewBox="0 0 ${WIDTH} ${HEIGHT}" width="${WIDTH}" height="${HEIGHT}" role="img" aria-label="${label}">
<line class="axis" x1="${PAD_LEFT}" y1="${PAD_TOP}" x2="${PAD_LEFT}" y2="${PAD_TOP + plotHeight}"></line>
<line class="axis" x1="${PAD_LEFT}" y1="${PAD_TOP + plotHeight}" x2="${WIDTH}" y2="${PAD_TOP + plotHeight}"></line>
<line class="grid" x1="${PAD_LEFT}" y1="${PAD_TOP + plotHeight / 2}" x2="${WIDTH}" y2="${PAD_TOP + plotHeight / 2}"></line>
<text class="tick" x="${PAD_LEFT - 4}" y="${PAD_TOP + 8}" text-anchor="end">${formatNumber(max)}</text>
<text class="tick" x="${PAD_LEFT - 4}" y="${PAD_TOP + plotHeight}" text-anchor="end">0</text>
<text class="tick" x="${PAD_LEFT}" y="${HEIGHT - 4}">−60 min</text>
<text class="tick" x="${WIDTH}" y="${HEIGHT - 4}" text-anchor="end">now (${unit})</text>
${body}
</svg>`;
}

export interface RateSeries {
  name: string;
  points: ReadonlyArray<{ at: number; perSecond: number }>;
}

/** Requests per second per replica, the last hour. */
export function rateChart(series: readonly RateSeries[], now: number): SafeHtml {
  const start = now - HOUR_MS;
  const max = niceMax(Math.max(0, ...series.flatMap((item) => item.points.map((point) => point.perSecond))));
  const plotWidth = WIDTH - PAD_LEFT;
  const plotHeight = HEIGHT - PAD_BOTTOM - PAD_TOP;
  const x = (at: number): number => PAD_LEFT + (Math.max(0, at - start) / HOUR_MS) * plotWidth;
  const y = (value: number): number => PAD_TOP + plotHeight - (value / max) * plotHeight;
  const lines = series.map((item, index) => {
    const points = item.points.filter((point) => point.at >= start).map((point) => `${x(point.at).toFixed(1)},${y(point.perSecond).toFixed(1)}`);
    if (points.length === 0) return html``;
    return html`<polyline class="series series-${index % 6}" points="${points.join(' ')}"><title>${item.name}</title></polyline>`;
  });
  return frame(max, 'requests/s', html`${lines}`, 'gateway requests per second over the last hour');
}

export interface PhaseBucket {
  /** Start of the slot. */
  at: number;
  counts: ReadonlyMap<string, number>;
}

export const CHART_PHASES = ['QUEUED', 'INITIALIZING', 'RUNNING', 'ABORTING', 'SUCCEEDED', 'FAILED', 'ABORTED', 'TIMED_OUT'] as const;

/** Runs created per 5-minute slot of the last hour, stacked by current phase. */
export function phaseChart(buckets: readonly PhaseBucket[]): SafeHtml {
  const totals = buckets.map((bucket) => [...bucket.counts.values()].reduce((sum, count) => sum + count, 0));
  const max = niceMax(Math.max(0, ...totals));
  const plotWidth = WIDTH - PAD_LEFT;
  const plotHeight = HEIGHT - PAD_BOTTOM - PAD_TOP;
  const slot = plotWidth / Math.max(1, buckets.length);
  const bars = buckets.map((bucket, index) => {
    let base = PAD_TOP + plotHeight;
    const parts = CHART_PHASES.map((phase) => {
      const count = bucket.counts.get(phase) ?? 0;
      if (count === 0) return html``;
      const height = (count / max) * plotHeight;
      base -= height;
      return html`<rect class="bar phase-${phase}" x="${(PAD_LEFT + index * slot + 2).toFixed(1)}" y="${base.toFixed(1)}" width="${(slot - 4).toFixed(1)}" height="${height.toFixed(1)}"><title>${phase}: ${count}</title></rect>`;
    });
    return html`${parts}`;
  });
  return frame(max, 'runs per 5 min', html`${bars}`, 'runs created per 5 minutes over the last hour, by phase');
}
