/**
 * A reader for the Prometheus text exposition format (version 0.0.4), as prom-client writes it:
 * `# HELP` / `# TYPE` comments and sample lines `name{label="value",...} value [timestamp]`.
 * Only samples are kept. Label values may hold the escapes `\\`, `\"` and `\n`; values may be
 * `NaN`, `+Inf` or `-Inf`. A line that does not parse is skipped and counted, never thrown.
 */

export interface Sample {
  name: string;
  labels: Readonly<Record<string, string>>;
  value: number;
}

export interface ParsedMetrics {
  samples: Sample[];
  /** Lines that were neither comments, blank, nor samples. */
  skipped: number;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;

function parseValue(text: string): number | undefined {
  if (text === 'NaN') return Number.NaN;
  if (text === '+Inf' || text === 'Inf') return Number.POSITIVE_INFINITY;
  if (text === '-Inf') return Number.NEGATIVE_INFINITY;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) return undefined;
  return Number(text);
}

/** Labels from just after `{` up to its `}`; the rest of the line after `}`, or undefined when malformed. */
function parseLabels(line: string, start: number): { labels: Record<string, string>; end: number } | undefined {
  const labels: Record<string, string> = {};
  let at = start;
  for (;;) {
    while (line[at] === ' ') at += 1;
    if (line[at] === '}') return { labels, end: at + 1 };
    const name = LABEL_NAME.exec(line.slice(at))?.[0];
    if (name === undefined) return undefined;
    at += name.length;
    if (line[at] !== '=' || line[at + 1] !== '"') return undefined;
    at += 2;
    let value = '';
    for (;;) {
      const char = line[at];
      if (char === undefined) return undefined;
      if (char === '"') break;
      if (char === '\\') {
        const next = line[at + 1];
        if (next === 'n') value += '\n';
        else if (next === '\\' || next === '"') value += next;
        else return undefined;
        at += 2;
        continue;
      }
      value += char;
      at += 1;
    }
    labels[name] = value;
    at += 1;
    while (line[at] === ' ') at += 1;
    if (line[at] === ',') at += 1;
    else if (line[at] !== '}') return undefined;
  }
}

export function parsePrometheusText(text: string): ParsedMetrics {
  const samples: Sample[] = [];
  let skipped = 0;
  for (const rawLine of text.split('\n')) {
    const line = rawLine.trim();
    if (line === '' || line.startsWith('#')) continue;
    const name = NAME.exec(line)?.[0];
    if (name === undefined) {
      skipped += 1;
      continue;
    }
    let labels: Record<string, string> = {};
    let rest = line.slice(name.length);
    if (rest.startsWith('{')) {
      const parsed = parseLabels(line, name.length + 1);
      if (parsed === undefined) {
        skipped += 1;
        continue;
      }
      labels = parsed.labels;
      rest = line.slice(parsed.end);
    }
    const value = parseValue(rest.trim().split(/\s+/)[0] ?? '');
    if (value === undefined) {
      skipped += 1;
      continue;
    }
    samples.push({ name, labels, value });
  }
  return { samples, skipped };
}

/** The sum of every sample named `name` whose labels include `match`. */
export function sumOf(samples: readonly Sample[], name: string, match: Readonly<Record<string, string>> = {}): number {
  let total = 0;
  for (const sample of samples) {
    if (sample.name !== name || Number.isNaN(sample.value)) continue;
    if (Object.entries(match).every(([label, value]) => sample.labels[label] === value)) total += sample.value;
  }
  return total;
}

/** Sums of the samples named `name`, grouped by the value of `label`. */
export function sumBy(samples: readonly Sample[], name: string, label: string): Map<string, number> {
  const groups = new Map<string, number>();
  for (const sample of samples) {
    if (sample.name !== name || Number.isNaN(sample.value)) continue;
    const key = sample.labels[label] ?? '';
    groups.set(key, (groups.get(key) ?? 0) + sample.value);
  }
  return groups;
}
