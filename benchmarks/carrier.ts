/**
 * Carrier benchmark (issue 9, "A mux that costs little per byte"): is Node's HTTP/2 the limit for
 * bound connections? Bare relays (`carrier-relay.ts`: no auth, no head scan, no metrics) on the
 * tunnel's shape carry `wrk -t2 -c64` requests for a 1 KiB answer through
 *
 * - `h2`: one HTTP/2 CONNECT stream per client connection over the agent-dialed TLS connection
 *   (tether's carrier), and
 * - `frames`: a minimal own framing over the same kind of connection (no flow control: a floor for
 *   what any lighter mux could cost), and
 * - `pipe`: no mux: one agent-dialed TLS connection per client connection (from a pool),
 *
 * fresh processes for each, the same upstream (`tunnel-upstream.ts`). Reported: requests/s, p50,
 * p99 and the relay processes' CPU per request. Options: `--duration=S` (8), `--runs=N` (3,
 * alternating, medians reported).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CertificateAuthority } from '../certs/index.js';
import { wrk, type WrkResult } from './tunnel-load.js';
import { Processes, cpuSeconds, nextMessage, ofType } from './tunnel-processes.js';

const MODES = ['h2', 'frames', 'pipe'] as const;
type Mode = (typeof MODES)[number];

interface Row extends WrkResult {
  relayCpuUsPerRequest: number;
}

function option(args: string[], name: string, fallback: number): number {
  const found = args.find((a) => a.startsWith(`--${name}=`));
  return found === undefined ? fallback : Number(found.slice(name.length + 3));
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

export async function run(args: string[]): Promise<Record<string, unknown>> {
  const seconds = option(args, 'duration', 8);
  const runs = option(args, 'runs', 3);
  const processes = new Processes();
  const dir = await mkdtemp(join(tmpdir(), 'tether-carrier-'));
  try {
    const upstream = processes.spawnNode('upstream', 'tunnel-upstream.ts', []);
    const ports = await nextMessage(upstream, ofType<{ type: 'ready'; http: number }>('ready'), 30_000, 'upstream ready');
    const ca = await CertificateAuthority.create({ trustDomain: 'carrier.test' });
    const server = await ca.issueServer({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
    const rows: Record<Mode, Row[]> = { h2: [], frames: [], pipe: [] };
    for (let i = 0; i < runs; i++) {
      for (const mode of MODES) {
        const gatewayFile = join(dir, `gateway-${mode}-${i}.json`);
        await writeFile(gatewayFile, JSON.stringify({ key: server.privateKeyPem ?? '', cert: server.chainPem, ca: ca.trustBundlePem() }), { mode: 0o600 });
        const gateway = processes.spawnNode(`gateway-${mode}`, 'carrier-relay.ts', ['gateway', mode, gatewayFile]);
        const ready = await nextMessage(gateway, ofType<{ type: 'ready'; port: number; tunnelPort: number }>('ready'), 30_000, 'gateway ready');
        const agentFile = join(dir, `agent-${mode}-${i}.json`);
        await writeFile(agentFile, JSON.stringify({ key: '', cert: '', ca: ca.trustBundlePem(), tunnelPort: ready.tunnelPort, upstreamPort: ports.http }), { mode: 0o600 });
        const agent = processes.spawnNode(`agent-${mode}`, 'carrier-relay.ts', ['agent', mode, agentFile]);
        await nextMessage(agent, ofType<{ type: 'ready' }>('ready'), 30_000, 'agent ready');
        const target = { base: `http://127.0.0.1:${ready.port}`, headers: [] };
        await wrk(processes, target, '/1k', 2, 64, 2);
        const pids = [gateway.child.pid ?? 0, agent.child.pid ?? 0];
        const before = pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
        const result = await wrk(processes, target, '/1k', 2, 64, seconds);
        const cpu = pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0) - before;
        rows[mode].push({ ...result, relayCpuUsPerRequest: Math.round((cpu * 1e7) / result.requests) / 10 });
        process.stderr.write(`[carrier] ${mode} run ${i + 1}: ${JSON.stringify(rows[mode].at(-1))}\n`);
        await processes.stop(agent);
        await processes.stop(gateway);
      }
    }
    const summary = Object.fromEntries(
      MODES.map((mode) => [
        mode,
        {
          requestsPerSec: median(rows[mode].map((r) => r.requestsPerSec)),
          p50Ms: median(rows[mode].map((r) => r.p50Ms)),
          p99Ms: median(rows[mode].map((r) => r.p99Ms)),
          relayCpuUsPerRequest: median(rows[mode].map((r) => r.relayCpuUsPerRequest)),
        },
      ]),
    );
    process.stderr.write(`[carrier] medians: ${JSON.stringify(summary)}\n`);
    return { settings: { seconds, runs, load: 'wrk -t2 -c64, 1 KiB answer' }, runs: rows, medians: summary };
  } finally {
    await processes.stopAll();
    await rm(dir, { recursive: true, force: true });
  }
}
