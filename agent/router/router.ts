/**
 * The built-in router: a compiled, immutable `RouterConfig` (listener → route configuration →
 * clusters → endpoints) swapped atomically by `update()`, and a synchronous `route()` that turns a
 * request into an upstream decision. A decision holds on to the configuration it was made with,
 * so an update never changes a request already routed; new requests see the new configuration.
 */
import { EventEmitter } from 'node:events';
import { Balancer, endpointsKey } from './balancer.js';
import type { CompiledSecret } from './downstream-tls.js';
import type { CompiledAssignment, CompiledCluster, CompiledListener, CompiledRouteConfig, Endpoint, RetrySpec, RouteRequest, UpstreamScheme } from './compile.js';

export type { RouteRequest } from './compile.js';

/** Methods a retry may repeat (RFC 9110 idempotent methods). */
export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);

export interface RouteDecision {
  cluster: string;
  /** `http://host:port`, `h2c://host:port` (cluster speaks HTTP/2) or `https://host:port`. */
  upstream: URL;
  /** The path to send upstream (after `prefix_rewrite`), query included. */
  path: string;
  /** The route's timeout (`route.timeout`), when it sets one. */
  timeoutMs?: number;
  connectTimeoutMs?: number;
  /** TLS server name for https upstreams. */
  sni?: string;
  /** Present for idempotent methods on routes with a retry policy. */
  retry?: RetrySpec;
  /** Which route matched: `virtual_hosts[i].routes[j]` of `routeConfig`. */
  route: string;
  routeConfig: string;
  /**
   * The endpoint for a retry: the cluster's next one not tried yet by this decision while any is
   * left, then round robin again (a retry may go back to a host); null only for an empty cluster.
   */
  next(): URL | null;
}

/** Why there is no decision. */
export type RouteFailure = 'NOT_READY' | 'NO_ROUTE' | 'NO_CLUSTER' | 'NO_HEALTHY_UPSTREAM';

export type Resolution = { ok: true; decision: RouteDecision } | { ok: false; reason: RouteFailure; message: string };

export interface RouterConfig {
  /** Version label for logs (the ADS client uses the type versions). */
  version: string;
  listener: CompiledListener;
  routeConfig: CompiledRouteConfig | null;
  clusters: ReadonlyMap<string, CompiledCluster>;
  assignments: ReadonlyMap<string, CompiledAssignment>;
  /** SDS secrets (server certificates) the listener's downstream TLS names; absent when none were read. */
  secrets?: ReadonlyMap<string, CompiledSecret>;
}

interface Generation {
  config: RouterConfig;
  balancers: Map<string, Balancer>;
}

function urlOf(scheme: UpstreamScheme, endpoint: Endpoint): URL {
  const host = endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host;
  return new URL(`${scheme}://${host}:${endpoint.port}`);
}

function pathOnly(path: string): string {
  const q = path.search(/[?#]/);
  return q < 0 ? path : path.slice(0, q);
}

export class Router extends EventEmitter<{ updated: [RouterConfig] }> {
  #generation: Generation | null = null;
  /** Weighted-cluster choice: uniform in [0, 1). Injectable for tests. */
  readonly #random: () => number;

  constructor(options: { random?: () => number } = {}) {
    super();
    this.#random = options.random ?? Math.random;
  }

  get config(): RouterConfig | null {
    return this.#generation?.config ?? null;
  }

  /** Swap in a new configuration; balancers of clusters whose endpoints did not change are kept. */
  update(config: RouterConfig): void {
    const previous = this.#generation?.balancers;
    const balancers = new Map<string, Balancer>();
    for (const cluster of config.clusters.values()) {
      const endpoints = cluster.inlineEndpoints ?? (cluster.edsName === null ? [] : (config.assignments.get(cluster.edsName)?.endpoints ?? []));
      const key = endpointsKey(cluster.scheme, endpoints);
      const kept = previous?.get(cluster.name);
      balancers.set(cluster.name, kept !== undefined && kept.key === key ? kept : new Balancer(endpoints, key));
    }
    this.#generation = { config, balancers };
    this.emit('updated', config);
  }

  /** The decision for a request, or null (no configuration, no route, no cluster or no endpoint). */
  route(request: RouteRequest): RouteDecision | null {
    const resolution = this.resolve(request);
    return resolution.ok ? resolution.decision : null;
  }

  /** Like `route()`, saying why when there is no decision. */
  resolve(request: RouteRequest): Resolution {
    const generation = this.#generation;
    if (generation === null) return { ok: false, reason: 'NOT_READY', message: 'no configuration yet' };
    const { config, balancers } = generation;
    const routes = config.routeConfig;
    if (routes === null) return { ok: false, reason: 'NOT_READY', message: `route configuration "${config.listener.rds ?? ''}" not received yet` };
    const authority = config.listener.stripPort ? request.authority.replace(/:\d+$/, '') : request.authority;
    const vhost = routes.virtualHostFor(authority);
    if (vhost === null) return { ok: false, reason: 'NO_ROUTE', message: `no virtual host for ${request.authority}` };
    const path = pathOnly(request.path);
    const route = vhost.routes.find((r) => r.matches(request, path));
    if (route === undefined) return { ok: false, reason: 'NO_ROUTE', message: `no route for ${request.path} in virtual host "${vhost.name}"` };
    const name = this.#pickCluster(route.clusters, route.totalWeight);
    const cluster = name === null ? undefined : config.clusters.get(name);
    const balancer = name === null ? undefined : balancers.get(name);
    if (cluster === undefined || balancer === undefined) return { ok: false, reason: 'NO_CLUSTER', message: `cluster "${name ?? ''}" unknown` };
    const first = balancer.pick();
    if (first === null) return { ok: false, reason: 'NO_HEALTHY_UPSTREAM', message: `cluster "${cluster.name}" has no endpoints` };
    const tried = new Set<Endpoint>([first]);
    const rewritten = route.rewrite === undefined ? request.path : route.rewrite.replacement + request.path.slice(route.rewrite.prefix.length);
    const retry = route.retry !== undefined && IDEMPOTENT_METHODS.has(request.method.toUpperCase()) ? route.retry : undefined;
    const decision: RouteDecision = {
      cluster: cluster.name,
      upstream: urlOf(cluster.scheme, first),
      path: rewritten,
      route: route.field,
      routeConfig: routes.name,
      ...(route.timeoutMs === undefined ? {} : { timeoutMs: route.timeoutMs }),
      ...(cluster.connectTimeoutMs === undefined ? {} : { connectTimeoutMs: cluster.connectTimeoutMs }),
      ...(cluster.sni === undefined ? {} : { sni: cluster.sni }),
      ...(retry === undefined ? {} : { retry }),
      next: () => {
        const endpoint = balancer.pick(tried);
        if (endpoint === null) return null;
        tried.add(endpoint);
        return urlOf(cluster.scheme, endpoint);
      },
    };
    return { ok: true, decision };
  }

  #pickCluster(clusters: Array<{ name: string; weight: number }>, total: number): string | null {
    if (clusters.length === 1) return clusters[0]?.name ?? null;
    let point = this.#random() * total;
    for (const c of clusters) {
      if (point < c.weight) return c.name;
      point -= c.weight;
    }
    return clusters[clusters.length - 1]?.name ?? null;
  }
}
