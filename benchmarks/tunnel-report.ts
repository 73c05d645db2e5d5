/**
 * The tunnel benchmark's report: a markdown table of every figure per path, and the check of issue
 * 9's targets, all computed from the same run:
 *
 * - the connection-bound path (`tether-bound`) against the better of the two `ssh -R` variants
 *   (`ssh`, `ssh-N`) for each measure on its own: requests/s at 64 connections ≥ 1.0×, p99 at 64
 *   connections ≤ 1.0×, p50 at one connection ≤ 1.5×, h2load requests/s ≥ 1.0×, 256 MiB
 *   download MB/s ≥ 1.0×; and its relay CPU per request at 64 connections ≤ 40 µs (absolute);
 * - the per-request path (`tether-request`) against the minimal Node relay: requests/s at 64
 *   connections ≥ 1.0×, p99 at 64 connections ≤ 1.5×;
 * - RSS per idle WebSocket through gateway + agent, settled, ≤ 20 KiB on each tether path measured
 *   (the reading 2 s after opening is reported beside it, not checked).
 *
 * A target whose figures are missing (path or load not run, tool missing) is `met: null` ("n/a"),
 * never met.
 */
export const DOWNLOAD_BYTES_TOTAL = 256 * 1024 * 1024;
export const WEBSOCKET_KIB_TARGET = 20;
export const RELAY_CPU_US_TARGET = 40;

/**
 * `tether-bound`: gateway `binding: 'connection'`; `tether-request`: `binding: 'request'`;
 * `minimal`: the plainest Node program carrying requests in the per-request shape
 * (tunnel-minimal-relay.ts); `ssh`: `ssh -R` holding `cat` open (TCP_NODELAY on both ends);
 * `ssh-N`: `ssh -N -R` (Nagle on at sshd).
 */
export const PATH_NAMES = ['direct', 'tether-bound', 'tether-request', 'minimal', 'ssh', 'ssh-N'] as const;
export type PathName = (typeof PATH_NAMES)[number];
export type TetherPath = 'tether-bound' | 'tether-request';
export const TETHER_PATHS: readonly TetherPath[] = ['tether-bound', 'tether-request'];
const SSH_PATHS: readonly PathName[] = ['ssh', 'ssh-N'];

export const PATH_LABELS: Record<PathName, string> = {
  direct: 'direct',
  'tether-bound': 'tether, connection-bound',
  'tether-request': 'tether, per request',
  minimal: 'minimal Node relay',
  ssh: 'ssh -R (cat held)',
  'ssh-N': 'ssh -N -R',
};

/** Load name → path → that measurement's fields. */
export type Rows = Record<string, Partial<Record<PathName, object>>>;
/** Idle-WebSocket memory per path it was measured on (tunnel.ts `idleWebSockets`, median run). */
export type WebSocketRows = Partial<Record<TetherPath | 'minimal', Record<string, unknown>>>;

export interface TargetCheck {
  id: string;
  name: string;
  /** The path the target is about. */
  path: PathName;
  measured: number | null;
  /** What it is held against: a path of the same run (for `best-ssh`, the better ssh variant on this measure), or a fixed limit. */
  reference: { kind: 'path' | 'limit'; path: PathName | null; value: number | null };
  /** Both ssh variants' figures, for the targets against the better one. */
  candidates?: Partial<Record<PathName, number | null>>;
  better: 'higher' | 'lower';
  /** measured ÷ reference value. */
  ratio: number | null;
  /** The ratio must be ≥ (higher) or ≤ (lower) this. */
  required: number;
  met: boolean | null;
  /** Where missed: by how much, e.g. `82% short`, `3.1× over`. */
  missedBy: string | null;
  /** Why there is no verdict although both figures exist (failed requests in a measurement). */
  noVerdict?: string;
  /** Extra figures reported with the target (the idle WebSocket reading 2 s after opening). */
  extra?: Record<string, number | null>;
  note?: string;
}

interface Line {
  label: string;
  load: string;
  field: string;
  digits: number;
  /** Footnote markers after the label. */
  marks?: string;
}

