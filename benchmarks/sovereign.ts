/**
 * Sovereign benchmark (issue 10, last "Must show"): the customer's load balancer in front of
 * tether's built-in router, against the same load balancer in front of the upstream directly, in
 * one run on loopback:
 *
 * - `direct`: wrk → HAProxy (terminates TLS with the customer's certificate, `mode tcp`) →
 *   upstream (HTTP/1.1);
 * - `sovereign`: wrk → HAProxy (`mode tcp`, TLS passed through, `send-proxy-v2`) → the router's
 *   sovereign listener (PROXY protocol v2 required, TLS with the customer's certificate,
 *   jwt_authn against the IdP's remote JWKS, RBAC on a token claim and the client address from
 *   the PROXY header, a claim-to-header) → the same upstream. `--tls=reencrypt` instead has
 *   HAProxy terminate the client's TLS and open its own TLS connection to the router (`ssl verify
 *   required`), as a customer who needs HTTP-level access at the load balancer would run it;
 * - `floor`: the same as `sovereign` with a bare Node relay of the router's shape in the router's
 *   place (`sovereign-floor.ts`: PROXY header, TLS, Node's HTTP/1.1 server and client, nothing
 *   else): what any single-process Node front pays here, so what the router costs above it is its
 *   own work.
 *
 * The upstream (`tunnel-upstream.ts`, 1 KiB answers), the router (`sovereign-router.ts`, started
 * as the agent starts it: `AgentXds.setSovereign`), the floor relay, HAProxy (one thread) and wrk
 * are separate processes, so each one's CPU is read on its own. Before measuring, one request of each kind
 * checks that the paths answer what they should (sovereign: a valid token → 200 with 1 KiB, none
 * → 401, a token without the role → 403; direct: 200), so that refusals cannot be measured; every
 * measured run must also come back without a non-2xx answer or socket error, and the router's own
 * count of refusals must not grow during the runs.
 *
 * Load: `wrk -t2 -c64` with the bearer token header on `/data/1k`, `--runs` rounds of the three
 * paths (the order reversed every other round, a warm-up before each measured run), medians
 * reported: requests/s, p50, p99, and CPU µs per request of the router (or floor relay), HAProxy
 * and the upstream. The target is sovereign ≥ 0.5× the direct requests/s (median of the rounds'
 * ratios, each round's paths measured one after the other). The 1-minute load average is noted
 * before each run.
 *
 * Options: `--duration=S` (10), `--warmup=S` (2), `--runs=N` (3), `--tls=passthrough|reencrypt`
 * (passthrough), `--profile` (a CPU profile of the router into
 * `benchmarks/results/profiles/sovereign-router/`, summarized in the results), `--quick` (duration
 * 2, warm-up 1, 1 round), `--help`. Run with `npm run bench -- sovereign` (writes
 * `benchmarks/results/sovereign.json`) or directly with `node --import ./bin/typescript.js
 * benchmarks/sovereign.ts` (writes nothing). Needs `wrk` and `haproxy` (Debian packages of those
 * names).
 */
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import * as https from 'node:https';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { DevOidcIssuer } from '../certs/dev-oidc-issuer.js';
import { CertificateAuthority } from '../certs/index.js';
import { HAPROXY_PACKAGE, findHaproxy, startHaproxy, type Haproxy } from '../cli/haproxy.js';
import type { SovereignRelayConfig, SovereignRelayMessage } from './sovereign-relay.js';
import { summarizeProfileFile, type ProfileSummary } from './sovereign-profile.js';
import { TOOL_PACKAGES, wrk, type LoadTarget, type WrkResult } from './tunnel-load.js';
import { Processes, cpuSeconds, descendants, freePort, nextMessage, ofType, which, type Tracked } from './tunnel-processes.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const PATHS = ['direct', 'sovereign', 'floor'] as const;
type PathName = (typeof PATHS)[number];
/** The paths with a relay of ours between HAProxy and the upstream, and the script each runs. */
const RELAYS = { sovereign: 'sovereign-router.ts', floor: 'sovereign-floor.ts' } as const;
type RelayPath = keyof typeof RELAYS;
const TLS_MODES = ['passthrough', 'reencrypt'] as const;
type TlsMode = (typeof TLS_MODES)[number];
/** RBAC admits this prefix; the upstream answers 1 KiB on any path. */
const ADMITTED_PREFIX = '/data/';
const REQUEST_PATH = `${ADMITTED_PREFIX}1k`;
const AUDIENCE = 'tether-data';
const TARGET_RATIO = 0.5;
const THREADS = 2;
const CONNECTIONS = 64;

