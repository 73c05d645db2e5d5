/**
 * `tether control`: the store, the service, the scheduler, and the API on gRPC and JSON/HTTP.
 * When the KEK comes from a key file, the file is re-read periodically, so a key added or
 * promoted by `tether control rotate-key` is picked up without a restart.
 */
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Server as GrpcServerClass, ServerCredentials } from '@grpc/grpc-js';
import type { Server as GrpcServer, ServerDuplexStream, UntypedServiceImplementation } from '@grpc/grpc-js';
import type { JSONWebKeySet } from 'jose';
import type { Registry } from 'prom-client';
import { CertificateAuthority } from '../certs/certificate-authority.js';
import { createIdentityExchange } from '../certs/identity-exchange.js';
import { getErrorMessage, TetherError } from '../common/errors.js';
import { once } from '../common/lifecycle.js';
import type { Closable } from '../common/lifecycle.js';
import { createLogger } from '../common/log.js';
import type { Logger } from '../common/log.js';
import { createRegistry } from '../common/metrics.js';
import { AdminServer } from '../common/admin-server.js';
import { INVALID_OPTIONS } from '../common/options.js';
import { serviceDefinition } from '../xds/grpc-service.js';
import { AgentChannel } from './agent-channel.js';
import { ClusterWatch, ClusterWatchService } from './cluster-watch.js';
import { createDispatch } from './api-dispatch.js';
import { apiMethods } from './api-handlers.js';
import { createAuthenticator } from './auth.js';
import type { Authenticator, UserIssuerConfig } from './auth.js';
import type { ControlConfig } from './config.js';
import * as pb from './gen/tether/control/v1/control_pb.js';
import { bindGrpc, createGrpcApi } from './grpc-api.js';
import { storeClusterIdentities } from './identity.js';
import { OperatorConsole } from './console/index.js';
import { createHttpApi } from './http-api.js';
import type { HttpApi } from './http-api.js';
import { Scheduler } from './schedules.js';
import { ControlService } from './service.js';
import { loadKeyring, readKeyFile } from './store/keyring.js';
import type { Keyring } from './store/keyring.js';
import { SqliteStore } from './store/sqlite-store.js';

export interface ControlServerOptions {
  /** The CA for the identity exchange (else `identity.caDir` of the config, else none). */
  ca?: CertificateAuthority;
  logger?: Logger;
  env?: NodeJS.ProcessEnv;
  now?: () => number;
}

async function issuerConfigs(config: ControlConfig): Promise<UserIssuerConfig[]> {
  const issuers: UserIssuerConfig[] = [];
  for (const entry of config.auth.issuers) {
    let jwks: JSONWebKeySet | undefined;
    if (entry.jwksFile !== undefined) {
      try {
        jwks = JSON.parse(await readFile(entry.jwksFile, 'utf8')) as JSONWebKeySet;
      } catch (reason) {
        throw new TetherError(INVALID_OPTIONS, `control.auth.issuers: cannot read JWKS ${entry.jwksFile}: ${getErrorMessage(reason)}`);
      }
    }
    issuers.push({ issuer: entry.issuer, audience: entry.audience, groupsClaim: entry.groupsClaim, jwks, algorithms: entry.algorithms });
  }
  return issuers;
}

export class ControlServer implements Closable {
  readonly service: ControlService;
  readonly store: SqliteStore;
  readonly metrics: Registry;
  readonly authenticator: Authenticator;
  /** The operator console on the JSON/HTTP port (null when HTTP or the console is off). */
  readonly console: OperatorConsole | null;
  readonly #logger: Logger;
  readonly #grpc: GrpcServer;
  readonly #http: HttpApi | null;
  readonly #scheduler: Scheduler | null;
  readonly #watch: ClusterWatch;
  #agents: { channel: AgentChannel; grpc: GrpcServer; port: number } | null = null;
  #admin: AdminServer | null = null;
  readonly #keyring: Keyring;
  readonly #keyFile: string | undefined;
  #keyTimer: NodeJS.Timeout | null = null;
  #grpcPort = 0;
  #httpPort = 0;

  private constructor(parts: {
    service: ControlService; store: SqliteStore; metrics: Registry; authenticator: Authenticator; console: OperatorConsole | null; logger: Logger; grpc: GrpcServer; http: HttpApi | null; scheduler: Scheduler | null; keyring: Keyring; keyFile: string | undefined; watch: ClusterWatch;
  }) {
    this.service = parts.service;
    this.store = parts.store;
    this.metrics = parts.metrics;
    this.authenticator = parts.authenticator;
    this.console = parts.console;
    this.#logger = parts.logger;
    this.#grpc = parts.grpc;
    this.#http = parts.http;
    this.#scheduler = parts.scheduler;
    this.#watch = parts.watch;
    this.#keyring = parts.keyring;
    this.#keyFile = parts.keyFile;
  }

