/**
 * The tunnel benchmark's report: the markdown table with ratios to direct, and the check of the
 * issue's targets (the tunnel at least as good as `ssh -R` measured in the same run; at most
 * 20 KiB RSS per idle WebSocket through gateway and agent).
 */
export const DOWNLOAD_BYTES_TOTAL = 256 * 1024 * 1024;
export const WEBSOCKET_KIB_TARGET = 20;

/** `minimal`: the plainest Node program carrying requests in the design's shape (tunnel-minimal-relay.ts). */
export type PathName = 'direct' | 'tether' | 'minimal' | 'ssh';
/** Load name → path → that measurement's fields. */
export type Rows = Record<string, Partial<Record<PathName, object>>>;

export interface TargetCheck {
  name: string;
  tether: number | null;
  /** `ssh -R` in the same run, or the fixed limit. */
  reference: number | null;
  referenceName: string;
  better: 'higher' | 'lower';
  met: boolean | null;
}

interface Line {
  label: string;
  load: string;
  field: string;
  digits: number;
  better: 'higher' | 'lower';
  target: boolean;
}

const LINES: Line[] = [
  { label: 'wrk 64 conns: requests/s', load: 'wrk64', field: 'requestsPerSec', digits: 0, better: 'higher', target: true },
  { label: 'wrk 64 conns: p50 ms', load: 'wrk64', field: 'p50Ms', digits: 2, better: 'lower', target: false },
  { label: 'wrk 64 conns: p99 ms', load: 'wrk64', field: 'p99Ms', digits: 2, better: 'lower', target: true },
  { label: 'wrk 1 conn: requests/s', load: 'wrk1', field: 'requestsPerSec', digits: 0, better: 'higher', target: false },
  { label: 'wrk 1 conn: p50 ms', load: 'wrk1', field: 'p50Ms', digits: 3, better: 'lower', target: true },
  { label: 'wrk 1 conn: p99 ms', load: 'wrk1', field: 'p99Ms', digits: 3, better: 'lower', target: false },
  { label: 'h2load 64×10: requests/s', load: 'h2load', field: 'requestsPerSec', digits: 0, better: 'higher', target: true },
  { label: '256 MiB download: MB/s', load: 'download', field: 'megabytesPerSec', digits: 0, better: 'higher', target: true },
  { label: 'relay CPU µs/request, wrk 64 conns', load: 'wrk64', field: 'relayCpuUsPerRequest', digits: 0, better: 'lower', target: false },
  { label: 'relay CPU µs/request, wrk 1 conn', load: 'wrk1', field: 'relayCpuUsPerRequest', digits: 0, better: 'lower', target: false },
  { label: 'relay CPU µs/request, h2load', load: 'h2load', field: 'relayCpuUsPerRequest', digits: 0, better: 'lower', target: false },
  { label: 'relay CPU ms/MB, download', load: 'download', field: 'relayCpuMsPerMB', digits: 2, better: 'lower', target: false },
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

function ratio(v: number | null, base: number | null): string {
  if (v === null || base === null || base === 0) return '–';
  return `${(v / base).toFixed(2)}×`;
}

function meets(better: 'higher' | 'lower', v: number, reference: number): boolean {
  return better === 'higher' ? v >= reference : v <= reference;
}

function websocketKib(websocket: Record<string, unknown> | null | undefined): { total: number | null; gateway: number | null; agent: number | null } {
  const per = websocket?.kibPerSocket as Record<string, unknown> | undefined;
  const n = (k: string): number | null => (typeof per?.[k] === 'number' && Number.isFinite(per[k]) ? (per[k] as number) : null);
  return { total: n('total'), gateway: n('gateway'), agent: n('agent') };
}

export function targetChecks(rows: Rows, websocket: Record<string, unknown> | null): TargetCheck[] {
  const checks: TargetCheck[] = LINES.filter((l) => l.target).map((line) => {
    const tether = value(rows, line.load, 'tether', line.field);
    const ssh = value(rows, line.load, 'ssh', line.field);
    return { name: line.label, tether, reference: ssh, referenceName: 'ssh -R', better: line.better, met: tether === null || ssh === null ? null : meets(line.better, tether, ssh) };
  });
  const kib = websocketKib(websocket).total;
  checks.push({ name: 'KiB RSS per idle WebSocket (gateway + agent)', tether: kib, reference: WEBSOCKET_KIB_TARGET, referenceName: 'limit', better: 'lower', met: kib === null ? null : kib <= WEBSOCKET_KIB_TARGET });
  return checks;
}

export function formatTable(rows: Rows, websocket: Record<string, unknown> | null, checks: TargetCheck[]): string {
  const out = [
    '| measure | direct | tether | minimal Node relay | ssh -R | tether ÷ direct | minimal ÷ direct | ssh -R ÷ direct | target: tether vs ssh -R |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const line of LINES) {
    const direct = value(rows, line.load, 'direct', line.field);
    const tether = value(rows, line.load, 'tether', line.field);
    const minimal = value(rows, line.load, 'minimal', line.field);
    const ssh = value(rows, line.load, 'ssh', line.field);
    if (direct === null && tether === null && minimal === null && ssh === null) continue;
    const check = checks.find((c) => c.name === line.label);
    const verdict = !line.target ? '' : check?.met === true ? `met (${line.better === 'higher' ? '≥' : '≤'})` : check?.met === false ? '**not met**' : 'n/a';
    out.push(`| ${line.label} | ${fmt(direct, line.digits)} | ${fmt(tether, line.digits)} | ${fmt(minimal, line.digits)} | ${fmt(ssh, line.digits)} | ${ratio(tether, direct)} | ${ratio(minimal, direct)} | ${ratio(ssh, direct)} | ${verdict} |`);
  }
  const kib = websocketKib(websocket);
  if (kib.total !== null) {
    const met = kib.total <= WEBSOCKET_KIB_TARGET;
    const opened = String(websocket?.opened ?? '?');
    const minimal = websocketKib(websocket?.minimal as Record<string, unknown> | undefined);
    out.push(
      `| KiB RSS per idle WebSocket, settled (${opened} open, heaps settled after ${String(websocket?.settleSeconds ?? '?')} s; tether: gateway ${fmt(kib.gateway, 1)} + agent ${fmt(kib.agent, 1)}) | – | ${fmt(kib.total, 1)} | ${fmt(minimal.total, 1)} | – | – | – | – | ${met ? 'met' : '**not met**'} (≤ ${WEBSOCKET_KIB_TARGET}) |`,
    );
    const early = (w: Record<string, unknown> | null | undefined): number | null => {
      const at2s = w?.kibPerSocketAt2s as { total?: number } | undefined;
      return typeof at2s?.total === 'number' ? at2s.total : null;
    };
    out.push(`| KiB RSS per idle WebSocket, 2 s after opening | – | ${fmt(early(websocket), 1)} | ${fmt(early(websocket?.minimal as Record<string, unknown> | undefined), 1)} | – | – | – | – |  |`);
  }
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
