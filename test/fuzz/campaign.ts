/**
 * The fuzz campaign: a real gateway, real agents and an HTTP/1.1 upstream (test/helpers), then
 * seeded, time-boxed cases against each target in turn, in batches; after every batch the gateway
 * and the agents must still serve normal authenticated requests, every tunnel stream must have
 * closed, what reached the upstream must have been authenticated, and every `tether-error` a
 * client was answered with must be counted in `tether_gateway_request_errors_total`.
 *
 * Targets (files of their own):
 *   h1       the HTTP/1.1 front door, plain and TLS (h1-cases.ts)
 *   h2       the HTTP/2 front door, h2c prior knowledge, raw frames (h2-cases.ts)
 *   agent    the tunnel from the agent's side: a fake agent with a valid certificate (tunnel-cases.ts)
 *   gateway  the tunnel from the gateway's side: a fake gateway a real agent dials (tunnel-cases.ts)
 *
 * Case `i` of a campaign draws everything from `caseRandom(seed, i)`, so `only: i` (with the same
 * seed and target) replays it alone.
 */
import * as http from 'node:http';
import * as http2 from 'node:http2';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import * as net from 'node:net';
import type { Agent } from '../../agent/index.js';
import type { Gateway } from '../../gateway/index.js';
import { closeH2, connectH2, h1Request, h2Request, plainH1Request, splitHostPort, type Reply } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import type { Upstream } from '../helpers/tunnel-upstreams.js';
import { runH1Case, UPSTREAM_MARK } from './h1-cases.js';
import { runH2Case } from './h2-cases.js';
import { runFakeAgentCase, runFakeGatewayCase, startFakeGateway } from './tunnel-cases.js';
import { FuzzFailure, within, type CaseOutcome, type GatewayPorts } from './harness.js';
import { caseRandom, type Random } from './prng.js';

export const TARGETS = ['h1', 'h2', 'agent', 'gateway'] as const;
export type TargetName = (typeof TARGETS)[number];

export interface CampaignOptions {
  seed: number;
  /** Wall time for all targets together (split evenly), seconds. */
  seconds: number;
  targets?: readonly TargetName[];
  /** Cases run side by side (h1, h2); the tunnel targets run one at a time. */
  lanes?: number;
  /** Cases per batch (a health check after each). */
  batch?: number;
  /** Replay these case indexes (of the first target given) and nothing else, then one health check. */
  only?: number[];
  /** The gateway's binding mode (default: the test environment's, `TETHER_TEST_BINDING`). */
  binding?: 'connection' | 'request';
  /** Stop after this many failures. */
  maxFailures?: number;
  log?: (line: string) => void;
}

export interface Failure {
  target: TargetName | 'health';
  index: number;
  message: string;
  /** A health check's failure: the batch before it (its target and last case). */
  after?: { target: TargetName; last: number };
}

export interface TargetReport {
  cases: number;
  outcomes: Record<string, number>;
  codes: Record<string, number>;
  ms: number;
}

export interface CampaignReport {
  seed: number;
  binding: string;
  cases: number;
  batches: number;
  targets: Partial<Record<TargetName, TargetReport>>;
  failures: Failure[];
  /** tether_gateway_request_errors_total grown during the campaign, by code. */
  metricErrors: Record<string, number>;
}

export interface FuzzEnv {
  env: TunnelEnv;
  gateway: Gateway;
  upstream: Upstream;
  /** Violations the upstream saw (unauthenticated or forged requests, credentials). */
  upstreamViolations: string[];
  ports: GatewayPorts;
  /** Token for c1, c2 and c3, subject alice. */
  token: string;
  /** Connections the gateway accepted on its client ports since the last health check. */
  accepted: Set<net.Socket>;
  /** The tunnel connections of c1's agent at the start: no client's bytes may cost it one. */
  agentTunnels: string;
  close(): Promise<void>;
}

const SUBJECT = 'alice';

/**
 * The upstream: answers every request 200 `fuzz ok` marked `x-fuzz-upstream: 1` once its body has
 * arrived, after `inspect` looked at its head. What its own parser refuses it answers 400 marked
 * `x-fuzz-upstream: refused` with the parser's code, so the campaign can tell the upstream's
 * refusals (bytes the gateway passed on that a strict server would not take) from the gateway's
 * answers. Its head limit is above the gateway's, so the gateway's limit is the one that applies.
 */
