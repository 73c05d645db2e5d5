/**
 * Load generators of the tunnel benchmark: `wrk` (HTTP/1.1), `h2load` (HTTP/2 prior knowledge) and
 * `curl` (one large download), each run with a hard deadline, and the parsers of their reports.
 */
import { runTool, type Processes } from './tunnel-processes.js';

export interface WrkResult {
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  /** Non-2xx/3xx answers plus socket errors. */
  errors: number;
}

export interface H2loadResult {
  requestsPerSec: number;
  succeeded: number;
  failed: number;
}

export interface DownloadResult {
  megabytesPerSec: number;
  bytes: number;
  seconds: number;
}

/** Tools the benchmark uses and the Debian package of each. */
export const TOOL_PACKAGES: Record<string, string> = {
  wrk: 'wrk',
  h2load: 'nghttp2-client',
  curl: 'curl',
  sshd: 'openssh-server',
  ssh: 'openssh-client',
  'ssh-keygen': 'openssh-client',
};

const TIME_UNITS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `1.35ms` → 1.35; `812.00us` → 0.812. */
export function parseWrkDuration(text: string): number {
  const match = /^([\d.]+)(us|ms|s|m|h)$/.exec(text.trim());
  if (match === null) throw new Error(`unreadable wrk duration ${text}`);
  return Number(match[1]) * (TIME_UNITS[match[2] ?? 'ms'] ?? 1);
}

export function parseWrk(output: string): WrkResult {
  const rate = /Requests\/sec:\s+([\d.]+)/.exec(output);
  const p50 = /^\s+50%\s+(\S+)/m.exec(output);
  const p99 = /^\s+99%\s+(\S+)/m.exec(output);
  const total = /(\d+) requests in/.exec(output);
  if (rate === null || p50 === null || p99 === null || total === null) throw new Error(`unreadable wrk report:\n${output}`);
  const non2xx = /Non-2xx or 3xx responses:\s+(\d+)/.exec(output);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output);
  const socketErrors = socket === null ? 0 : socket.slice(1).reduce((sum, n) => sum + Number(n), 0);
  return {
    requestsPerSec: Number(rate[1]),
    p50Ms: parseWrkDuration(p50[1] ?? ''),
    p99Ms: parseWrkDuration(p99[1] ?? ''),
    requests: Number(total[1]),
    errors: Number(non2xx?.[1] ?? 0) + socketErrors,
  };
}

export function parseH2load(output: string): H2loadResult {
  const rate = /finished in [\d.]+\w*, ([\d.]+) req\/s/.exec(output);
  const requests = /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(output);
  const status = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(output);
  if (rate === null || requests === null) throw new Error(`unreadable h2load report:\n${output}`);
  // 4xx/5xx answers count as "succeeded" in h2load's tally; here they are failures.
  const succeeded = Number(requests[1]) - Number(status?.[3] ?? 0) - Number(status?.[4] ?? 0);
  const failed = Number(requests[2]) + Number(requests[3]) + Number(requests[4]) + Number(status?.[3] ?? 0) + Number(status?.[4] ?? 0);
  return { requestsPerSec: Number(rate[1]), succeeded, failed };
}

export interface LoadTarget {
  /** Base URL, e.g. `http://127.0.0.1:8080`. */
  base: string;
  /** Extra request headers (`name: value`). */
  headers: string[];
}

export async function wrk(processes: Processes, target: LoadTarget, path: string, threads: number, connections: number, seconds: number): Promise<WrkResult> {
  const args = [`-t${threads}`, `-c${connections}`, `-d${seconds}s`, '--latency', '--timeout', '5s'];
  for (const header of target.headers) args.push('-H', header);
  args.push(`${target.base}${path}`);
  const result = await runTool(processes, 'wrk', args, (seconds + 30) * 1000);
  if (result.code !== 0) throw new Error(`wrk failed (${String(result.code)}${result.timedOut ? ', timed out' : ''}): ${result.stderr}${result.stdout}`);
  return parseWrk(result.stdout);
}

export async function h2load(processes: Processes, target: LoadTarget, path: string, clients: number, streams: number, seconds: number): Promise<H2loadResult> {
  const args = [`-c${clients}`, `-m${streams}`, '-t1', '-D', String(seconds)];
  for (const header of target.headers) args.push('-H', header);
  args.push(`${target.base}${path}`);
  const result = await runTool(processes, 'h2load', args, (seconds + 30) * 1000);
  if (result.code !== 0) throw new Error(`h2load failed (${String(result.code)}${result.timedOut ? ', timed out' : ''}): ${result.stderr}${result.stdout}`);
  return parseH2load(result.stdout);
}

/** One download with curl to /dev/null; throws unless all `expectedBytes` arrived with a 200. */
export async function download(processes: Processes, target: LoadTarget, path: string, expectedBytes: number, timeoutSec: number): Promise<DownloadResult> {
  const args = ['-sS', '-o', '/dev/null', '--max-time', String(timeoutSec), '-w', '%{http_code} %{size_download} %{time_total}'];
  for (const header of target.headers) args.push('-H', header);
  args.push(`${target.base}${path}`);
  const result = await runTool(processes, 'curl', args, (timeoutSec + 10) * 1000);
  const [status, size, seconds] = result.stdout.trim().split(' ');
  if (result.code !== 0 || status !== '200' || Number(size) !== expectedBytes) {
    throw new Error(`download failed: curl exit ${String(result.code)}, status ${String(status)}, ${String(size)} of ${expectedBytes} bytes: ${result.stderr}`);
  }
  const secs = Number(seconds);
  return { megabytesPerSec: expectedBytes / 1e6 / secs, bytes: expectedBytes, seconds: secs };
}
