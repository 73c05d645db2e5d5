/**
 * Tunnel benchmark (issue 3, "Must show" 6 and 7; issue 9, "Benchmark" and "Targets"). In one go on
 * loopback, the same loads against these paths to one upstream (`--paths=` names):
 *
 * - `direct`: the upstream itself (HTTP/1.1 port; h2c port for h2load);
 * - `tether-bound`: client → gateway's cleartext port (HTTP/1.1 or h2c) → HTTP/2 tunnel over mutual
 *   TLS 1.3 → agent → upstream, the gateway and the agent each in their own child process, gateway
 *   option `binding: 'connection'` (the default: an HTTP/1.1 client connection is bound to one
 *   tunnel stream once its first request is authorized; HTTP/2 client connections, and so h2load,
 *   go per request until HTTP/2 binding exists);
 * - `tether-request`: the same with `binding: 'request'` (one tunnel stream per request);
 * - `minimal`: the per-request shape (agent-dialed mutual TLS 1.3, reverse HTTP/2, one stream per
 *   request, two Node processes) with nothing but plain forwarding (`tunnel-minimal-relay.ts`):
 *   what Node's http and http2 cost on two hops before the gateway and agent do any of their work;
 * - `ssh`: a private sshd on a loopback port, and `ssh -R` (aes128-gcm@openssh.com, a remote `cat`
 *   held open so both ends set TCP_NODELAY) forwarding loopback ports on the sshd side to the
 *   upstream's HTTP/1.1 and h2c ports;
 * - `ssh-N`: the same with `ssh -N -R` (no session: sshd leaves Nagle on), its own sshd.
 *
 * Loads (`--only=` names): `wrk64` (`wrk -t2 -c64`) and `wrk1` (`wrk -t1 -c1`) on a 1 KiB response
 * (requests/s, p50, p99), `h2load` (`h2load -c64 -m10`, requests/s), `download` (256 MiB with curl,
 * MB/s, median of runs); and `websocket`: the RSS of the gateway and agent processes per idle
 * WebSocket with 10,000 open through them, on each tether path and the minimal relay selected
 * (fresh processes, a GC before each reading; the baseline after a warm-up once the heaps stop
 * shrinking, then readings 2 s after opening and again once the heaps stop shrinking: the target
 * is checked on the settled reading, both are reported). The upstream, the gateway, the agent and
 * each load generator are separate processes; every load has a time bound; every child (ssh and
 * sshd too) is killed and the temp folder removed at the end, also on error and on SIGINT/SIGTERM.
 *
 * The report (tunnel-report.ts) checks issue 9's targets on the figures of this one run:
 * `tether-bound` against the better of `ssh` and `ssh-N` per measure, `tether-request` against
 * `minimal`, relay CPU and idle-WebSocket memory against fixed limits.
 *
 * Options: `--duration=S` (10), `--warmup=S` (2; 0 for none), `--downloads=N` (3), `--websockets=N`
 * (10000), `--websocket-runs=N` (3, median reported), `--only=wrk64,wrk1,h2load,download,websocket`,
 * `--paths=direct,tether-bound,tether-request,minimal,ssh,ssh-N`, `--quick` (a smoke test:
 * duration 1, warm-up 0, 1 download, 200 WebSockets, 1 run; explicit options win), `--profile`
 * (CPU profiles of the gateways and agents into `benchmarks/results/profiles/`), `--help`.
 *
 * Run with `npm run bench tunnel` (writes `benchmarks/results/tunnel.json`) or directly with
 * `node --import ./bin/typescript.js benchmarks/tunnel.ts` (writes nothing). Needs wrk, h2load
 * (nghttp2-client), curl and openssh-server/openssh-client; a missing tool skips its rows with the
 * package to install.
 */
import { rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { CertificateAuthority } from '../certs/index.js';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import type { MinimalRelayMessage } from './tunnel-minimal-relay.js';
import { DOWNLOAD_BYTES_TOTAL, PATH_LABELS, PATH_NAMES, TETHER_PATHS, formatTable, targetChecks, type PathName, type Rows, type TetherPath, type WebSocketRows } from './tunnel-report.js';
import { TOOL_PACKAGES, download, h2load, wrk, type H2loadResult, type LoadTarget, type WrkResult } from './tunnel-load.js';
import { Processes, cpuSeconds, nextMessage, ofType, which, type Tracked } from './tunnel-processes.js';
import { SSH_VARIANTS, Skip, startSshTunnel, type SshVariant } from './tunnel-ssh.js';
import type { StackConfig, StackMessage } from './tunnel-stack.js';
import type { WsClientsMessage } from './tunnel-ws-clients.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const TRUST_DOMAIN = 'bench.tether';
const CLUSTER = 'bench';
const CLUSTER_HEADER = `tether-cluster: ${CLUSTER}`;
/**
 * The steady-state memory reading: every SETTLE_STEP_MS (a full GC before each) until neither
 * process's committed heap moved by more than SETTLE_TOLERANCE between two readings, at most
 * SETTLE_MAX_MS. V8 shrinks a heap that grew during a burst in steps over tens of seconds.
 */
const SETTLE_STEP_MS = 4_000;
const SETTLE_MAX_MS = 60_000;
const SETTLE_TOLERANCE = 1024 * 1024;
const LOADS = ['wrk64', 'wrk1', 'h2load', 'download', 'websocket'] as const;
type Load = (typeof LOADS)[number];
/** The gateway's `binding` option of each tether path. */
const BINDINGS: Record<TetherPath, NonNullable<StackConfig['binding']>> = { 'tether-bound': 'connection', 'tether-request': 'request' };
/** The ssh variant of each ssh path. */
const SSH_PATH_VARIANTS: Array<[PathName, SshVariant]> = [
  ['ssh', 'session'],
  ['ssh-N', 'no-command'],
];

interface Settings {
  durationSec: number;
  warmupSec: number;
  downloads: number;
  websockets: number;
  /** Fresh gateway + agent per measurement; the median run is reported (RSS moves ±1.5 KiB/socket run to run). */
  websocketRuns: number;
  loads: Set<Load>;
  paths: Set<PathName>;
  profile: boolean;
}

const USAGE = `usage: tunnel.ts [options]   (or: npm run bench -- tunnel [options], which writes benchmarks/results/tunnel.json)
  --paths=LIST         of ${PATH_NAMES.join(',')} (default: all)
  --only=LIST          of ${LOADS.join(',')} (default: all)
  --duration=S         seconds per measured wrk/h2load run (10)
  --warmup=S           seconds of warm-up before each, 0 for none (2)
  --downloads=N        256 MiB downloads per path, median reported (3)
  --websockets=N       idle WebSockets opened per memory run (10000)
  --websocket-runs=N   memory runs per path, median reported (3)
  --quick              smoke test: --duration=1 --warmup=0 --downloads=1 --websockets=200 --websocket-runs=1 (explicit options win)
  --profile            CPU profiles of the gateways and agents into benchmarks/results/profiles/
  --help               this text`;

function parseArgs(args: readonly string[]): Settings {
  const quick = args.includes('--quick');
  const value = (name: string): string | undefined => args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const number = (name: string, fallback: number, quickValue: number, min = 1): number => {
    const given = value(name);
    if (given === undefined) return quick ? quickValue : fallback;
    const parsed = Number(given);
    if (!Number.isInteger(parsed) || parsed < min) throw new Error(`--${name}=${given}: a whole number ≥ ${min} is needed\n${USAGE}`);
    return parsed;
  };
  const list = <T extends string>(name: string, all: readonly T[]): Set<T> => {
    const given = value(name);
    if (given === undefined) return new Set(all);
    const names = given.split(',').filter((v) => v !== '');
    const unknown = names.filter((v) => !(all as readonly string[]).includes(v));
    if (unknown.length > 0) throw new Error(`--${name}=: unknown ${unknown.join(', ')} (known: ${all.join(', ')})`);
    return new Set(names as T[]);
  };
  return {
    durationSec: number('duration', 10, 1),
    warmupSec: number('warmup', 2, 0, 0),
    downloads: number('downloads', 3, 1),
    websockets: number('websockets', 10_000, 200),
    websocketRuns: number('websocket-runs', 3, 1),
    loads: list('only', LOADS),
    paths: list<PathName>('paths', PATH_NAMES),
    profile: args.includes('--profile'),
  };
}

function log(message: string): void {
  process.stderr.write(`[tunnel] ${message}\n`);
}

function load1(): number {
  return Math.round((loadavg()[0] ?? 0) * 100) / 100;
}

interface Paths {
  /** HTTP/1.1 target per path. */
  http: Partial<Record<PathName, LoadTarget>>;
  /** h2c target per path, with the path to request. */
  h2c: Partial<Record<PathName, LoadTarget & { path: string }>>;
}

interface Stack {
  gateway: Tracked;
  agent: Tracked;
  plainUrl: string;
}

/** The tether gateway and agent (tunnel-stack.ts). */
async function startStack(processes: Processes, dir: string, config: StackConfig, profileDir: string | null, tag: string, requestHeaders: Record<string, string>): Promise<Stack> {
  const { stack } = await startPair<Extract<StackMessage, { type: 'ready'; role: 'gateway' }>>(processes, dir, 'tunnel-stack.ts', tag, config, profileDir, requestHeaders);
  return stack;
}

/**
 * A gateway child, then an agent child dialing it, of `file` (tunnel-stack.ts or
 * tunnel-minimal-relay.ts, which answer alike), then one request through them. Both get
 * `--expose-gc` (memory readings GC first) and, with `profileDir`, CPU profiles: one folder per
 * process and Node's own file names, since the module-loader thread writes a profile of its own
 * that a fixed --cpu-prof-name would let overwrite the main thread's.
 */
async function startPair<Ready extends { type: 'ready'; role: 'gateway'; plainUrl: string; address: string }>(
  processes: Processes,
  dir: string,
  file: string,
  tag: string,
  config: StackConfig,
  profileDir: string | null,
  requestHeaders: Record<string, string>,
): Promise<{ stack: Stack; ready: Ready }> {
  const nodeArgs = (role: string): string[] => ['--expose-gc', ...(profileDir === null ? [] : ['--cpu-prof', `--cpu-prof-dir=${join(profileDir, `${tag}-${role}`)}`])];
  const gatewayFile = join(dir, `${tag}-gateway.json`);
  await writeFile(gatewayFile, JSON.stringify(config), { mode: 0o600 });
  const gateway = processes.spawnNode(`gateway (${tag})`, file, ['gateway', gatewayFile], nodeArgs('gateway'));
  const ready = await nextMessage(gateway, ofType<Ready>('ready'), 30_000, `gateway (${tag}) ready`);
  const agentFile = join(dir, `${tag}-agent.json`);
  await writeFile(agentFile, JSON.stringify({ ...config, gatewayAddress: ready.address }), { mode: 0o600 });
  const agent = processes.spawnNode(`agent (${tag})`, file, ['agent', agentFile], nodeArgs('agent'));
  await nextMessage(agent, ofType<{ type: 'ready'; role: 'agent' }>('ready'), 30_000, `agent (${tag}) ready`);
  await waitForTunnel(ready.plainUrl, requestHeaders);
  return { stack: { gateway, agent, plainUrl: ready.plainUrl }, ready };
}

/** An ES256 issuer for the benchmark's clients and one token (valid for two hours) naming the cluster. */
async function clientToken(): Promise<{ token: string; auth: NonNullable<StackConfig['auth']> }> {
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'bench', alg: 'ES256', use: 'sig' };
  const issuer = 'https://issuer.bench.tether';
  const audience = 'tether-gateway';
  const token = await new SignJWT({ clusters: [CLUSTER] }).setProtectedHeader({ alg: 'ES256', kid: 'bench' }).setIssuer(issuer).setAudience(audience).setSubject('bench-client').setIssuedAt().setExpirationTime('2h').sign(privateKey);
  return { token, auth: { issuer, audience, jwks: { keys: [jwk] } } };
}

