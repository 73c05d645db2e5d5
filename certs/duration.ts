/** Durations as operators type them: `90s`, `15m`, `1h`, `30d`, `1y`, or plain milliseconds. */
import { TetherError } from '../common/errors.js';

const UNIT_MS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  y: 365 * 86_400_000,
};

export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|y)?$/.exec(text.trim());
  const unit = UNIT_MS[match?.[2] ?? 'ms'];
  if (match === null || unit === undefined) {
    throw new TetherError('INVALID_DURATION', `${JSON.stringify(text)} is not a duration (e.g. 90s, 15m, 1h, 30d, 1y)`);
  }
  const ms = Number(match[1]) * unit;
  if (!(ms > 0) || !Number.isFinite(ms)) throw new TetherError('INVALID_DURATION', `${JSON.stringify(text)} must be positive`);
  return Math.round(ms);
}

export function formatDuration(ms: number): string {
  const abs = Math.abs(ms);
  if (abs >= 2 * 86_400_000) return `${Math.round(ms / 86_400_000)}d`;
  if (abs >= 2 * 3_600_000) return `${Math.round(ms / 3_600_000)}h`;
  if (abs >= 2 * 60_000) return `${Math.round(ms / 60_000)}m`;
  return `${Math.round(ms / 1000)}s`;
}
