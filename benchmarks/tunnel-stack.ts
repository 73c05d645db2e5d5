/**
 * One end of the tether tunnel for `benchmarks/tunnel.ts`, run as its own child process so that it
 * shares an event loop with neither the upstream nor the load generator:
 *
 *   node --import ./bin/typescript.js benchmarks/tunnel-stack.ts gateway CONFIG.json
 *   node --import ./bin/typescript.js benchmarks/tunnel-stack.ts agent CONFIG.json
 *
 * CONFIG.json (written 0600 by the benchmark into its temp folder) holds the certificates and
 * addresses. The gateway listens on loopback (TLS for agents, cleartext HTTP/1.1 + h2c for
 * clients; bearer JWTs checked against `auth` when given, else auth mode `none`; HTTP/1.1 client
 * connections bound to one tunnel stream or carried per request as `binding` says, else the
 * gateway's default); the agent dials it. Each sends `{ type: 'ready', ... }` on the IPC
 * channel, answers `{ type: 'memory' }` (tunnel-memory.ts) and exits when the channel closes or on
 * SIGTERM.
 */
import { readFile } from 'node:fs/promises';
import { Agent } from '../agent/index.js';
import type { Closable } from '../common/lifecycle.js';
import { silentLogger } from '../common/log.js';
import { Gateway } from '../gateway/index.js';
import { answerMemoryRequests, type MemoryMessage } from './tunnel-memory.js';

export interface StackConfig {
  trustDomain: string;
  clusterId: string;
  ca: string;
  gatewayTls: { key: string; cert: string };
  agentTls: { key: string; cert: string };
  /** Agent only: the gateway's TLS `host:port`. */
  gatewayAddress?: string;
  /** Agent only: path prefix → upstream URL. */
  routes?: Array<{ prefix: string; upstream: string }>;
  /** Agent only: concurrent streams per tunnel connection (the idle-WebSocket test needs > 1000). */
  maxConcurrentStreams?: number;
  connectionsPerGateway?: number;
  /** Gateway only: the issuer whose ES256 tokens clients present (as a deployment would run it). */
  auth?: { issuer: string; audience: string; jwks: { keys: Array<Record<string, unknown>> } };
  /**
   * Gateway only: `connection` binds an HTTP/1.1 client connection to one tunnel stream after its
   * first request is authorized, `request` carries each request as its own stream (the gateway's
   * `binding` option; its default when absent).
   */
  binding?: 'connection' | 'request';
}

export type StackMessage =
  | { type: 'ready'; role: 'gateway'; plainUrl: string; address: string; pid: number }
  | { type: 'ready'; role: 'agent'; connections: number; pid: number }
  | MemoryMessage
  | { type: 'error'; message: string };

async function main(): Promise<void> {
  const [role, configPath] = process.argv.slice(2);
  if ((role !== 'gateway' && role !== 'agent') || configPath === undefined) {
    throw new Error('usage: tunnel-stack.ts gateway|agent CONFIG.json');
  }
  const config = JSON.parse(await readFile(configPath, 'utf8')) as StackConfig;
  const logger = silentLogger();
  let part: Closable;
  let ready: StackMessage;
  if (role === 'gateway') {
    const gateway = new Gateway({
      id: 'bench-gateway',
      tls: { ...config.gatewayTls, ca: config.ca },
      listen: { host: '127.0.0.1', port: 0 },
      plainListen: { host: '127.0.0.1', port: 0 },
      clusters: [config.clusterId],
      trustDomain: config.trustDomain,
      auth: config.auth === undefined ? { mode: 'none' } : { mode: 'jwt', issuers: [{ issuer: config.auth.issuer, audiences: [config.auth.audience], jwks: config.auth.jwks, algorithms: ['ES256'] }] },
      ...(config.binding === undefined ? {} : { binding: config.binding }),
      drainGraceMs: 0,
      logger,
    });
    await gateway.start();
    part = gateway;
    ready = { type: 'ready', role: 'gateway', plainUrl: gateway.plainUrl ?? '', address: gateway.address, pid: process.pid };
  } else {
    if (config.gatewayAddress === undefined) throw new Error('agent config needs gatewayAddress');
    const connections = config.connectionsPerGateway ?? 2;
    const agent = new Agent({
      gateways: [config.gatewayAddress],
      serverName: 'localhost',
      connectionsPerGateway: connections,
      routes: config.routes ?? [],
      tls: { ...config.agentTls, ca: config.ca },
      ...(config.maxConcurrentStreams === undefined ? {} : { limits: { maxConcurrentStreams: config.maxConcurrentStreams } }),
      drainGraceMs: 0,
      logger,
    });
    await agent.start();
    part = agent;
    await agent.waitForConnections(connections, 15_000);
    ready = { type: 'ready', role: 'agent', connections, pid: process.pid };
  }

  const stop = (): void => {
    const timer = setTimeout(() => process.exit(0), 2_000);
    void part.close().finally(() => {
      clearTimeout(timer);
      process.exit(0);
    });
  };
  process.once('disconnect', stop);
  process.once('SIGTERM', stop);
  answerMemoryRequests(role);
  send(ready);
}

function send(message: StackMessage): void {
  process.send?.(message);
}

main().catch((reason: unknown) => {
  send({ type: 'error', message: reason instanceof Error ? reason.message : String(reason) });
  process.exitCode = 1;
  setTimeout(() => process.exit(1), 100);
});