/** The minimal Node relay (tunnel-minimal-relay.ts), started like the tether stack. */
async function startMinimalRelay(processes: Processes, dir: string, config: StackConfig, tag: string): Promise<{ stack: Stack; h2cUrl: string }> {
  const { stack, ready } = await startPair<Extract<MinimalRelayMessage, { type: 'ready'; role: 'gateway' }>>(processes, dir, 'tunnel-minimal-relay.ts', tag, config, null, {});
  return { stack, h2cUrl: ready.h2cUrl };
}

/** The gateway registers a tunnel once the agent's SETTINGS arrive: wait until a request goes through. */
async function waitForTunnel(plainUrl: string, requestHeaders: Record<string, string>): Promise<void> {
  const deadline = Date.now() + 10_000;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const response = await fetch(`${plainUrl}/1k`, { headers: { 'tether-cluster': CLUSTER, ...requestHeaders } });
      const body = await response.arrayBuffer();
      if (response.status === 200 && body.byteLength === 1024) return;
      last = `status ${response.status}, ${body.byteLength} bytes, ${response.headers.get('tether-error') ?? ''}`;
    } catch (reason) {
      last = reason instanceof Error ? reason.message : String(reason);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`no request got through the tunnel within 10 s: ${last}`);
}

type Memory = Extract<StackMessage, { type: 'memory' }>;

