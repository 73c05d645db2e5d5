/** Shared pieces of the router tests: named upstreams, a client, and configurations built from xDS builders. */
import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import { create } from '@bufbuild/protobuf';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { RouteSchema } from '../../xds/gen/envoy/config/route/v3/route_components_pb.js';
import type { Route } from '../../xds/gen/envoy/config/route/v3/route_components_pb.js';
import { RouteConfigurationSchema } from '../../xds/gen/envoy/config/route/v3/route_pb.js';
import type { RouteConfiguration } from '../../xds/gen/envoy/config/route/v3/route_pb.js';
import type { Cluster } from '../../xds/gen/envoy/config/cluster/v3/cluster_pb.js';
import type { ClusterLoadAssignment } from '../../xds/gen/envoy/config/endpoint/v3/endpoint_pb.js';
import { edsCluster, httpListener, loadAssignment } from '../../xds/builders.js';
import { compileAssignment, compileCluster, compileListener, compileRouteConfig } from '../../agent/router/compile.js';
import type { Compiled } from '../../agent/router/compile.js';
import type { RouterConfig } from '../../agent/router/router.js';

export interface NamedUpstream {
  name: string;
  port: number;
  hits: number;
  /** Paths seen, in order. */
  paths: string[];
  close(): Promise<void>;
}

/**
 * An HTTP/1.1 upstream answering `200 <name>`; `/status/N` answers N, `/hang` never answers,
 * `/reset` destroys the socket. `behaviour` overrides everything (e.g. always 503).
 */
export async function namedUpstream(name: string, behaviour?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean): Promise<NamedUpstream> {
  const sockets = new Set<net.Socket>();
  const upstream: NamedUpstream = { name, port: 0, hits: 0, paths: [], close: async () => undefined };
  const server = http.createServer((req, res) => {
    upstream.hits++;
    upstream.paths.push(req.url ?? '');
    req.resume();
    if (behaviour?.(req, res) === true) return;
    const path = req.url ?? '/';
    if (path.startsWith('/status/')) return void res.writeHead(Number(path.slice(8))).end(name);
    if (path === '/hang') return;
    if (path === '/reset') return void req.socket.destroy();
    res.writeHead(200, { 'content-type': 'text/plain', 'x-upstream': name }).end(name);
  });
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  upstream.port = (server.address() as AddressInfo).port;
  upstream.close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return upstream;
}

/** A port on 127.0.0.1 that refuses connections (bound, then released). */
export async function refusingPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface Reply {
  status: number;
  body: string;
  headers: http.IncomingHttpHeaders;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

/** One request through the front (keep-alive pool shared by the tests; destroy with `closeClient`). */
export function request(port: number, path: string, options: { method?: string; host?: string; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: options.method ?? 'GET', agent, headers: { host: options.host ?? 'app.local', ...options.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

export function closeClient(): void {
  agent.destroy();
}

export function ok<T>(compiled: Compiled<T>): T {
  if (!compiled.ok) throw new Error(compiled.problems.map((p) => `${p.field}: ${p.message}`).join('; '));
  return compiled.value;
}

export type RouteInit = MessageInitShape<typeof RouteSchema>;

export function routeOf(init: RouteInit): Route {
  return create(RouteSchema, init);
}

export function routesConfig(name: string, vhosts: Array<{ name: string; domains: string[]; routes: RouteInit[] }>): RouteConfiguration {
  return create(RouteConfigurationSchema, { name, virtualHosts: vhosts.map((v) => ({ name: v.name, domains: v.domains, routes: v.routes })) });
}

/** `{ cluster: [ports] }` → EDS clusters and their assignments on 127.0.0.1. */
export function clustersOf(spec: Record<string, number[]>): { clusters: Cluster[]; endpoints: ClusterLoadAssignment[] } {
  const names = Object.keys(spec);
  return {
    clusters: names.map((name) => edsCluster({ name, connectTimeoutMs: 1000 })),
    endpoints: names.map((name) => loadAssignment(name, (spec[name] ?? []).map((port) => ({ address: '127.0.0.1', port })))),
  };
}

/** A compiled router configuration, without any ADS (for unit tests). */
export function configOf(routes: RouteConfiguration, clusterSpec: Record<string, number[]>): RouterConfig {
  const listener = ok(compileListener(httpListener('l', '127.0.0.1', 10000, routes.name)));
  const { clusters, endpoints } = clustersOf(clusterSpec);
  return {
    version: 'test',
    listener,
    routeConfig: ok(compileRouteConfig(routes)),
    clusters: new Map(clusters.map((c) => [c.name, ok(compileCluster(c))])),
    assignments: new Map(endpoints.map((a) => [a.clusterName, ok(compileAssignment(a))])),
  };
}

export function ms(n: number): { seconds: bigint; nanos: number } {
  return { seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1e6 };
}
