/**
 * Where a CPU profile's time goes (`node --cpu-prof` output, as `benchmarks/sovereign.ts
 * --profile` takes of the router): self time per function and per source area (node internals,
 * TLS, jose, the router's own files, ...), as shares of the busy time (`(idle)` left out;
 * `(program)`, native work outside any script, counts as busy). The profiler samples on a wall
 * clock: on a loaded machine the time a thread waits for a CPU is charged to the frame it was
 * preempted in, so read the shares, not the milliseconds. Also runnable on its own:
 *
 *   node --import ./bin/typescript.js benchmarks/sovereign-profile.ts FILE.cpuprofile
 */
import { readFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  file: string;
  /** Wall time covered and the busy part of it (not idle), in ms. */
  totalMs: number;
  busyMs: number;
  /** Self time per function, largest first: `name (file:line)` → ms and % of busy. */
  functions: Array<{ name: string; ms: number; percent: number }>;
  /** Self time per area (see AREAS), largest first. */
  areas: Array<{ area: string; ms: number; percent: number }>;
}


/** Source areas by URL, first match wins; what matches none is `other`. */
const AREAS: Array<[string, (url: string, name: string) => boolean]> = [
  ['garbage collection', (_url, name) => name === '(garbage collector)'],
  ['jose (JWT verify)', (url) => url.includes('/node_modules/jose/')],
  ['prom-client / pino', (url) => url.includes('/node_modules/prom-client/') || url.includes('/node_modules/pino')],
  ['router: sovereign front', (url) => url.includes('/agent/router/sovereign-front')],
  ['router: jwt_authn', (url) => url.includes('/agent/router/jwt-authn') || url.includes('/certs/')],
  ['router: rbac, matching, routing', (url) => /\/agent\/router\/(rbac|matchers|router|compile|balancer|regex)/.test(url)],
  ['router: proxy to upstream', (url) => url.includes('/agent/router/http-proxy')],
  ['router: PROXY protocol', (url) => url.includes('/agent/router/proxy-protocol')],
  ['node: TLS', (url) => /node:(_tls|tls)/.test(url)],
  ['node: http server/client', (url) => /node:_http|node:http/.test(url)],
  ['node: net and streams', (url) => /node:(net|stream|internal\/streams|internal\/stream_base)/.test(url)],
  ['node: crypto (webcrypto)', (url) => /node:internal\/crypto/.test(url)],
  ['node: other internals', (url) => url.startsWith('node:')],
  ['native: socket writes (TLS encryption and the write syscalls)', (url, name) => url === '' && /^write(v|Buffer|\w+String)$/.test(name)],
  ['native: (program), outside any script', (_url, name) => name === '(program)'],
  ['native: other', (url) => url === ''],
];

function round1(value: number): number {
  return Math.round(value * 10) / 10;
}

export function summarizeProfile(file: string, profile: CpuProfile, top = 25): ProfileSummary {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const functions = new Map<string, number>();
  const areas = new Map<string, number>();
  let busyUs = 0;
  for (const [id, us] of selfUs) {
    const frame = byId.get(id)?.callFrame;
    if (frame === undefined) continue;
    if (frame.functionName === '(idle)') continue;
    busyUs += us;
    const where = frame.url === '' ? '' : ` (${frame.url.replace(/^file:\/\/.*?\/(node_modules|agent|common|certs|xds)\//, '$1/')}:${frame.lineNumber + 1})`;
    const name = `${frame.functionName === '' ? '(anonymous)' : frame.functionName}${where}`;
    functions.set(name, (functions.get(name) ?? 0) + us);
    const area = AREAS.find(([, test]) => test(frame.url, frame.functionName))?.[0] ?? 'other';
    areas.set(area, (areas.get(area) ?? 0) + us);
  }
  const ranked = (map: Map<string, number>): Array<[string, number, number]> =>
    [...map.entries()].sort((a, b) => b[1] - a[1]).map(([key, us]) => [key, round1(us / 1000), busyUs > 0 ? round1((us * 100) / busyUs) : 0]);
  return {
    file,
    totalMs: Math.round((profile.endTime - profile.startTime) / 1000),
    busyMs: Math.round(busyUs / 1000),
    functions: ranked(functions).slice(0, top).map(([name, ms, percent]) => ({ name, ms, percent })),
    areas: ranked(areas).map(([area, ms, percent]) => ({ area, ms, percent })),
  };
}

export async function summarizeProfileFile(file: string, top = 25): Promise<ProfileSummary> {
  return summarizeProfile(file, JSON.parse(await readFile(file, 'utf8')) as CpuProfile, top);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  for (const file of process.argv.slice(2)) process.stdout.write(`${JSON.stringify(await summarizeProfileFile(file, 40), null, 2)}\n`);
}
