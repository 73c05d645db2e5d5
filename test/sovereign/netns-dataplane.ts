/**
 * The data plane of test/sovereign/netns.test.ts, run inside its own network namespace:
 * `ip netns exec <ns> node --import ./bin/typescript.js test/sovereign/netns-dataplane.ts <config.json>`.
 *
 * It starts an upstream service on the namespace's loopback and a real agent (built-in router,
 * customer key pinned, `sovereignty.listener` on the address facing the load balancer), and talks
 * to the test over stdio: JSON lines out (`ready`, `mode`, `listener`, `tunnels`, `metrics`,
 * `error`, `closed`), commands in (`reload`: read the mode file now; `metrics`: print the agent's
 * metrics). It stops (agent and upstream closed) when its stdin ends or on SIGTERM.
 */
import { readFile } from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { Agent } from '../../agent/index.js';
import { silentLogger } from '../../common/log.js';

/** What the test writes to the config file. */
export interface DataPlaneConfig {
  /** The vendor gateway's agent port, `host:port`. */
  gateway: string;
  tls: { key: string; cert: string; ca: string };
  clusterId: string;
  customerPublicPem: string;
  modeFile: string;
  listener: { address: string; certFile: string; keyFile: string; issuer: string; audience: string; jwks: { keys: Array<Record<string, unknown>> }; clientNetwork: string };
}

function emit(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

async function main(): Promise<void> {
  const path = process.argv[2];
  if (path === undefined) throw new Error('usage: netns-dataplane.ts <config.json>');
  const config = JSON.parse(await readFile(path, 'utf8')) as DataPlaneConfig;

  const sockets = new Set<Socket>();
  const upstream = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ service: 'data-plane', path: req.url, xff: req.headers['x-forwarded-for'] ?? null }));
  });
  upstream.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  const upstreamPort = (upstream.address() as AddressInfo).port;

  const agent = new Agent({
    gateways: [config.gateway],
    serverName: 'localhost',
    tls: config.tls,
    routes: [{ prefix: '/', upstream: `http://127.0.0.1:${upstreamPort}` }],
    xds: {},
    admin: { host: '127.0.0.1', port: 0 },
    logger: silentLogger(),
    pingIntervalMs: 1000,
    pingTimeoutMs: 2000,
    backoff: { initialDelayMs: 50, maxDelayMs: 500 },
    drainGraceMs: 1000,
    sovereignty: {
      clusterId: config.clusterId,
      customerKey: config.customerPublicPem,
      modeFile: config.modeFile,
      pollMs: 60_000,
      drainGraceMs: 1000,
      listener: {
        address: config.listener.address,
        tls: { certFile: config.listener.certFile, keyFile: config.listener.keyFile },
        jwt: { issuer: config.listener.issuer, audiences: [config.listener.audience], jwks: config.listener.jwks },
        rbac: { policies: { readers: { principals: [{ and: [{ claim: 'roles', includes: 'reader' }, { remoteIp: config.listener.clientNetwork }] }] } } },
      },
    },
  });
  const tunnels = (): void => emit({ type: 'tunnels', live: agent.liveConnections().length });
  agent.events.on('live', tunnels);
  agent.events.on('closed', tunnels);
  agent.events.on('mode', (change) => emit({ type: 'mode', mode: change.mode, seq: change.seq }));
  agent.events.on('sovereignListener', (event) => emit({ type: 'listener', state: event.state, port: event.address?.port ?? null, code: event.code ?? null }));

  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      await agent.close();
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => upstream.close(() => resolve()));
      emit({ type: 'closed' });
    })();
    return stopping;
  };
  process.once('SIGTERM', () => void stop());
  const input = createInterface({ input: process.stdin });
  input.on('line', (line) => {
    const command = line.trim();
    if (command === 'reload') void agent.reloadMode().then(() => emit({ type: 'reloaded' }));
    else if (command === 'metrics') void agent.registry.metrics().then((text) => emit({ type: 'metrics', text }));
  });
  input.once('close', () => void stop());

  try {
    await agent.start();
  } catch (reason) {
    emit({ type: 'error', message: reason instanceof Error ? reason.message : String(reason) });
    await stop();
    return;
  }
  emit({ type: 'ready', mode: agent.mode, sovereignPort: agent.sovereignAddress?.port ?? null, upstreamPort, adminPort: agent.adminAddress?.port ?? null });
}

main().catch((reason: unknown) => {
  emit({ type: 'error', message: reason instanceof Error ? (reason.stack ?? reason.message) : String(reason) });
  process.exitCode = 1;
});
