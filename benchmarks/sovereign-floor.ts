/**
 * The floor of the sovereign router's shape in Node, for `benchmarks/sovereign.ts` (path `floor`),
 * run as its own child process like `sovereign-router.ts` (by `runRelay`, sovereign-relay.ts):
 * the PROXY header read off each connection (the router's `readProxyHeader`), TLS with the same
 * certificate, Node's HTTP/1.1 server, and each request sent to the upstream over a keep-alive
 * `http.Agent` with its answer piped back. Nothing else: no jwt_authn, no RBAC, no routing, no
 * metrics, no access log. What the router costs above this is its own work; what this costs is
 * what any single-process Node front of this shape pays.
 *
 *   node --import ./bin/typescript.js benchmarks/sovereign-floor.ts CONFIG.json
 */
import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import { readProxyHeader } from '../agent/router/proxy-protocol.js';
import { runRelay } from './sovereign-relay.js';
import type { RelayCounts, RunningRelay, SovereignRelayConfig } from './sovereign-relay.js';

const HOP_BY_HOP = ['connection', 'keep-alive', 'authorization'];

async function start(config: SovereignRelayConfig): Promise<RunningRelay> {
  const context = tls.createSecureContext({ cert: config.certificateChainPem, key: config.privateKeyPem, minVersion: 'TLSv1.2' });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const counts: RelayCounts = { requests: { OK: 0 }, connections: { accepted: 0 } };
  const h1 = http.createServer({ requestTimeout: 0 }, (req, res) => {
    const headers = { ...req.headers };
    for (const name of HOP_BY_HOP) delete headers[name];
    const out = http.request({ host: '127.0.0.1', port: config.upstreamPort, method: req.method, path: req.url, headers, agent }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
      counts.requests.OK = (counts.requests.OK ?? 0) + 1;
    });
    out.once('error', () => res.destroy());
    req.pipe(out);
  });
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true }, (raw) => {
    sockets.add(raw);
    raw.once('close', () => sockets.delete(raw));
    raw.on('error', () => undefined);
    void readProxyHeader(raw, { required: true, v1: true, v2: true }, 5_000).then((read) => {
      if (!read.ok) return void raw.destroy();
      if (read.rest.length > 0) raw.unshift(read.rest);
      const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: context, ALPNProtocols: ['http/1.1'] });
      secure.on('error', () => undefined);
      secure.once('secure', () => {
        counts.connections.accepted = (counts.connections.accepted ?? 0) + 1;
        h1.emit('connection', secure);
      });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    port: (server.address() as AddressInfo).port,
    counts: () => Promise.resolve({ requests: { ...counts.requests }, connections: { ...counts.connections } }),
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        agent.destroy();
        server.close(() => resolve());
      }),
  };
}

runRelay(start);