  static async start(config: ControlConfig, options: ControlServerOptions = {}): Promise<ControlServer> {
    const logger = options.logger ?? createLogger('control');
    const keyring = await loadKeyring({ keyFile: config.store.keyFile, env: options.env });
    const store = SqliteStore.open({ path: config.store.path, keyring });
    const metrics = createRegistry();
    let scheduler: Scheduler | null = null;
    const service = new ControlService({ store, allowFileUris: config.allowFileUris, logger, now: options.now, onSchedulesChanged: () => scheduler?.poke() });
    let operatorConsole: OperatorConsole | null = null;
    try {
      await service.ensureAdmins(config.org, config.bootstrapAdmins);
      const authenticator = createAuthenticator(await issuerConfigs(config));
      const ca = options.ca ?? (config.identity === undefined ? undefined : await CertificateAuthority.load(config.identity.caDir));
      if (config.http.enabled && config.console.enabled) {
        operatorConsole = await OperatorConsole.create({
          ...config.console,
          service,
          authenticator,
          org: config.org,
          ...(config.agents === undefined || ca === undefined ? {} : { trustDomain: ca.trustDomain }),
          secure: config.http.tls !== undefined,
          logger: logger.child({ component: 'console' }),
          ...(options.now === undefined ? {} : { now: options.now }),
        });
      }
      const exchange =
        ca === undefined
          ? undefined
          : createIdentityExchange({ ca, clusters: storeClusterIdentities(store), certificateTtlMs: config.identity?.certificateTtlMs, metrics, logger });
      // The console's agent tracker sees what the exchange issues and refuses revoked agents.
      const identity = exchange === undefined ? undefined : (operatorConsole?.agents?.wrapExchange(exchange) ?? exchange);
      const methods = apiMethods(service, { identity });
      const dispatch = createDispatch({ service, authenticator, logger, metrics });
      const grpc = createGrpcApi(methods, dispatch);
      // The gateways' watch of the cluster list and modes (control/cluster-watch.ts), on the same port.
      const watch = new ClusterWatch({ service, authenticator, logger: logger.child({ component: 'gateway-watch' }), metrics, pollMs: config.gatewayWatch.pollMs, ...(options.now === undefined ? {} : { now: options.now }) });
      grpc.addService(serviceDefinition(ClusterWatchService), watch.implementation());
      const grpcTls = config.grpc.tls === undefined ? undefined : { cert: await readFile(config.grpc.tls.cert), key: await readFile(config.grpc.tls.key) };
      const credentials = grpcTls === undefined ? ServerCredentials.createInsecure() : ServerCredentials.createSsl(null, [{ cert_chain: grpcTls.cert, private_key: grpcTls.key }], false);
      const http = config.http.enabled
        ? createHttpApi(methods, dispatch, {
            ...(config.http.tls === undefined ? {} : { tls: { cert: await readFile(config.http.tls.cert, 'utf8'), key: await readFile(config.http.tls.key, 'utf8') } }),
            ...(operatorConsole === null ? {} : { console: operatorConsole }),
          })
        : null;
      if (config.scheduler.enabled) scheduler = new Scheduler({ host: service, logger, maxWaitMs: config.scheduler.maxWaitMs, now: options.now });
      const server = new ControlServer({ service, store, metrics, authenticator, console: operatorConsole, logger, grpc, http, scheduler, keyring, keyFile: config.store.keyFile, watch });
      try {
        server.#grpcPort = await bindGrpc(grpc, config.grpc.host, config.grpc.port, credentials);
        if (http !== null) server.#httpPort = await server.#listenHttp(http, config.http.host, config.http.port);
        if (config.agents !== undefined) {
          if (ca === undefined) throw new TetherError(INVALID_OPTIONS, 'control.agents needs control.identity (the CA that issues agent certificates)');
          await server.#startAgents(config.agents, ca, logger);
        }
        if (config.admin !== undefined) {
          server.#admin = new AdminServer({
            registry: metrics,
            host: config.admin.host,
            port: config.admin.port,
            readiness: () => ({ ready: true, details: { agents: server.agentChannel?.connected() ?? {} } }),
          });
          await server.#admin.listen();
        }
        if (scheduler !== null) await scheduler.start();
        if (config.store.keyFile !== undefined) server.#watchKeyFile(config.store.keyReloadMs);
      } catch (reason) {
        await server.close();
        throw reason;
      }
      logger.info({ grpcPort: server.#grpcPort, httpPort: server.#httpPort }, 'control plane listening');
      return server;
    } catch (reason) {
      operatorConsole?.close();
      await store.close();
      throw reason;
    }
  }