const H2_MARK = '¹';
const CPU_MARK = '²';

const LINES: Line[] = [
  { label: 'wrk 64 conns: requests/s', load: 'wrk64', field: 'requestsPerSec', digits: 0 },
  { label: 'wrk 64 conns: p50 ms', load: 'wrk64', field: 'p50Ms', digits: 2 },
  { label: 'wrk 64 conns: p99 ms', load: 'wrk64', field: 'p99Ms', digits: 2 },
  { label: 'wrk 1 conn: requests/s', load: 'wrk1', field: 'requestsPerSec', digits: 0 },
  { label: 'wrk 1 conn: p50 ms', load: 'wrk1', field: 'p50Ms', digits: 3 },
  { label: 'wrk 1 conn: p99 ms', load: 'wrk1', field: 'p99Ms', digits: 3 },
  { label: 'h2load 64×10 (h2c): requests/s', load: 'h2load', field: 'requestsPerSec', digits: 0, marks: H2_MARK },
  { label: '256 MiB download: MB/s', load: 'download', field: 'megabytesPerSec', digits: 0 },
  { label: 'relay CPU µs/request, wrk 64 conns', load: 'wrk64', field: 'relayCpuUsPerRequest', digits: 0, marks: CPU_MARK },
  { label: 'relay CPU µs/request, wrk 1 conn', load: 'wrk1', field: 'relayCpuUsPerRequest', digits: 0, marks: CPU_MARK },
  { label: 'relay CPU µs/request, h2load', load: 'h2load', field: 'relayCpuUsPerRequest', digits: 0, marks: `${H2_MARK}${CPU_MARK}` },
  { label: 'relay CPU ms/MB, download', load: 'download', field: 'relayCpuMsPerMB', digits: 2, marks: CPU_MARK },
];

const H2_NOTE =
  `${H2_MARK} h2load speaks HTTP/2 (h2c prior knowledge) to the \`h2c://\` route: tether-bound binds each HTTP/2 connection to one upstream HTTP/2 connection ` +
  '(the gateway decodes and re-encodes every request header block), tether-request carries each request on a tunnel stream of its own.';
const CPU_NOTE = `${CPU_MARK} user + system CPU of the relay processes during the measured run (tether and minimal: gateway + agent; ssh: the client and every sshd process), per request or per MB.`;

interface TargetSpec {
  id: string;
  name: string;
  path: PathName;
  load: string;
  field: string;
  better: 'higher' | 'lower';
  against: 'best-ssh' | 'minimal' | 'limit';
  /** Required ratio against the reference path, or the limit itself for `limit`. */
  required: number;
  note?: string;
}

const TARGETS: TargetSpec[] = [
  { id: 'bound-wrk64-rps', name: 'wrk 64 conns: requests/s', path: 'tether-bound', load: 'wrk64', field: 'requestsPerSec', better: 'higher', against: 'best-ssh', required: 1.0 },
  { id: 'bound-wrk64-p99', name: 'wrk 64 conns: p99', path: 'tether-bound', load: 'wrk64', field: 'p99Ms', better: 'lower', against: 'best-ssh', required: 1.0 },
  { id: 'bound-wrk1-p50', name: 'wrk 1 conn: p50', path: 'tether-bound', load: 'wrk1', field: 'p50Ms', better: 'lower', against: 'best-ssh', required: 1.5 },
  {
    id: 'bound-h2load-rps',
    name: `h2load 64×10 (h2c): requests/s ${H2_MARK}`,
    path: 'tether-bound',
    load: 'h2load',
    field: 'requestsPerSec',
    better: 'higher',
    against: 'best-ssh',
    required: 1.0,
    note: 'HTTP/2 client connections are carried per request until HTTP/2 binding exists',
  },
  { id: 'bound-download-mbps', name: '256 MiB download: MB/s', path: 'tether-bound', load: 'download', field: 'megabytesPerSec', better: 'higher', against: 'best-ssh', required: 1.0 },
  { id: 'bound-relay-cpu', name: `relay CPU µs/request, wrk 64 conns ${CPU_MARK}`, path: 'tether-bound', load: 'wrk64', field: 'relayCpuUsPerRequest', better: 'lower', against: 'limit', required: RELAY_CPU_US_TARGET },
  { id: 'request-wrk64-rps', name: 'wrk 64 conns: requests/s', path: 'tether-request', load: 'wrk64', field: 'requestsPerSec', better: 'higher', against: 'minimal', required: 1.0 },
  { id: 'request-wrk64-p99', name: 'wrk 64 conns: p99', path: 'tether-request', load: 'wrk64', field: 'p99Ms', better: 'lower', against: 'minimal', required: 1.5 },
];

