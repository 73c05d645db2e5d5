/**
 * The agent's xDS side, in one piece the agent can own: an embedded `XdsServer` on a loopback
 * address serving the static routes as a snapshot (to the built-in router and to an Envoy), and,
 * when `useBuiltInRouter`, the router with its ADS client subscribed to that server.
 *
 * Sovereign mode (`setSovereign`): the snapshot also carries the sovereign listener (PROXY
 * protocol, the customer's TLS certificate, jwt_authn with the customer's IdP, RBAC; xds/builders.ts
 * `sovereignListener`), its routes, the JWKS cluster and the certificate secret, for an Envoy to
 * consume; with the built-in router, a second router and ADS client (`downstream: true`, that
 * listener) feed a `SovereignFront` that serves it.
 */
import type { Registry } from 'prom-client';
import { TetherError } from '../../common/errors.js';
import type { Closable } from '../../common/lifecycle.js';
import { silentLogger } from '../../common/log.js';
import type { Logger } from '../../common/log.js';
import { XdsServer, jwksCluster, sovereignListener, tlsSecret } from '../../xds/index.js';
import type { SnapshotInput, SovereignListenerSpec } from '../../xds/index.js';
import { AdsClient } from './ads-client.js';
import { Router } from './router.js';
import { staticSnapshot } from './static-snapshot.js';
import type { StaticRoute } from './static-snapshot.js';
import { StreamRouting } from './stream-routing.js';
import { SovereignFront } from './sovereign-front.js';
import type { SovereignFrontOptions } from './sovereign-front.js';

/** The sovereign listener the agent serves, as the customer's local policy describes it. */
export interface AgentSovereignOptions {
  listener: SovereignListenerSpec;
  /** Routes of the sovereign listener (default: the agent's routes). */
  routes?: readonly StaticRoute[];
  /** The customer's certificate as an SDS secret, when `listener.tls` names one. */
  secret?: { name: string; certificateChainPem: string; privateKeyPem: string };
  /** Front options (timeouts); router, logger and registry come from the agent. */
  front?: Omit<SovereignFrontOptions, 'router' | 'logger' | 'registry'>;
}

/** The agent's snapshot: the static routes, plus the sovereign listener and what it references. */
export function agentSnapshot(routes: readonly StaticRoute[], sovereign: AgentSovereignOptions | null): SnapshotInput {
  const base = staticSnapshot(routes);
  if (sovereign === null) return base;
  const spec = sovereign.listener;
  // The sovereign routes as their own route configuration (its listener from staticSnapshot is not used).
  const own = staticSnapshot(sovereign.routes ?? routes, { routeConfigName: spec.routeConfigName, listenerName: spec.name });
  const byName = <T,>(items: T[], name: (item: T) => string): T[] => [...new Map(items.map((item) => [name(item), item])).values()];
  const jwks = 'remote' in spec.jwt.jwks ? [jwksCluster(spec.jwt.jwks.remote.cluster, spec.jwt.jwks.remote.uri)] : [];
  return {
    listeners: [...(base.listeners ?? []), sovereignListener(spec)],
    routes: [...(base.routes ?? []), ...(own.routes ?? [])],
    clusters: byName([...(base.clusters ?? []), ...(own.clusters ?? []), ...jwks], (c) => c.name),
    endpoints: byName([...(base.endpoints ?? []), ...(own.endpoints ?? [])], (e) => e.clusterName),
    secrets: sovereign.secret === undefined ? [] : [tlsSecret(sovereign.secret.name, sovereign.secret.certificateChainPem, sovereign.secret.privateKeyPem)],
  };
}

/** What serves the sovereign listener with the built-in router. */
interface SovereignPart {
  router: Router;
  client: AdsClient;
  front: SovereignFront;
}

export interface AgentXdsOptions {
  routes: readonly StaticRoute[];
  /** Where the xDS server listens (loopback; port 0 picks one). */
  listen: { host: string; port: number };
  useBuiltInRouter: boolean;
  nodeId?: string;
  logger?: Logger;
  registry?: Registry;
  /** How long start() waits for the router's first configuration (default 5 s). */
  readyTimeoutMs?: number;
}

export class AgentXds implements Closable {
  readonly server: XdsServer;
  readonly router: Router | null;
  readonly routing: StreamRouting | null;
  #client: AdsClient | null = null;
  #address: { host: string; port: number } | null = null;
  readonly #options: AgentXdsOptions;
  #routes: readonly StaticRoute[];
  #sovereign: AgentSovereignOptions | null = null;
  #sovereignPart: SovereignPart | null = null;

