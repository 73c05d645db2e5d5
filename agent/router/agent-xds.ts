/**
 * The agent's xDS side, in one piece the agent can own: an embedded `XdsServer` on a loopback
 * address serving the static routes as a snapshot (to the built-in router and to an Envoy), and,
 * when `useBuiltInRouter`, the router with its ADS client subscribed to that server.
 */
import type { Registry } from 'prom-client';
import { TetherError } from '../../common/errors.js';
import type { Closable } from '../../common/lifecycle.js';
import { silentLogger } from '../../common/log.js';
import type { Logger } from '../../common/log.js';
import { XdsServer } from '../../xds/index.js';
import { AdsClient } from './ads-client.js';
import { Router } from './router.js';
import { staticSnapshot } from './static-snapshot.js';
import type { StaticRoute } from './static-snapshot.js';
import { StreamRouting } from './stream-routing.js';

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

  constructor(options: AgentXdsOptions) {
    this.#options = options;
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
    this.server.setSnapshot(staticSnapshot(this.#options.routes));
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
  }

  /** Replace the static routes (a new snapshot; the router follows over ADS). */
  setRoutes(routes: readonly StaticRoute[]): void {
    this.server.setSnapshot(staticSnapshot(routes));
  }

  async drain(graceMs = 1000): Promise<void> {
    await this.#client?.close();
    await this.server.drain(graceMs);
  }

  async close(): Promise<void> {
    await this.#client?.close();
    await this.server.close();
  }
}