export async function startFuzzUpstream(inspect: (req: http.IncomingMessage) => void): Promise<Upstream> {
  const seen: http.IncomingHttpHeaders[] = [];
  const server = http.createServer({ maxHeaderSize: 256 * 1024 }, (req, res) => {
    seen.push(req.headers);
    inspect(req);
    req.on('error', () => undefined);
    req.resume();
    const finish = (): void => {
      if (res.writableEnded) return;
      res.writeHead(200, { 'content-type': 'text/plain', [UPSTREAM_MARK]: '1', 'content-length': '8' });
      res.end('fuzz ok\n');
    };
    req.once('end', finish);
    req.once('close', finish);
  });
  server.on('checkExpectation', (_req: http.IncomingMessage, res: http.ServerResponse) => {
    res.writeHead(417, { [UPSTREAM_MARK]: 'refused', 'x-fuzz-reason': 'expectation', 'content-length': '0', connection: 'close' });
    res.end();
  });
  server.on('clientError', (error: Error & { code?: string }, socket: net.Socket) => {
    if (socket.writable) socket.end(`HTTP/1.1 400 Bad Request\r\n${UPSTREAM_MARK}: refused\r\nx-fuzz-reason: ${error.code ?? 'unknown'}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
    else socket.destroy();
  });
  const sockets = new Set<net.Socket>();
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
/**
 * The h2c upstream the HTTP/2 cases' paths (`/fuzz/h2/…`) are routed to, so that with connection
 * binding an HTTP/2 client connection is bound to it and the gateway's frame-level proxy
 * (gateway/binding/h2-bound-connection.ts) is what the cases hit. It answers every request 200
 * `fuzz ok` marked like the HTTP/1.1 upstream, after `inspect` looked at its headers.
 */
export async function startFuzzH2cUpstream(inspect: (headers: http2.IncomingHttpHeaders) => void): Promise<Upstream> {
  const seen: http.IncomingHttpHeaders[] = [];
  const server = http2.createServer({ maxHeaderListPairs: 4_096 });
  server.on('stream', (stream, headers) => {
    seen.push(headers);
    inspect(headers);
    stream.on('error', () => undefined);
    stream.resume();
    const finish = (): void => {
      if (stream.closed || stream.destroyed || stream.headersSent) return;
      stream.respond({ ':status': 200, 'content-type': 'text/plain', [UPSTREAM_MARK]: '1' });
      stream.end('fuzz ok\n');
    };
    stream.once('end', finish);
  });
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (session) => {
    sessions.add(session);
    session.on('error', () => undefined);
    session.once('close', () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `h2c://127.0.0.1:${port}`,
    port,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const session of sessions) session.destroy();
        server.close(() => resolve());
      }),
  };
}

const HEALTH_MS = 10_000;

/** The gateway, an agent for c1 routing to a marking upstream, and the checks on what reaches it. */
export async function startFuzzEnv(binding?: 'connection' | 'request'): Promise<FuzzEnv> {
  const violations: string[] = [];
  const check = (what: string, headers: http.IncomingHttpHeaders): void => {
    const subject = headers['tether-subject'];
    const cluster = headers['tether-cluster'];
    if (subject !== SUBJECT) violations.push(`${what}: tether-subject ${JSON.stringify(subject)}`);
    if (cluster !== 'c1' && cluster !== 'c3') violations.push(`${what}: tether-cluster ${JSON.stringify(cluster)}`);
    if (headers.authorization !== undefined) violations.push(`${what}: the client's authorization reached the upstream`);
  };
  const upstream = await startFuzzUpstream((req) => check(`${req.method} ${req.url}`, req.headers));
  const h2Upstream = await startFuzzH2cUpstream((headers) => check(`h2 ${String(headers[':method'])} ${String(headers[':path'])}`, headers));
  const env = await startTunnelEnv({
    clusters: ['c1', 'c2', 'c3'],
    // Client HTTP/2 sessions the gateway must close (idle, or no longer answering PINGs) go
    // within seconds, not the default two minutes: the health check waits for their streams.
    // Agents get a port of their own, so every connection to the client ports is a client's.
    gateway: { clientIdleTimeoutMs: 2_000, agentListen: { host: '127.0.0.1', port: 0 }, ...(binding === undefined ? {} : { binding }) },
    agents: [
      {
        clusterId: 'c1',
        agentId: 'a1',
        routes: [
          { prefix: '/', upstream: upstream.url },
          { prefix: '/fuzz/h2/', upstream: h2Upstream.url },
        ],
      },
    ],
  });
  const gateway = env.gateway;
  const [host, tlsPort] = splitHostPort(gateway.address);
  const plain = new URL(gateway.plainUrl ?? 'http://127.0.0.1:0');
  const token = await env.token(['c1', 'c2', 'c3'], SUBJECT);
  const ports = { host, tlsPort, plainPort: Number(plain.port), ca: env.pki.trustBundlePem };
  // Every connection the gateway accepts on its client ports, until a health check saw it closed.
  const accepted = new Set<net.Socket>();
  const onSocket = (message: unknown): void => {
    const socket = (message as { socket: net.Socket }).socket;
    if (socket.localPort === ports.plainPort || socket.localPort === ports.tlsPort) accepted.add(socket);
  };
  subscribe('net.server.socket', onSocket);
  const agentTunnels = tunnelsOf(gateway, 'a1');
  return {
    env,
    gateway,
    upstream,
    upstreamViolations: violations,
    ports,
    token,
    accepted,
    agentTunnels,
    close: async () => {
      unsubscribe('net.server.socket', onSocket);
      await env.close();
      await upstream.close();
      await h2Upstream.close();
    },
  };
}