interface Settings {
  durationSec: number;
  warmupSec: number;
  runs: number;
  tls: TlsMode;
  profile: boolean;
}

const USAGE = `usage: npm run bench -- sovereign [options]   (writes benchmarks/results/sovereign.json)
  --duration=S     seconds per measured wrk run (10)
  --warmup=S       seconds of warm-up before each, 0 for none (2)
  --runs=N         rounds of the three paths, medians reported (3)
  --tls=MODE       passthrough (HAProxy mode tcp, the router terminates TLS) or reencrypt (HAProxy terminates, then TLS to the router) (passthrough)
  --profile        CPU profile of the router into benchmarks/results/profiles/sovereign-router/, summarized in the results
  --quick          smoke test: --duration=2 --warmup=1 --runs=1 (explicit options win)
  --help           this text`;

function parseSettings(args: readonly string[]): Settings {
  const quick = args.includes('--quick');
  const given = (name: string): string | undefined => args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const whole = (name: string, fallback: number, quickValue: number, min: number): number => {
    const text = given(name);
    if (text === undefined) return quick ? quickValue : fallback;
    const value = Number(text);
    if (!Number.isInteger(value) || value < min) throw new Error(`--${name}=${text}: a whole number ≥ ${min} is needed\n${USAGE}`);
    return value;
  };
  const tls = given('tls') ?? 'passthrough';
  if (!(TLS_MODES as readonly string[]).includes(tls)) throw new Error(`--tls=${tls}: one of ${TLS_MODES.join(', ')}\n${USAGE}`);
  return { durationSec: whole('duration', 10, 2, 1), warmupSec: whole('warmup', 2, 1, 0), runs: whole('runs', 3, 1, 1), tls: tls as TlsMode, profile: args.includes('--profile') };
}

function log(message: string): void {
  process.stderr.write(`[sovereign] ${message}\n`);
}

function load1(): number {
  return Math.round((loadavg()[0] ?? 0) * 100) / 100;
}

function middle(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? NaN;
}

/** CPU µs per request, one decimal. */
function perRequest(cpuSec: number, requests: number): number {
  return requests > 0 ? Math.round((cpuSec * 1e7) / requests) / 10 : NaN;
}

/** The pid of the HAProxy started with `configFile` (a child of this process), from /proc. */
function haproxyPid(configFile: string): number {
  for (const pid of descendants(process.pid)) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(configFile)) return pid;
    } catch {
      // gone
    }
  }
  throw new Error(`no HAProxy process with ${configFile} among this process's children`);
}

/**
 * Run `cleanup` (synchronous) when the process exits, or is interrupted by SIGINT or SIGTERM (then
 * re-raised), before the caller's `finally`; the returned function withdraws it.
 */
function onAbort(cleanup: () => void): () => void {
  const signalled = (signal: NodeJS.Signals): void => {
    cleanup();
    process.kill(process.pid, signal);
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  process.once('exit', cleanup);
  for (const signal of signals) process.once(signal, signalled);
  return () => {
    process.off('exit', cleanup);
    for (const signal of signals) process.off(signal, signalled);
  };
}

interface Reply {
  status: number;
  code: string | null;
  bytes: number;
}

/** One HTTPS request on a fresh connection, the certificate verified against the customer's CA. */
function ask(port: number, ca: string, headers: Record<string, string>): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, path: REQUEST_PATH, servername: 'localhost', ca, agent: false, headers: { connection: 'close', ...headers }, timeout: 5_000 }, (res) => {
      let bytes = 0;
      res.on('data', (chunk: Buffer) => (bytes += chunk.length));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, code: typeof res.headers['tether-error'] === 'string' ? res.headers['tether-error'] : null, bytes }));
      res.once('error', reject);
    });
    req.once('timeout', () => req.destroy(new Error('no answer within 5 s')));
    req.once('error', reject);
    req.end();
  });
}