  constructor(options: AgentXdsOptions) {
    this.#options = options;
    this.#routes = options.routes;
    const logger = options.logger ?? silentLogger();
    this.server = new XdsServer({ logger, ...(options.registry === undefined ? {} : { registry: options.registry }) });
    this.router = options.useBuiltInRouter ? new Router() : null;
    this.routing = this.router === null ? null : new StreamRouting(this.router);
  }

  get address(): { host: string; port: number } | null {
    return this.#address;
  }

  get client(): AdsClient | null {
    return this.#client;
  }

  /** Publish the static routes, listen, and (built-in router) wait for its first configuration. */
  async start(): Promise<void> {
    this.server.setSnapshot(agentSnapshot(this.#routes, this.#sovereign));
    this.#address = await this.server.listen(this.#options.listen);
    if (this.router === null) return;
    const host = this.#address.host.includes(':') ? `[${this.#address.host}]` : this.#address.host;
    const client = new AdsClient({
      target: `${host}:${this.#address.port}`,
      router: this.router,
      nodeId: this.#options.nodeId ?? 'tether-agent-router',
      ...(this.#options.logger === undefined ? {} : { logger: this.#options.logger }),
    });
    this.#client = client;
    const router = this.router;
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        router.off('updated', check);
        reject(new TetherError('ROUTER_NOT_READY', `no routable xDS configuration within ${this.#options.readyTimeoutMs ?? 5000} ms`));
      }, this.#options.readyTimeoutMs ?? 5000);
      function check(): void {
        const config = router.config;
        if (config?.routeConfig === null || config === null) return;
        const eds = [...config.clusters.values()].every((c) => c.edsName === null || config.assignments.has(c.edsName));
        if (!eds) return;
        clearTimeout(timer);
        router.off('updated', check);
        resolve();
      }
      router.on('updated', check);
    });
    client.start();
    await ready;
    // setSovereign() before start() only published the listener; its front starts now.
    if (this.#sovereign !== null && this.#sovereignPart === null) await this.#startFront(this.#sovereign);
  }

  /** Replace the static routes (a new snapshot; the routers follow over ADS). */
  setRoutes(routes: readonly StaticRoute[]): void {
    this.#routes = routes;
    this.server.setSnapshot(agentSnapshot(routes, this.#sovereign));
  }

  /** The front serving the sovereign listener (built-in router, sovereign mode), or null. */
  get sovereignFront(): SovereignFront | null {
    return this.#sovereignPart?.front ?? null;
  }

  /**
   * Serve the sovereign listener (`options`), or stop serving it (`null`): the snapshot is
   * republished with or without it (refused as the xDS server refuses any snapshot: a dangling
   * reference or what a connected client would NACK); with the built-in router, its front is
   * started (resolves once it listens; before start(), start() starts it) or drained.
   */
  async setSovereign(options: AgentSovereignOptions | null, drainGraceMs = 10_000): Promise<void> {
    const previous = this.#sovereign;
    this.server.setSnapshot(agentSnapshot(this.#routes, options));
    this.#sovereign = options;
    if (options === null || previous?.listener.name !== options.listener.name) {
      const part = this.#sovereignPart;
      this.#sovereignPart = null;
      if (part !== null) {
        await part.front.drain(drainGraceMs);
        await part.client.close();
      }
    }
    if (options === null || this.router === null || this.#sovereignPart !== null || this.#address === null) return;
    await this.#startFront(options);
  }

  async #startFront(options: AgentSovereignOptions): Promise<void> {
    if (this.#address === null) return;
    const host = this.#address.host.includes(':') ? `[${this.#address.host}]` : this.#address.host;
    const router = new Router();
    const client = new AdsClient({
      target: `${host}:${this.#address.port}`,
      router,
      nodeId: `${this.#options.nodeId ?? 'tether-agent-router'}-sovereign`,
      listenerName: options.listener.name,
      downstream: true,
      ...(this.#options.logger === undefined ? {} : { logger: this.#options.logger }),
    });
    const front = new SovereignFront({
      router,
      ...options.front,
      ...(this.#options.logger === undefined ? {} : { logger: this.#options.logger }),
      ...(this.#options.registry === undefined ? {} : { registry: this.#options.registry }),
    });
    this.#sovereignPart = { router, client, front };
    client.start();
    try {
      await front.start();
    } catch (reason) {
      if (this.#sovereignPart?.front === front) this.#sovereignPart = null;
      await front.close();
      await client.close();
      throw reason;
    }
  }

  async drain(graceMs = 1000): Promise<void> {
    const part = this.#sovereignPart;
    if (part !== null) {
      await part.front.drain(graceMs);
      await part.client.close();
    }
    await this.#client?.close();
    await this.server.drain(graceMs);
  }

  async close(): Promise<void> {
    const part = this.#sovereignPart;
    if (part !== null) {
      await part.front.close();
      await part.client.close();
    }
    await this.#client?.close();
    await this.server.close();
  }
}