  async #startAgents(options: NonNullable<ControlConfig['agents']>, ca: CertificateAuthority, logger: Logger): Promise<void> {
    let cert: string;
    let key: string;
    if (options.tls !== undefined) {
      cert = await readFile(options.tls.cert, 'utf8');
      key = await readFile(options.tls.key, 'utf8');
    } else {
      const ips = isIP(options.host) === 0 ? [] : [options.host];
      const issued = await ca.issueServer({ dnsNames: options.dnsNames, ipAddresses: ips.length > 0 ? ips : undefined });
      cert = issued.chainPem;
      key = issued.privateKeyPem ?? '';
    }
    const channel = new AgentChannel({
      service: this.service,
      trustDomain: ca.trustDomain,
      heartbeatIntervalMs: options.heartbeatIntervalMs,
      leaseMs: options.leaseMs,
      pollMs: options.pollMs,
      defaultCapacity: options.capacity,
      logger,
    });
    const grpc = new GrpcServerClass({ 'grpc.max_receive_message_length': 1024 * 1024 });
    const tracker = this.console?.agents ?? null;
    const implementation: UntypedServiceImplementation = {
      connect: (untyped: ServerDuplexStream<unknown, unknown>) => {
        const stream = untyped as ServerDuplexStream<pb.AgentMessage, pb.ControlMessage>;
        // The console's tracker watches the stream (and refuses a revoked agent) before the channel takes it.
        if (tracker === null) channel.handle(stream);
        else tracker.admit(stream, () => channel.handle(stream));
      },
    };
    grpc.addService(serviceDefinition(pb.AgentService), implementation);
    const credentials = ServerCredentials.createSsl(Buffer.from(ca.trustBundlePem()), [{ cert_chain: Buffer.from(cert), private_key: Buffer.from(key) }], true);
    this.#agents = { channel, grpc, port: 0 };
    this.#agents.port = await bindGrpc(grpc, options.host, options.port, credentials);
  }

  /** The admin server's port (0 when not configured). */
  get adminPort(): number {
    return this.#admin?.address().port ?? 0;
  }

  /** The agents' channel listener's port (0 when not configured). */
  get agentPort(): number {
    return this.#agents?.port ?? 0;
  }

  get agentChannel(): AgentChannel | null {
    return this.#agents?.channel ?? null;
  }

  async #listenHttp(http: HttpApi, host: string, port: number): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      http.server.once('error', reject);
      http.server.listen(port, host, () => {
        http.server.off('error', reject);
        resolve();
      });
    });
    return (http.server.address() as AddressInfo).port;
  }

  #watchKeyFile(intervalMs: number): void {
    const reload = async (): Promise<void> => {
      if (this.#keyFile === undefined) return;
      try {
        const fresh = await readKeyFile(this.#keyFile);
        const same = fresh.primaryId === this.#keyring.primaryId && fresh.ids.join() === this.#keyring.ids.join();
        if (!same) {
          this.#keyring.replaceWith(fresh);
          this.#logger.info({ primary: fresh.primaryId, keys: fresh.ids }, 'key file reloaded');
        }
      } catch (reason) {
        this.#logger.error({ err: reason }, 'key file reload failed; keeping the current keys');
      }
    };
    this.#keyTimer = setInterval(() => void reload(), intervalMs);
  }

  /** Re-read the key file now (also done every `keyReloadMs`). */
  async reloadKeys(): Promise<void> {
    if (this.#keyFile === undefined) return;
    this.#keyring.replaceWith(await readKeyFile(this.#keyFile));
  }

  get grpcPort(): number {
    return this.#grpcPort;
  }

  get httpPort(): number {
    return this.#httpPort;
  }

  readonly drain = (graceMs = 5_000): Promise<void> => this.#drainOnce(graceMs);
  #drainPromise: Promise<void> | null = null;

  #drainOnce(graceMs: number): Promise<void> {
    this.#drainPromise ??= (async () => {
      this.#stopTimers();
      // Gateways' watches never finish by themselves either: they keep their lists and reconnect.
      this.#watch.close();
      await this.#scheduler?.close();
      // Agents' streams never finish by themselves: end them now (agents reconnect with backoff).
      if (this.#agents !== null) {
        this.#agents.channel.close();
        this.#agents.grpc.forceShutdown();
      }
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, graceMs);
      });
      const grpcDone = new Promise<void>((resolve) => this.#grpc.tryShutdown(() => resolve()));
      const httpDone =
        this.#http === null
          ? Promise.resolve()
          : new Promise<void>((resolve) => {
              this.#http!.server.close(() => resolve());
              this.#http!.server.closeIdleConnections();
            });
      await Promise.race([Promise.all([grpcDone, httpDone]), deadline]);
      clearTimeout(timer);
      await this.close();
    })();
    return this.#drainPromise;
  }

  #stopTimers(): void {
    if (this.#keyTimer !== null) clearInterval(this.#keyTimer);
    this.#keyTimer = null;
  }

  readonly close = once(async () => {
    this.#stopTimers();
    this.#watch.close();
    this.console?.close();
    await this.#scheduler?.close();
    if (this.#agents !== null) {
      this.#agents.channel.close();
      this.#agents.grpc.forceShutdown();
    }
    this.#grpc.forceShutdown();
    await this.#admin?.close();
    if (this.#http !== null) {
      for (const socket of this.#http.sockets) socket.destroy();
      await new Promise<void>((resolve) => {
        if (!this.#http!.server.listening) resolve();
        else this.#http!.server.close(() => resolve());
      });
    }
    await this.store.close();
  });
}