function value(rows: Rows, load: string, path: PathName, field: string): number | null {
  const entry = rows[load]?.[path] as Record<string, unknown> | undefined;
  const v = entry?.[field];
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function fmt(v: number | null, digits: number): string {
  if (v === null) return '–';
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function round(v: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(v * scale) / scale;
}

/** How far `ratio` misses `required` in the `better` direction, or null when it meets it. */
function missed(better: 'higher' | 'lower', ratio: number, required: number): string | null {
  const share = ratio / required;
  const percent = (fraction: number): string => `${fraction < 0.01 ? (fraction * 100).toFixed(1) : Math.round(fraction * 100)}%`;
  if (better === 'higher') return share >= 1 ? null : `${percent(1 - share)} short`;
  if (share <= 1) return null;
  return share >= 2 ? `${share.toFixed(1)}× over` : `${percent(share - 1)} over`;
}

function check(spec: Omit<TargetSpec, 'load' | 'field' | 'against'>, measured: number | null, reference: TargetCheck['reference']): TargetCheck {
  const ratio = measured === null || reference.value === null || reference.value === 0 ? null : measured / reference.value;
  const required = reference.kind === 'limit' ? 1 : spec.required;
  const met = ratio === null ? null : spec.better === 'higher' ? ratio >= required : ratio <= required;
  return {
    id: spec.id,
    name: spec.name,
    path: spec.path,
    measured,
    reference,
    better: spec.better,
    ratio: ratio === null ? null : round(ratio, 3),
    required,
    met,
    missedBy: ratio === null ? null : missed(spec.better, ratio, required),
    ...(spec.note === undefined ? {} : { note: spec.note }),
  };
}

/** Settled and 2 s readings (KiB RSS per idle WebSocket, gateway + agent) of one path. */
function websocketKib(entry: Record<string, unknown> | undefined): { total: number | null; gateway: number | null; agent: number | null; at2s: number | null } {
  const read = (key: string, field: string): number | null => {
    const v = (entry?.[key] as Record<string, unknown> | undefined)?.[field];
    return typeof v === 'number' && Number.isFinite(v) ? v : null;
  };
  return { total: read('kibPerSocket', 'total'), gateway: read('kibPerSocket', 'gateway'), agent: read('kibPerSocket', 'agent'), at2s: read('kibPerSocketAt2s', 'total') };
}

/** Failed requests (non-2xx, socket errors, h2load failures) in one measurement. */
function failures(rows: Rows, load: string, path: PathName | null): number {
  if (path === null) return 0;
  const e = rows[load]?.[path] as Record<string, unknown> | undefined;
  return typeof e?.errors === 'number' ? e.errors : typeof e?.failed === 'number' ? e.failed : 0;
}

/** A figure measured with failed requests is no basis for a verdict: `met` becomes null. */
function withFailures(rows: Rows, load: string, c: TargetCheck): TargetCheck {
  const failed = [c.path, c.reference.path].filter((p): p is PathName => p !== null && failures(rows, load, p) > 0);
  if (failed.length === 0) return c;
  return { ...c, met: null, missedBy: null, noVerdict: `failed requests on ${failed.map((p) => `${p} (${failures(rows, load, p)})`).join(', ')}` };
}

export function targetChecks(rows: Rows, websocket: WebSocketRows): TargetCheck[] {
  const checks = TARGETS.map((spec): TargetCheck => withFailures(rows, spec.load, targetCheck(rows, spec)));
  for (const path of TETHER_PATHS) {
    const entry = websocket[path];
    if (entry === undefined) continue;
    const kib = websocketKib(entry);
    const failed = typeof entry.failed === 'number' ? entry.failed : 0;
    const c = check({ id: `${path === 'tether-bound' ? 'bound' : 'request'}-websocket-kib`, name: 'KiB RSS per idle WebSocket, settled (gateway + agent)', path, better: 'lower', required: WEBSOCKET_KIB_TARGET }, kib.total, {
      kind: 'limit',
      path: null,
      value: WEBSOCKET_KIB_TARGET,
    });
    checks.push({
      ...c,
      ...(failed > 0 ? { met: null, missedBy: null, noVerdict: `${failed} WebSockets failed to open` } : {}),
      // RSS moves by megabytes run to run: with too few sockets the difference can come out ≤ 0.
      ...(failed === 0 && kib.total !== null && kib.total <= 0 ? { met: null, missedBy: null, noVerdict: 'RSS did not grow: too few WebSockets to measure' } : {}),
      extra: { gatewayKib: kib.gateway, agentKib: kib.agent, at2sKib: kib.at2s, opened: typeof entry.opened === 'number' ? entry.opened : null, settleSeconds: typeof entry.settleSeconds === 'number' ? entry.settleSeconds : null },
    });
  }
  return checks;
}

function targetCheck(rows: Rows, spec: TargetSpec): TargetCheck {
  const measured = value(rows, spec.load, spec.path, spec.field);
  if (spec.against === 'limit') return check(spec, measured, { kind: 'limit', path: null, value: spec.required });
  if (spec.against === 'minimal') return check(spec, measured, { kind: 'path', path: 'minimal', value: value(rows, spec.load, 'minimal', spec.field) });
  // The better of the two ssh variants on this measure alone; a variant with failed requests is no reference.
  const candidates: Partial<Record<PathName, number | null>> = {};
  const leftOut: string[] = [];
  let best: { path: PathName; value: number } | null = null;
  for (const path of SSH_PATHS) {
    const v = value(rows, spec.load, path, spec.field);
    candidates[path] = v;
    if (v === null) continue;
    if (failures(rows, spec.load, path) > 0) {
      leftOut.push(`${path} left out of the reference: ${failures(rows, spec.load, path)} failed requests`);
      continue;
    }
    if (best === null || (spec.better === 'higher' ? v > best.value : v < best.value)) best = { path, value: v };
  }
  const note = [spec.note, ...leftOut].filter((n): n is string => n !== undefined).join('; ');
  return { ...check(spec, measured, { kind: 'path', path: best?.path ?? null, value: best?.value ?? null }), candidates, ...(note === '' ? {} : { note }) };
}

function verdict(c: TargetCheck): string {
  if (c.met === null) return `n/a (${c.noVerdict ?? 'not measured'})`;
  if (c.met) return 'met';
  return `**not met** (${c.missedBy ?? 'missed'})`;
}

function unitOf(c: TargetCheck): string {
  if (c.id.endsWith('-p99') || c.id.endsWith('-p50')) return ' ms';
  if (c.id.endsWith('-relay-cpu')) return ' µs';
  if (c.id.endsWith('-websocket-kib')) return ' KiB';
  return '';
}

function digitsOf(c: TargetCheck): number {
  if (c.id.endsWith('-p50')) return 3;
  if (c.id.endsWith('-p99')) return 2;
  if (c.id.endsWith('-websocket-kib')) return 1;
  return 0;
}

export function formatTable(rows: Rows, websocket: WebSocketRows, checks: TargetCheck[]): string {
  // Figures: one column per path that has any figure in this run.
  const present = PATH_NAMES.filter((path) => Object.values(rows).some((byPath) => byPath[path] !== undefined) || (path !== 'direct' && path !== 'ssh' && path !== 'ssh-N' && websocket[path] !== undefined));
  const out = [`| measure | ${present.map((p) => `${PATH_LABELS[p]} (\`${p}\`)`).join(' | ')} |`, `| --- | ${present.map(() => '---:').join(' | ')} |`];
  let h2Shown = false;
  let cpuShown = false;
  for (const line of LINES) {
    const figures = present.map((path) => value(rows, line.load, path, line.field));
    if (figures.every((f) => f === null)) continue;
    if (line.marks?.includes(H2_MARK) === true) h2Shown = true;
    if (line.marks?.includes(CPU_MARK) === true) cpuShown = true;
    out.push(`| ${line.label}${line.marks === undefined ? '' : ` ${line.marks}`} | ${figures.map((f) => fmt(f, line.digits)).join(' | ')} |`);
  }
  const kib = (path: PathName): ReturnType<typeof websocketKib> | null => (path === 'tether-bound' || path === 'tether-request' || path === 'minimal' ? websocketKib(websocket[path]) : null);
  if (present.some((path) => kib(path)?.total != null)) {
    const opened = [...new Set(Object.values(websocket).map((w) => String(w.opened ?? '?')))].join('/');
    out.push(`| KiB RSS per idle WebSocket, settled (${opened} open; gateway + agent) | ${present.map((p) => fmt(kib(p)?.total ?? null, 1)).join(' | ')} |`);
    out.push(`| KiB RSS per idle WebSocket, 2 s after opening | ${present.map((p) => fmt(kib(p)?.at2s ?? null, 1)).join(' | ')} |`);
  }

  // Targets, with the ratio each verdict rests on.
  out.push('', '| target | path | measured | against | ratio | required | verdict |', '| --- | --- | ---: | --- | ---: | --- | --- |');
  for (const c of checks) {
    const unit = unitOf(c);
    const digits = digitsOf(c);
    const against =
      c.reference.kind === 'limit'
        ? `limit ${fmt(c.reference.value, digits)}${unit}`
        : c.candidates !== undefined
          ? c.reference.path === null
            ? 'better of `ssh`, `ssh-N`: not measured'
            : `better of \`ssh\`, \`ssh-N\`: \`${c.reference.path}\` ${fmt(c.reference.value, digits)}${unit}`
          : `\`${c.reference.path ?? '?'}\` ${c.reference.value === null ? 'not measured' : `${fmt(c.reference.value, digits)}${unit}`}`;
    const required = c.reference.kind === 'limit' ? `${c.better === 'higher' ? '≥' : '≤'} ${fmt(c.reference.value, digits)}${unit}` : `${c.better === 'higher' ? '≥' : '≤'} ${c.required.toFixed(1)}×`;
    const ratio = c.ratio === null ? '–' : `${c.ratio.toFixed(2)}×`;
    const measured = `${fmt(c.measured, digits)}${c.measured === null ? '' : unit}${c.extra?.at2sKib == null ? '' : ` (2 s: ${fmt(c.extra.at2sKib, 1)})`}`;
    out.push(`| ${c.name} | \`${c.path}\` | ${measured} | ${against} | ${ratio} | ${required} | ${verdict(c)} |`);
  }

  const notes: string[] = [];
  if (h2Shown || checks.some((c) => c.id === 'bound-h2load-rps' && c.met !== null)) notes.push(H2_NOTE);
  if (cpuShown) notes.push(CPU_NOTE);
  if (notes.length > 0) out.push('', ...notes.flatMap((n, i) => (i === 0 ? [n] : ['', n])));

  const errors: string[] = [];
  for (const [load, byPath] of Object.entries(rows)) {
    for (const [path, entry] of Object.entries(byPath)) {
      const e = entry as Record<string, unknown>;
      const count = typeof e.errors === 'number' ? e.errors : typeof e.failed === 'number' ? e.failed : 0;
      if (count > 0) errors.push(`${load}/${path}: ${count} failed requests`);
    }
  }
  if (errors.length > 0) out.push('', `Errors: ${errors.join('; ')}`);
  return out.join('\n');
}