/** One target: set up (once), run one case, tear down. */
export interface Target {
  name: TargetName;
  /** Cases run side by side. */
  concurrent: boolean;
  run(rng: Random, index: number): Promise<CaseOutcome & { description: string }>;
  /** Extra health checks (an agent of the target's own still serves). */
  health?(): Promise<void>;
  close?(): Promise<void>;
}

async function makeTarget(name: TargetName, fuzz: FuzzEnv, log: (line: string) => void): Promise<Target> {
  switch (name) {
    case 'h1':
      return { name, concurrent: true, run: (rng) => runH1Case(rng, { ports: fuzz.ports, token: fuzz.token }) };
    case 'h2':
      return { name, concurrent: true, run: (rng) => runH2Case(rng, { ports: fuzz.ports, token: fuzz.token }) };
    case 'agent': {
      const material = await fuzz.env.pki.agentCert({ clusterId: 'c2', agentId: 'fuzz-agent' });
      const ctx = { env: fuzz.env, ports: fuzz.ports, token: fuzz.token, cert: material };
      return { name, concurrent: false, run: (rng) => runFakeAgentCase(rng, ctx) };
    }
    case 'gateway': {
      const material = await fuzz.env.pki.gatewayCert();
      const fake = await startFakeGateway(material, fuzz.env.pki.trustBundlePem);
      // The agent under test serves c3, through the real gateway and the fake one, from an
      // upstream of its own (the fake gateway forges identities; the real upstream's checks are
      // about what the real gateway lets through).
      const upstream = await startFuzzUpstream(() => undefined);
      const agent = await fuzz.env.startAgent({
        clusterId: 'c3',
        agentId: 'fuzzed',
        gateways: [fuzz.gateway.agentAddress, fake.address],
        routes: [{ prefix: '/', upstream: upstream.url }],
        backoff: { initialDelayMs: 20, maxDelayMs: 200 },
        handshakeTimeoutMs: 2_000,
      });
      const servesC3 = (): boolean => fuzz.gateway.tunnels.all().some((t) => t.clusterId === 'c3');
      const deadline = Date.now() + HEALTH_MS;
      while (!servesC3()) {
        if (Date.now() > deadline) throw new FuzzFailure('the fuzzed agent never connected to the real gateway');
        await new Promise<void>((resolve) => setTimeout(resolve, 20));
      }
      const handshakes = async (): Promise<string> => {
        const metric = agent.registry.getSingleMetric('tether_agent_tunnel_handshakes_total');
        const values = metric === undefined ? [] : (await metric.get()).values;
        return values.map((v) => `${String(v.labels.result)}${v.labels.reason === '' ? '' : ` ${String(v.labels.reason)}`} x${v.value}`).join(', ');
      };
      return {
        name,
        concurrent: false,
        run: (rng) => runFakeGatewayCase(rng, { fake, agent }),
        health: async () => {
          const reply = await within(HEALTH_MS, 'health: request for c3', plainH1Request(fuzz.gateway.plainUrl ?? '', { cluster: 'c3', token: fuzz.token, path: '/health/c3' }));
          expectServed(reply, 'health: c3 through the fuzzed agent');
        },
        close: async () => {
          log(`gateway: the fuzzed agent's handshakes: ${await handshakes()}`);
          await agent.close();
          await fake.close();
          await upstream.close();
        },
      };
    }
    default:
      throw new Error(`target ${name} is not available`);
  }
}