/** HAProxy's frontends and backends: one pair for each path, on loopback ports. */
function haproxySections(tls: TlsMode, ports: Record<PathName, number>, relayPorts: Record<RelayPath, number>, upstreamPort: number, pem: string, caFile: string): string {
  const toRelay = tls === 'passthrough' ? 'send-proxy-v2' : `ssl verify required ca-file ${caFile} sni str(localhost) send-proxy-v2`;
  const relay = (path: RelayPath): string => `
frontend ${path}
  bind 127.0.0.1:${ports[path]}${tls === 'passthrough' ? '' : ` ssl crt ${pem}`}
  default_backend ${path}_relay
backend ${path}_relay
  server ${path} 127.0.0.1:${relayPorts[path]} ${toRelay}
`;
  return `
frontend direct
  bind 127.0.0.1:${ports.direct} ssl crt ${pem}
  default_backend upstream
backend upstream
  server upstream 127.0.0.1:${upstreamPort}
${relay('sovereign')}${relay('floor')}`;
}

interface Row extends WrkResult {
  round: number;
  load1: number;
  /** Connections the router (or floor relay) accepted (PROXY header and TLS done) during the run; wrk opens 64. */
  relayConnections: number | null;
  /** CPU of the router (`sovereign`) or the floor relay (`floor`). */
  relayCpuUsPerRequest: number | null;
  haproxyCpuUsPerRequest: number;
  upstreamCpuUsPerRequest: number;
}

type Counts = Extract<SovereignRelayMessage, { type: 'counts' }>;

const SUMMARY_FIELDS = ['requestsPerSec', 'p50Ms', 'p99Ms', 'relayCpuUsPerRequest', 'haproxyCpuUsPerRequest', 'upstreamCpuUsPerRequest'] as const;
type Summary = Record<(typeof SUMMARY_FIELDS)[number], number | null>;

/** Medians of a path's rounds (null where the path has no such figure). */
function summarize(rows: readonly Row[]): Summary {
  const entries = SUMMARY_FIELDS.map((field) => {
    const values = rows.map((row) => row[field]).filter((value): value is number => value !== null);
    return [field, values.length === 0 ? null : middle(values)] as const;
  });
  return Object.fromEntries(entries) as Summary;
}