async function memory(entry: Tracked): Promise<Memory> {
  entry.child.send({ type: 'memory' });
  return nextMessage(entry, ofType<Memory>('memory'), 30_000, 'memory reading');
}

export async function run(args: string[] = []): Promise<Record<string, unknown>> {
  if (args.includes('--help')) {
    // Exit here, so that `npm run bench -- tunnel --help` does not write a results file either.
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const settings = parseArgs(args);
  const processes = new Processes();
  const dir = await mkdtemp(join(tmpdir(), 'tether-bench-tunnel-'));
  // Interrupted or exiting without reaching `finally`: kill every child and drop the keys folder.
  const onExit = (): void => {
    processes.killAllNow();
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    onExit();
    process.kill(process.pid, signal);
  };
  process.once('exit', onExit);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const skipped: string[] = [];
  const notes: string[] = [];
  const rows: Rows = {};
  const loadAverage: Record<string, number> = { start: load1() };
  const started = Date.now();
  try {
    for (const tool of ['wrk', 'h2load', 'curl'] as const) {
      if (which(tool) === null) skipped.push(`${tool} not found (its rows are skipped): install the Debian package ${TOOL_PACKAGES[tool] ?? tool}`);
    }
    for (const line of skipped) log(`SKIPPED ${line}`);
    const has = (tool: string): boolean => which(tool) !== null;

    // Upstream, in its own process.
    const upstream = processes.spawnNode('upstream', 'tunnel-upstream.ts', []);
    const ports = await nextMessage(upstream, ofType<{ type: 'ready'; http: number; h2c: number }>('ready'), 30_000, 'upstream ready');
    log(`upstream on 127.0.0.1:${ports.http} (HTTP/1.1) and :${ports.h2c} (h2c)`);

    // PKI for the tunnel: server certificate for the gateway, SPIFFE workload certificate for the agent.
    const ca = await CertificateAuthority.create({ trustDomain: TRUST_DOMAIN });
    const serverCert = await ca.issueServer({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
    const agentCert = await ca.issueWorkload({ clusterId: CLUSTER, agentId: 'bench-agent' });
    // Clients present a bearer JWT the gateway verifies (ES256, a local key set), as deployed; the
    // other paths ignore the header.
    const client = await clientToken();
    const stackConfig: StackConfig = {
      auth: client.auth,
      trustDomain: TRUST_DOMAIN,
      clusterId: CLUSTER,
      ca: ca.trustBundlePem(),
      gatewayTls: { key: serverCert.privateKeyPem ?? '', cert: serverCert.chainPem },
      agentTls: { key: agentCert.privateKeyPem ?? '', cert: agentCert.chainPem },
      routes: [
        { prefix: '/h2/', upstream: `h2c://127.0.0.1:${ports.h2c}` },
        { prefix: '/', upstream: `http://127.0.0.1:${ports.http}` },
      ],
    };
    const profileDir = settings.profile ? join(HERE, 'results', 'profiles') : null;
    if (profileDir !== null) await mkdir(profileDir, { recursive: true });

    const paths: Paths = { http: {}, h2c: {} };
    // Every path gets the same request headers (the tunnel needs the cluster header for routing and
    // the token for authentication).
    const headers = [CLUSTER_HEADER, `authorization: Bearer ${client.token}`];
    if (settings.paths.has('direct')) {
      paths.http.direct = { base: `http://127.0.0.1:${ports.http}`, headers };
      paths.h2c.direct = { base: `http://127.0.0.1:${ports.h2c}`, headers, path: '/1k' };
    }
    const relayPids: Partial<Record<PathName, () => number[]>> = { direct: () => [] };
    // Relay processes up for the loads, stopped before the memory runs start their own.
    const running: Stack[] = [];
    const loadTests = [...settings.loads].some((l) => l !== 'websocket');
    for (const path of TETHER_PATHS) {
      if (!settings.paths.has(path) || !loadTests) continue;
      const binding = BINDINGS[path];
      const stack = await startStack(processes, dir, { ...stackConfig, binding }, profileDir, `${path}-load`, { authorization: `Bearer ${client.token}` });
      running.push(stack);
      log(`${path}: gateway (binding: ${binding}) at ${stack.plainUrl} (agent: 2 tunnel connections)`);
      paths.http[path] = { base: stack.plainUrl, headers };
      paths.h2c[path] = { base: stack.plainUrl, headers, path: '/h2/1k' };
      const pids = [stack.gateway.child.pid ?? 0, stack.agent.child.pid ?? 0];
      relayPids[path] = () => pids;
    }
    if (settings.paths.has('minimal') && loadTests) {
      const started = await startMinimalRelay(processes, dir, stackConfig, 'minimal-load');
      running.push(started.stack);
      paths.http.minimal = { base: started.stack.plainUrl, headers };
      paths.h2c.minimal = { base: started.h2cUrl, headers, path: '/h2/1k' };
      const pids = [started.stack.gateway.child.pid ?? 0, started.stack.agent.child.pid ?? 0];
      relayPids.minimal = () => pids;
      log(`minimal Node relay at ${started.stack.plainUrl} (h2c ${started.h2cUrl})`);
    }
    // Each ssh variant gets its own sshd, so that the CPU of one is not counted for the other.
    for (const [path, variant] of SSH_PATH_VARIANTS) {
      if (!settings.paths.has(path) || !loadTests) continue;
      try {
        const ssh = await startSshTunnel(processes, join(dir, path), [ports.http, ports.h2c], variant);
        notes.push(...ssh.notes);
        const [httpPort, h2cPort] = ssh.ports;
        log(`${path} (${SSH_VARIANTS[variant]}) forwards 127.0.0.1:${String(httpPort)} → :${ports.http} and 127.0.0.1:${String(h2cPort)} → :${ports.h2c}`);
        paths.http[path] = { base: `http://127.0.0.1:${String(httpPort)}`, headers };
        paths.h2c[path] = { base: `http://127.0.0.1:${String(h2cPort)}`, headers, path: '/1k' };
        relayPids[path] = ssh.pids;
      } catch (reason) {
        if (!(reason instanceof Skip)) throw reason;
        skipped.push(`${path} (its column is skipped): ${reason.message}`);
      }
    }

    const order = PATH_NAMES;
    const { durationSec: seconds, warmupSec: warmup } = settings;
    const upstreamPid = upstream.child.pid ?? 0;
    const sumCpu = (pids: number[]): number => pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
    /**
     * Run `measure` against each path (a warm-up first), with the CPU time the relay processes
     * (gateway + agent, or ssh + sshd) and the upstream used during the measurement, per unit of
     * work (`unitsOf`: requests, or megabytes for the download).
     */
    const measureEach = async <T extends object>(
      load: Load,
      what: string,
      targets: Partial<Record<PathName, LoadTarget>>,
      unitsOf: (result: T) => number,
      unit: 'UsPerRequest' | 'MsPerMB',
      measure: (target: LoadTarget, warm: boolean) => Promise<T>,
    ): Promise<void> => {
      const row: Partial<Record<PathName, object>> = {};
      for (const name of order) {
        const target = targets[name];
        if (target === undefined) continue;
        if (warmup > 0) await measure(target, true);
        const before = load1();
        const pids = relayPids[name]?.() ?? [];
        const relayBefore = sumCpu(pids);
        const upstreamBefore = cpuSeconds(upstreamPid);
        const result = await measure(target, false);
        const relayCpuSec = sumCpu(pids) - relayBefore;
        const upstreamCpuSec = cpuSeconds(upstreamPid) - upstreamBefore;
        const units = unitsOf(result);
        const scale = unit === 'UsPerRequest' ? 1e6 : 1e3;
        const per = (sec: number): number => (units > 0 ? Math.round((sec * scale * 10) / units) / 10 : NaN);
        row[name] = {
          ...result,
          load1: before,
          relayCpuSec: Math.round(relayCpuSec * 100) / 100,
          upstreamCpuSec: Math.round(upstreamCpuSec * 100) / 100,
          [`relayCpu${unit}`]: name === 'direct' ? null : per(relayCpuSec),
          [`upstreamCpu${unit}`]: per(upstreamCpuSec),
        };
        log(`${what} ${name}: ${JSON.stringify(row[name])}`);
      }
      rows[load] = row;
    };

    if (settings.loads.has('wrk64') && has('wrk')) {
      await measureEach<WrkResult>('wrk64', 'wrk -t2 -c64', paths.http, (r) => r.requests, 'UsPerRequest', (t, warm) => wrk(processes, t, '/1k', 2, 64, warm ? warmup : seconds));
    }
    if (settings.loads.has('wrk1') && has('wrk')) {
      await measureEach<WrkResult>('wrk1', 'wrk -t1 -c1', paths.http, (r) => r.requests, 'UsPerRequest', (t, warm) => wrk(processes, t, '/1k', 1, 1, warm ? warmup : seconds));
    }
    if (settings.loads.has('h2load') && has('h2load')) {
      await measureEach<H2loadResult>('h2load', 'h2load -c64 -m10', paths.h2c, (r) => r.succeeded, 'UsPerRequest', (t, warm) => h2load(processes, t, (t as LoadTarget & { path: string }).path, 64, 10, warm ? warmup : seconds));
    }
    if (settings.loads.has('download') && has('curl')) {
      await measureEach<{ megabytesPerSec: number; runsMBps: number[]; megabytes: number }>('download', 'download 256 MiB', paths.http, (r) => r.megabytes, 'MsPerMB', async (t, warm) => {
        if (warm) {
          const once = await download(processes, t, '/256m', DOWNLOAD_BYTES_TOTAL, 120);
          return { megabytesPerSec: once.megabytesPerSec, runsMBps: [], megabytes: 0 };
        }
        const runs = [];
        for (let i = 0; i < settings.downloads; i++) runs.push(await download(processes, t, '/256m', DOWNLOAD_BYTES_TOTAL, 120));
        runs.sort((a, b) => a.megabytesPerSec - b.megabytesPerSec);
        const median = runs[Math.floor(runs.length / 2)] ?? runs[0];
        return { megabytesPerSec: median?.megabytesPerSec ?? 0, runsMBps: runs.map((r) => Math.round(r.megabytesPerSec)), megabytes: (runs.length * DOWNLOAD_BYTES_TOTAL) / 1e6 };
      });
    }
    for (const stack of running.splice(0)) {
      await processes.stop(stack.agent);
      await processes.stop(stack.gateway);
    }

    const websocket: WebSocketRows = {};
    const websocketPaths = TETHER_PATHS.filter((path) => settings.paths.has(path));
    if (settings.loads.has('websocket') && websocketPaths.length > 0) {
      const config = { ...stackConfig, maxConcurrentStreams: settings.websockets + 100 };
      const measure = async (start: () => Promise<Stack>): Promise<Record<string, unknown>> => {
        const runs: Array<Record<string, unknown>> = [];
        for (let run = 0; run < settings.websocketRuns; run++) runs.push(await idleWebSockets(processes, start, settings.websockets, upstream, client.token, config.maxConcurrentStreams));
        const total = (r: Record<string, unknown>): number => (r.kibPerSocket as { total: number }).total;
        const sorted = [...runs].sort((a, b) => total(a) - total(b));
        return { ...sorted[Math.floor((sorted.length - 1) / 2)], runs: runs.map((r) => ({ settled: r.kibPerSocket, at2s: r.kibPerSocketAt2s })) };
      };
      for (const path of websocketPaths) {
        log(`idle WebSockets through ${path}`);
        websocket[path] = await measure(() => startStack(processes, dir, { ...config, binding: BINDINGS[path] }, profileDir, `${path}-websocket`, { authorization: `Bearer ${client.token}` }));
      }
      // The same through the minimal Node relay: what Node's HTTP/2 and sockets alone hold.
      if (settings.paths.has('minimal')) websocket.minimal = await measure(async () => (await startMinimalRelay(processes, dir, config, 'minimal-websocket')).stack);
    }

    for (const line of skipped) log(`SKIPPED ${line}`);
    loadAverage.end = load1();
    const targets = targetChecks(rows, websocket);
    const table = formatTable(rows, websocket, targets);
    process.stderr.write(`\n${table}\n`);
    return {
      settings: {
        durationSec: seconds,
        warmupSec: warmup,
        downloads: settings.downloads,
        websockets: settings.websockets,
        websocketRuns: settings.websocketRuns,
        wrk: ['-t2 -c64 --latency', '-t1 -c1 --latency'],
        h2load: '-c64 -m10 -t1 (h2c prior knowledge)',
        paths: order.filter((path) => settings.paths.has(path)),
        loads: LOADS.filter((load) => settings.loads.has(load)),
        pathLabels: PATH_LABELS,
        bindings: BINDINGS,
        sshCipher: 'aes128-gcm@openssh.com',
        sshVariants: Object.fromEntries(SSH_PATH_VARIANTS.map(([path, variant]) => [path, SSH_VARIANTS[variant]])),
        tunnel: 'gateway and agent in separate processes, 2 tunnel connections, default windows (4 MiB stream, 64 MiB connection), clients authenticated by an ES256 bearer JWT (verified-token cache on, the default)',
      },
      loadAverage,
      wallSeconds: Math.round((Date.now() - started) / 1000),
      rows,
      websocket,
      targets,
      table,
      skipped,
      notes,
    };
  } finally {
    await processes.stopAll();
    await rm(dir, { recursive: true, force: true });
    process.off('exit', onExit);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** Memory of both processes once their committed heaps stop moving (see SETTLE_STEP_MS). */
async function settled(stack: Stack): Promise<{ reading: { gateway: Memory; agent: Memory }; seconds: number }> {
  const started = Date.now();
  let last = { gateway: await memory(stack.gateway), agent: await memory(stack.agent) };
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, SETTLE_STEP_MS));
    const now = { gateway: await memory(stack.gateway), agent: await memory(stack.agent) };
    const moved = Math.max(Math.abs(now.gateway.heapCommitted - last.gateway.heapCommitted), Math.abs(now.agent.heapCommitted - last.agent.heapCommitted));
    last = now;
    if (moved <= SETTLE_TOLERANCE || Date.now() - started >= SETTLE_MAX_MS) return { reading: now, seconds: Math.round((Date.now() - started) / 1000) };
  }
}

/** RSS of fresh gateway and agent processes before and after `count` idle WebSockets through them. */
async function idleWebSockets(processes: Processes, start: () => Promise<Stack>, count: number, upstream: Tracked, token: string, maxConcurrentStreams: number): Promise<Record<string, unknown>> {
  const stack = await start();
  try {
    // Warm up the code paths (JIT, parsers, pools) so the baseline is not an empty process.
    const warm = processes.spawnNode('websocket warm-up', 'tunnel-ws-clients.ts', [stack.plainUrl, '200', CLUSTER_HEADER, `authorization: Bearer ${token}`]);
    const warmed = await nextMessage(warm, ofType<Extract<WsClientsMessage, { type: 'opened' }>>('opened'), 60_000, 'warm-up WebSockets');
    if (warmed.failed > 0) throw new Error(`warm-up WebSockets failed: ${String(warmed.firstError)}`);
    await processes.stop(warm);
    // The baseline settles the same way as the steady-state reading (a baseline taken while the
    // warm-up's garbage still sat in uncompacted pages would flatter the difference).
    const before = (await settled(stack)).reading;
    log(`idle WebSockets: baseline RSS gateway ${mib(before.gateway.rss)}, agent ${mib(before.agent.rss)}; opening ${count}`);
    const clients = processes.spawnNode('websocket clients', 'tunnel-ws-clients.ts', [stack.plainUrl, String(count), CLUSTER_HEADER, `authorization: Bearer ${token}`]);
    const opened = await nextMessage(clients, ofType<Extract<WsClientsMessage, { type: 'opened' }>>('opened'), 300_000, `${count} WebSockets`);
    upstream.child.send({ type: 'count' });
    const atUpstream = await nextMessage(upstream, ofType<{ type: 'count'; webSockets: number }>('count'), 10_000, 'upstream WebSocket count');
    // Two readings: 2 s after the last one opened (the heap still holds the garbage of the opening
    // burst, in pages V8 has not compacted yet) and once the heaps have settled: the steady state
    // of idle connections, which the target is checked on.
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    const early = { gateway: await memory(stack.gateway), agent: await memory(stack.agent) };
    const { reading: after, seconds: settleSeconds } = await settled(stack);
    const perSocket = (bytes: number): number => (opened.ok > 0 ? Math.round((bytes / opened.ok / 1024) * 10) / 10 : NaN);
    type Field = 'rss' | 'heapUsed' | 'external' | 'arrayBuffers' | 'newSpaceCommitted' | 'heapCommitted';
    const delta = (field: Field, who: 'gateway' | 'agent', at = after): number => at[who][field] - before[who][field];
    const result = {
      requested: count,
      opened: opened.ok,
      failed: opened.failed,
      firstError: opened.firstError,
      openSeconds: Math.round(opened.ms / 100) / 10,
      heldAtUpstream: atUpstream.webSockets,
      settleSeconds,
      rssBeforeMiB: { gateway: toMiB(before.gateway.rss), agent: toMiB(before.agent.rss) },
      rssAfterMiB: { gateway: toMiB(after.gateway.rss), agent: toMiB(after.agent.rss) },
      kibPerSocket: {
        gateway: perSocket(delta('rss', 'gateway')),
        agent: perSocket(delta('rss', 'agent')),
        total: perSocket(delta('rss', 'gateway') + delta('rss', 'agent')),
      },
      /** The same 2 s after opening, before the heap settled. */
      kibPerSocketAt2s: {
        gateway: perSocket(delta('rss', 'gateway', early)),
        agent: perSocket(delta('rss', 'agent', early)),
        total: perSocket(delta('rss', 'gateway', early) + delta('rss', 'agent', early)),
      },
      /** Of which on the JS heap (after a full GC), and in external memory (Buffers and the like). */
      heapKibPerSocket: { gateway: perSocket(delta('heapUsed', 'gateway')), agent: perSocket(delta('heapUsed', 'agent')) },
      externalKibPerSocket: { gateway: perSocket(delta('external', 'gateway')), agent: perSocket(delta('external', 'agent')) },
      heapCommittedMiB: {
        before: { gateway: toMiB(before.gateway.heapCommitted), agent: toMiB(before.agent.heapCommitted) },
        at2s: { gateway: toMiB(early.gateway.heapCommitted), agent: toMiB(early.agent.heapCommitted) },
        after: { gateway: toMiB(after.gateway.heapCommitted), agent: toMiB(after.agent.heapCommitted) },
      },
      newSpaceMiB: { before: { gateway: toMiB(before.gateway.newSpaceCommitted), agent: toMiB(before.agent.newSpaceCommitted) }, after: { gateway: toMiB(after.gateway.newSpaceCommitted), agent: toMiB(after.agent.newSpaceCommitted) } },
      agentMaxConcurrentStreams: maxConcurrentStreams,
    };
    log(`idle WebSockets: ${JSON.stringify(result)}`);
    await processes.stop(clients);
    return result;
  } finally {
    await processes.stop(stack.agent);
    await processes.stop(stack.gateway);
  }
}

function toMiB(bytes: number): number {
  return Math.round((bytes / 2 ** 20) * 10) / 10;
}

function mib(bytes: number): string {
  return `${toMiB(bytes)} MiB`;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = await run(process.argv.slice(2));
  process.stdout.write(`${String(results.table)}\n\n${JSON.stringify(results, null, 2)}\n`);
}