function expectServed(reply: Reply, what: string): void {
  if (reply.status !== 200 || reply.headers[UPSTREAM_MARK] !== '1') {
    throw new FuzzFailure(`${what}: status ${reply.status}${typeof reply.headers['tether-error'] === 'string' ? ` ${reply.headers['tether-error']}` : ''}, not the upstream's 200`);
  }
}

const tunnelStreams = (gateway: Gateway): number => gateway.tunnels.all().reduce((n, t) => n + t.activeStreams, 0);

/** The gateway's tunnel connections of one agent, by id. */
function tunnelsOf(gateway: Gateway, agentId: string): string {
  return gateway.tunnels
    .all()
    .filter((t) => t.agentId === agentId)
    .map((t) => t.id)
    .sort((a, b) => a - b)
    .join(',');
}

/**
 * The gateway still serves normal authenticated requests (HTTP/1.1 plain and TLS, h2c), every
 * tunnel stream has closed, and the upstream saw nothing it should not have.
 */
export async function healthCheck(fuzz: FuzzEnv, extra?: () => Promise<void>): Promise<void> {
  const { gateway, token } = fuzz;
  const plainUrl = gateway.plainUrl ?? '';
  expectServed(await within(HEALTH_MS, 'health: plain HTTP/1.1 request', plainH1Request(plainUrl, { cluster: 'c1', token, path: '/health/h1' })), 'health: plain HTTP/1.1');
  expectServed(await within(HEALTH_MS, 'health: TLS HTTP/1.1 request', h1Request(gateway.address, fuzz.ports.ca, { cluster: 'c1', token, path: '/health/tls' })), 'health: TLS HTTP/1.1');
  const session = await within(HEALTH_MS, 'health: h2c connect', connectH2(plainUrl));
  try {
    expectServed(await within(HEALTH_MS, 'health: h2c request', h2Request(session, { cluster: 'c1', token, path: '/health/h2' })), 'health: h2c');
  } finally {
    await closeH2(session);
  }
  if (extra !== undefined) await extra();
  // Every case's connection is closed by now: so must every tunnel stream be (a stream the
  // gateway forgot would hold an agent stream slot for the tunnel's life). Streams close inside
  // the gateway with no event to wait on: checked every 20 ms up to the deadline.
  const deadline = Date.now() + HEALTH_MS;
  while (tunnelStreams(gateway) > 0) {
    if (Date.now() > deadline) throw new FuzzFailure(`health: ${tunnelStreams(gateway)} tunnel stream(s) still open ${HEALTH_MS} ms after the batch`);
    await new Promise<void>((resolve) => setTimeout(resolve, 20));
  }
  if (fuzz.upstreamViolations.length > 0) throw new FuzzFailure(`health: the upstream saw ${fuzz.upstreamViolations.splice(0).join('; ')}`);
  // Every client connection of the batch (and of the checks above) is closed: the gateway closed
  // those it refused or cut off, and saw the others' close (idle HTTP/2 sessions and sessions that
  // no longer answer PINGs go within seconds here).
  const open = (): number => [...fuzz.accepted].filter((socket) => !socket.destroyed).length;
  while (open() > 0) {
    if (Date.now() > deadline + HEALTH_MS) throw new FuzzFailure(`health: ${open()} client connection(s) still open at the gateway after the batch`);
    await new Promise<void>((resolve) => setTimeout(resolve, 20));
  }
  fuzz.accepted.clear();
  const tunnels = tunnelsOf(gateway, 'a1');
  if (tunnels !== fuzz.agentTunnels) throw new FuzzFailure(`health: c1's agent lost tunnel connections (${fuzz.agentTunnels} then ${tunnels})`);
}

/** `tether_gateway_request_errors_total` by code, now. */
export async function errorCounts(gateway: Gateway): Promise<Record<string, number>> {
  const metric = gateway.registry.getSingleMetric('tether_gateway_request_errors_total');
  const counts: Record<string, number> = {};
  if (metric === undefined) return counts;
  for (const value of (await metric.get()).values) {
    const code = String(value.labels.code ?? '');
    counts[code] = (counts[code] ?? 0) + value.value;
  }
  return counts;
}

function add(into: Record<string, number>, key: string, n = 1): void {
  into[key] = (into[key] ?? 0) + n;
}