export async function run(args: string[] = []): Promise<Record<string, unknown>> {
  if (args.includes('--help')) {
    // Exit here, so that `npm run bench -- sovereign --help` does not write a results file either.
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const settings = parseSettings(args);
  const haproxyBinary = findHaproxy();
  const missing = [...(which('wrk') === null ? [`wrk (Debian package ${TOOL_PACKAGES.wrk ?? 'wrk'})`] : []), ...(haproxyBinary === null ? [`haproxy (Debian package ${HAPROXY_PACKAGE})`] : [])];
  if (haproxyBinary === null || missing.length > 0) throw new Error(`the sovereign benchmark needs ${missing.join(' and ')}`);

  const processes = new Processes();
  const dir = await mkdtemp(join(tmpdir(), 'tether-bench-sovereign-'));
  const idp = new DevOidcIssuer();
  let haproxy: Haproxy | null = null;
  let haproxyProcess = 0;
  // Interrupted or exiting without reaching `finally`: kill every child (HAProxy too) and drop the keys folder.
  const release = onAbort(() => {
    processes.killAllNow();
    if (haproxyProcess > 0) {
      try {
        process.kill(haproxyProcess, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });
  const loadAverage: Record<string, number> = { start: load1() };
  const started = Date.now();
  try {
    const upstream = processes.spawnNode('upstream', 'tunnel-upstream.ts', []);
    const { http: upstreamPort } = await nextMessage(upstream, ofType<{ type: 'ready'; http: number }>('ready'), 30_000, 'upstream ready');

    // The customer's PKI, certificate (the router's and HAProxy's) and IdP (ES256, JWKS over http on loopback).
    const ca = await CertificateAuthority.create({ trustDomain: 'customer.bench' });
    const certificate = await ca.issueServer({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
    const caPem = ca.trustBundlePem();
    const pem = join(dir, 'customer.pem');
    const caFile = join(dir, 'customer-ca.pem');
    await writeFile(pem, `${certificate.chainPem.trim()}\n${(certificate.privateKeyPem ?? '').trim()}\n`, { mode: 0o600 });
    await writeFile(caFile, caPem);
    await idp.listen();
    const token = await idp.mint({ subject: 'bench-client', audience: AUDIENCE, ttlSec: 7200, claims: { roles: ['reader'] } });
    const wrongRole = await idp.mint({ subject: 'bench-client', audience: AUDIENCE, ttlSec: 600, claims: { roles: ['writer'] } });

    const relayFile = join(dir, 'relay.json');
    const relayConfig: SovereignRelayConfig = { certificateChainPem: certificate.chainPem, privateKeyPem: certificate.privateKeyPem ?? '', issuer: idp.issuer, audience: AUDIENCE, jwksUri: idp.jwksUri, upstreamPort, admittedPrefix: ADMITTED_PREFIX };
    await writeFile(relayFile, JSON.stringify(relayConfig), { mode: 0o600 });
    const profileDir = settings.profile ? join(HERE, 'results', 'profiles', 'sovereign-router') : null;
    if (profileDir !== null) {
      await rm(profileDir, { recursive: true, force: true });
      await mkdir(profileDir, { recursive: true });
    }
    const startRelay = async (path: RelayPath): Promise<{ entry: Tracked; port: number }> => {
      const nodeArgs = path === 'sovereign' && profileDir !== null ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [];
      const entry = processes.spawnNode(path === 'sovereign' ? 'router' : 'floor relay', RELAYS[path], [relayFile], nodeArgs);
      const { port } = await nextMessage(entry, ofType<Extract<SovereignRelayMessage, { type: 'ready' }>>('ready'), 30_000, `${path} relay ready`);
      return { entry, port };
    };
    const relays: Record<RelayPath, { entry: Tracked; port: number }> = { sovereign: await startRelay('sovereign'), floor: await startRelay('floor') };
    const router = relays.sovereign.entry;
    const counts = async (path: RelayPath): Promise<Counts> => {
      relays[path].entry.child.send({ type: 'counts' });
      return nextMessage(relays[path].entry, ofType<Counts>('counts'), 10_000, `${path} request counts`);
    };

    const ports: Record<PathName, number> = { direct: await freePort(), sovereign: await freePort(), floor: await freePort() };
    haproxy = await startHaproxy(haproxyBinary, dir, haproxySections(settings.tls, ports, { sovereign: relays.sovereign.port, floor: relays.floor.port }, upstreamPort, pem, caFile));
    haproxyProcess = haproxyPid(haproxy.configFile);
    log(`upstream :${upstreamPort}, router :${relays.sovereign.port}, floor relay :${relays.floor.port}, HAProxy (pid ${haproxyProcess}, TLS ${settings.tls}) direct :${ports.direct}, sovereign :${ports.sovereign}, floor :${ports.floor}`);

    // What each path answers, before anything is measured.
    const bearer = { authorization: `Bearer ${token}` };
    const checks = {
      sovereignWithToken: await ask(ports.sovereign, caPem, bearer),
      sovereignWithoutToken: await ask(ports.sovereign, caPem, {}),
      sovereignWrongRole: await ask(ports.sovereign, caPem, { authorization: `Bearer ${wrongRole}` }),
      directWithToken: await ask(ports.direct, caPem, bearer),
      floorWithToken: await ask(ports.floor, caPem, bearer),
    };
    log(`checks: ${JSON.stringify(checks)}`);
    const expected: Array<[keyof typeof checks, number, string | null]> = [
      ['sovereignWithToken', 200, null],
      ['sovereignWithoutToken', 401, 'UNAUTHENTICATED'],
      ['sovereignWrongRole', 403, 'RBAC_DENIED'],
      ['directWithToken', 200, null],
      ['floorWithToken', 200, null],
    ];
    for (const [name, status, code] of expected) {
      const reply = checks[name];
      if (reply.status !== status || reply.code !== code || (status === 200 && reply.bytes !== 1024)) {
        throw new Error(`check ${name}: expected ${status}${code === null ? '' : ` ${code}`}, got ${JSON.stringify(reply)}\n${haproxy.output()}${router.output()}`);
      }
    }
    const refusalsOf = (read: Counts): number => Object.entries(read.requests).reduce((sum, [code, n]) => sum + (code === 'OK' ? 0 : n), 0);
    const accepted = async (path: PathName): Promise<number | null> => (path === 'direct' ? null : ((await counts(path)).connections.accepted ?? 0));
    const before = await counts('sovereign');

    const upstreamPid = upstream.child.pid ?? 0;
    const rows: Record<PathName, Row[]> = { direct: [], sovereign: [], floor: [] };
    const load = (path: PathName, seconds: number): Promise<WrkResult> => {
      const target: LoadTarget = { base: `https://127.0.0.1:${ports[path]}`, headers: [`authorization: Bearer ${token}`] };
      return wrk(processes, target, REQUEST_PATH, THREADS, CONNECTIONS, seconds);
    };
    for (let round = 1; round <= settings.runs; round++) {
      for (const path of round % 2 === 1 ? PATHS : [...PATHS].reverse()) {
        if (settings.warmupSec > 0) await load(path, settings.warmupSec);
        const load1Before = load1();
        const relayPid = path === 'direct' ? 0 : (relays[path].entry.child.pid ?? 0);
        const acceptedBefore = await accepted(path);
        const relayBefore = cpuSeconds(relayPid);
        const haproxyBefore = cpuSeconds(haproxyProcess);
        const upstreamBefore = cpuSeconds(upstreamPid);
        const result = await load(path, settings.durationSec);
        const relayCpu = cpuSeconds(relayPid) - relayBefore;
        const acceptedAfter = await accepted(path);
        if (result.errors > 0) throw new Error(`${path} round ${round}: ${result.errors} non-2xx answers or socket errors in ${result.requests} requests: the run measured failures\n${haproxy.output()}${router.output()}`);
        const row: Row = {
          round,
          ...result,
          load1: load1Before,
          relayConnections: acceptedAfter === null || acceptedBefore === null ? null : acceptedAfter - acceptedBefore,
          relayCpuUsPerRequest: path === 'direct' ? null : perRequest(relayCpu, result.requests),
          haproxyCpuUsPerRequest: perRequest(cpuSeconds(haproxyProcess) - haproxyBefore, result.requests),
          upstreamCpuUsPerRequest: perRequest(cpuSeconds(upstreamPid) - upstreamBefore, result.requests),
        };
        rows[path].push(row);
        log(`round ${round} ${path}: ${JSON.stringify(row)}`);
      }
    }
    const after = await counts('sovereign');
    const refusedDuringRuns = refusalsOf(after) - refusalsOf(before);
    if (refusedDuringRuns > 0) throw new Error(`the router refused ${refusedDuringRuns} requests during the runs: ${JSON.stringify(after.requests)}`);
    loadAverage.end = load1();

    const medians: Record<PathName, Summary> = { direct: summarize(rows.direct), sovereign: summarize(rows.sovereign), floor: summarize(rows.floor) };
    const ratiosOf = (path: RelayPath): number[] => rows[path].map((row, i) => Math.round((row.requestsPerSec / (rows.direct[i]?.requestsPerSec ?? NaN)) * 1000) / 1000);
    const roundRatios = ratiosOf('sovereign');
    const ratio = middle(roundRatios);
    const floorRatio = middle(ratiosOf('floor'));
    const target = {
      measure: 'sovereign requests/s ÷ direct requests/s (median of the rounds, each round\'s paths measured one after the other)',
      required: TARGET_RATIO,
      ratio,
      roundRatios,
      /** The same for the bare Node relay: the most a single-process Node front of this shape reaches here. */
      floorRatio,
      floorRoundRatios: ratiosOf('floor'),
      met: ratio >= TARGET_RATIO,
      ...(ratio >= TARGET_RATIO ? {} : { shortBy: `${Math.round((1 - ratio / TARGET_RATIO) * 100)}% below the ${TARGET_RATIO}× target (sovereign would need ${Math.round(TARGET_RATIO * (medians.direct.requestsPerSec ?? 0))} requests/s)` }),
    };
    log(`medians: ${JSON.stringify(medians)}; ratio ${ratio} (${target.met ? 'met' : 'NOT met'}), floor ${floorRatio}; router counts ${JSON.stringify(after)}`);

    await processes.stop(router);
    let profile: ProfileSummary[] | null = null;
    if (profileDir !== null) {
      const files = readdirSync(profileDir).filter((name) => name.endsWith('.cpuprofile'));
      // The module-loader thread writes a small profile of its own: the largest is the main thread's.
      profile = (await Promise.all(files.map((name) => summarizeProfileFile(join(profileDir, name))))).sort((a, b) => b.busyMs - a.busyMs).slice(0, 1);
    }
    return {
      settings: {
        durationSec: settings.durationSec,
        warmupSec: settings.warmupSec,
        runs: settings.runs,
        wrk: `-t${THREADS} -c${CONNECTIONS} --latency, GET ${REQUEST_PATH} (1 KiB answer) with an ES256 bearer token, over TLS from wrk`,
        tls: settings.tls,
        haproxy: 'one thread, mode tcp on every frontend',
        paths: {
          direct: 'wrk → HAProxy (terminates TLS) → upstream',
          sovereign:
            settings.tls === 'passthrough'
              ? 'wrk → HAProxy (TLS passthrough, send-proxy-v2) → router sovereign listener (PROXY v2 required, TLS, jwt_authn with remote JWKS cached, RBAC on claim + client address, claim-to-header) → upstream'
              : 'wrk → HAProxy (terminates TLS, re-encrypts with verify required, send-proxy-v2) → router sovereign listener (PROXY v2 required, TLS, jwt_authn with remote JWKS cached, RBAC on claim + client address, claim-to-header) → upstream',
          floor: 'as sovereign, with a bare Node relay (PROXY header, TLS, Node http server + keep-alive client, nothing else) in the router\'s place',
        },
      },
      loadAverage,
      wallSeconds: Math.round((Date.now() - started) / 1000),
      checks,
      routerCounts: { requests: after.requests, connections: after.connections },
      runs: rows,
      medians,
      target,
      table: formatTable(medians, target),
      ...(profile === null ? {} : { profile }),
    };
  } finally {
    await haproxy?.stop();
    await processes.stopAll();
    await idp.close();
    await rm(dir, { recursive: true, force: true });
    release();
  }
}

/** The README table of the medians. */
function formatTable(medians: Record<PathName, Summary>, target: { ratio: number; floorRatio: number; required: number; met: boolean }): string {
  const cell = (value: number | null | undefined, digits: number): string => (value === null || value === undefined || Number.isNaN(value) ? '–' : value.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }));
  const lines: Array<[string, keyof Summary, number]> = [
    ['requests/s', 'requestsPerSec', 0],
    ['p50 ms', 'p50Ms', 2],
    ['p99 ms', 'p99Ms', 2],
    ['router (or floor relay) CPU µs/request', 'relayCpuUsPerRequest', 1],
    ['HAProxy CPU µs/request', 'haproxyCpuUsPerRequest', 1],
    ['upstream CPU µs/request', 'upstreamCpuUsPerRequest', 1],
  ];
  return [
    '| measure (median) | HAProxy → upstream (`direct`) | HAProxy → router → upstream (`sovereign`) | HAProxy → bare Node relay → upstream (`floor`) |',
    '| --- | ---: | ---: | ---: |',
    ...lines.map(([label, key, digits]) => `| ${label} | ${PATHS.map((path) => cell(medians[path][key], digits)).join(' | ')} |`),
    `| ÷ direct requests/s | | ${target.ratio.toFixed(2)}× (target ≥ ${target.required}×: ${target.met ? 'met' : '**not met**'}) | ${target.floorRatio.toFixed(2)}× |`,
  ].join('\n');
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = await run(process.argv.slice(2));
  process.stdout.write(`${String(results.table)}\n\n${JSON.stringify(results, null, 2)}\n`);
}