/** Run a campaign on a fresh environment; the report lists every failure with its seed and case. */
export async function runCampaign(options: CampaignOptions): Promise<CampaignReport> {
  const targets = options.targets ?? TARGETS;
  const lanes = options.lanes ?? 4;
  const batchSize = options.batch ?? 24;
  const maxFailures = options.maxFailures ?? 10;
  const log = options.log ?? ((): void => undefined);
  const fuzz = await startFuzzEnv(options.binding);
  const report: CampaignReport = { seed: options.seed, binding: fuzz.gateway.config.binding, cases: 0, batches: 0, targets: {}, failures: [], metricErrors: {} };
  const metricsAtStart = await errorCounts(fuzz.gateway);
  let index = 0;
  try {
    const sliceMs = (options.seconds * 1000) / targets.length;
    for (const name of targets) {
      if (report.failures.length >= maxFailures) break;
      const target = await makeTarget(name, fuzz, log);
      const stats: TargetReport = { cases: 0, outcomes: {}, codes: {}, ms: 0 };
      report.targets[name] = stats;
      const started = Date.now();
      const end = started + sliceMs;
      try {
        while (report.failures.length < maxFailures) {
          if (options.only === undefined && Date.now() >= end) break;
          const batch: number[] = [];
          if (options.only !== undefined) batch.push(...options.only);
          else for (let i = 0, n = target.concurrent ? batchSize : Math.ceil(batchSize / 3); i < n; i++) batch.push(index++);
          const before = await errorCounts(fuzz.gateway);
          const answered: Record<string, number> = {};
          const runOne = async (i: number): Promise<void> => {
            try {
              const result = await target.run(caseRandom(options.seed, i), i);
              stats.cases++;
              report.cases++;
              add(stats.outcomes, result.outcome);
              for (const code of result.codes ?? []) {
                add(stats.codes, code);
                add(answered, code);
              }
              if (options.only !== undefined) log(`case ${i}: ${result.description}: ${result.outcome}`);
            } catch (reason) {
              const message = reason instanceof Error ? reason.message : String(reason);
              report.failures.push({ target: name, index: i, message });
              log(`FAIL ${name} case ${i} (seed ${options.seed}): ${message}`);
            }
          };
          if (target.concurrent) {
            const queue = [...batch];
            await Promise.all(
              Array.from({ length: Math.min(lanes, queue.length) }, async () => {
                for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
                  if (options.only === undefined && Date.now() >= end) break;
                  await runOne(i);
                }
              }),
            );
          } else {
            for (const i of batch) {
              if (options.only === undefined && Date.now() >= end) break;
              await runOne(i);
            }
          }
          report.batches++;
          try {
            await healthCheck(fuzz, target.health?.bind(target));
            // Every error a client was answered with is counted (the metric may count more: answers
            // whose client was gone).
            const after = await errorCounts(fuzz.gateway);
            for (const [code, n] of Object.entries(answered)) {
              const counted = (after[code] ?? 0) - (before[code] ?? 0);
              if (counted < n) throw new FuzzFailure(`health: ${n} answer(s) with tether-error ${code} but the metric grew by ${counted}`);
            }
          } catch (reason) {
            const message = reason instanceof Error ? reason.message : String(reason);
            report.failures.push({ target: 'health', index: batch[0] ?? -1, message: `after ${name} cases ${batch[0]}..${batch[batch.length - 1]}: ${message}`, after: { target: name, last: batch[batch.length - 1] ?? -1 } });
            log(`FAIL health after ${name} cases ${batch[0]}..${batch[batch.length - 1]} (seed ${options.seed}): ${message}`);
          }
          if (options.only !== undefined) break;
        }
      } finally {
        stats.ms = Date.now() - started;
        await target.close?.();
      }
      log(`${name}: ${stats.cases} cases in ${(stats.ms / 1000).toFixed(1)} s; ${Object.entries(stats.outcomes).sort((a, b) => b[1] - a[1]).map(([o, n]) => `${o} x${n}`).join(', ')}`);
      if (options.only !== undefined) break;
    }
  } finally {
    const metricsAtEnd = await errorCounts(fuzz.gateway);
    for (const [code, n] of Object.entries(metricsAtEnd)) if (n - (metricsAtStart[code] ?? 0) > 0) report.metricErrors[code] = n - (metricsAtStart[code] ?? 0);
    await fuzz.close();
  }
  return report;
}

export type { Agent };
