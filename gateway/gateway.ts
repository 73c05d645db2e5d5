/**
 * The gateway: one port for clients (HTTP/1.1, HTTP/2, gRPC, WebSocket, CONNECT) and for agents'
 * tunnel connections (ALPN `tether-tunnel/1`); carries each client request as one HTTP/2 stream
 * through a tunnel of the request's cluster.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Registry } from 'prom-client';
import { checkTlsPeer, type CertificateSource } from '../certs/index.js';
import { AdminServer, type Readiness } from '../common/admin-server.js';
import { TetherError } from '../common/errors.js';
import type { Closable } from '../common/lifecycle.js';
import { once } from '../common/lifecycle.js';
import { createLogger, type Logger } from '../common/log.js';
import { createRegistry } from '../common/metrics.js';
import { INVALID_OPTIONS, parseOptions } from '../common/options.js';
import { Bindings } from './binding/bindings.js';
import { ClientAuthenticator, claimAuthorizer, type Authorizer } from './client-auth.js';
import { ControlPlaneWatch, type WatchedCluster } from './control-plane-watch.js';
import { FrontDoor, type ServerTls } from './front-door.js';
import { GatewayMetrics } from './metrics.js';
import { gatewayOptionsSchema, type GatewayConfig, type GatewayConfigInput } from './options.js';
import { ClientProxy } from './proxy.js';
import { TunnelAcceptor, type AgentCheck } from './tunnel-acceptor.js';
import { TunnelRegistry } from './tunnel-registry.js';
import type { ReplicaInfo } from './tunnel/index.js';

export interface GatewayOptions extends GatewayConfigInput {
  tls: ServerTls;
  /** Who may reach which cluster; default: the token's `clusters` claim. */
  authorizer?: Authorizer;
  /** Replace the agent identity check (default: certs' `checkTlsPeer` with SPIFFE, trust domain, deny-list). */
  checkAgent?: AgentCheck;
  /** The control plane watch's bearer token, asked for at every connect (instead of `controlPlane.tokenFile`). */
  controlPlaneToken?: () => string | Promise<string>;
  logger?: Logger;
  registry?: Registry;
}

export class Gateway implements Closable {
  readonly config: GatewayConfig;
  readonly metrics: GatewayMetrics;
  readonly tunnels = new TunnelRegistry();
  /** HTTP/1.1 connections in binding mode. */
  readonly bindings = new Bindings();
  private readonly logger: Logger;
  private readonly frontDoor: FrontDoor;
  private readonly acceptor: TunnelAcceptor;
  private readonly proxy: ClientProxy;
  private revoked: Set<string>;
  private admin: AdminServer | null = null;
  private tlsAddress: AddressInfo | null = null;
  private plainAddr: AddressInfo | null = null;
  private agentAddr: AddressInfo | null = null;
  private replicaList: ReplicaInfo[];
  /** Sovereign clusters set in the options: kept whatever the control plane sends. */
  private readonly sovereignByOptions: readonly string[];
  /** Following the control plane's cluster list and modes (`controlPlane` option), else null. */
  readonly controlPlane: ControlPlaneWatch | null;

  constructor(options: GatewayOptions) {
    const { tls, authorizer, checkAgent, controlPlaneToken, logger, registry, ...rest } = options;
    this.config = parseOptions(gatewayOptionsSchema, rest, 'gateway');
    this.logger = logger ?? createLogger('gateway');
    const auth = new ClientAuthenticator(this.config.auth);
    this.metrics = new GatewayMetrics(registry ?? createRegistry({ defaultLabels: { component: 'gateway', instance: this.config.id } }), () => auth.cache);
    this.revoked = new Set(this.config.revokedSerials.map((s) => s.toLowerCase()));
    this.replicaList = this.config.replicas;
    const authorize = authorizer ?? claimAuthorizer(this.config.auth.mode === 'jwt' ? this.config.auth.clustersClaim : 'clusters');
    const allow: Authorizer = this.config.auth.mode === 'none' && authorizer === undefined ? () => true : authorize;
    const proxy = (this.proxy = new ClientProxy(this.config, this.tunnels, auth, allow, this.metrics, this.logger));
    this.acceptor = new TunnelAcceptor(this.config, this.tunnels, this.metrics, this.logger, checkAgent ?? ((socket) => this.defaultCheck(socket)), () =>
      this.replicas(),
    );
    this.frontDoor = new FrontDoor(this.config, tls, proxy, this.metrics, this.logger, (socket: TLSSocket) => this.acceptor.accept(socket), this.tunnels, this.bindings);
    this.tunnels.onDraining((tunnel) => this.bindings.tunnelDraining(tunnel));
    this.tunnels.onChange(() => {
      this.metrics.tunnelConnections.reset();
      for (const [cluster, n] of Object.entries(this.tunnels.countsByCluster())) this.metrics.tunnelConnections.set({ cluster }, n);
    });
    this.sovereignByOptions = [...this.config.sovereignClusters];
    this.controlPlane = this.config.controlPlane === undefined ? null : this.watchControlPlane(this.config.controlPlane, controlPlaneToken);
  }

  private watchControlPlane(options: NonNullable<GatewayConfig['controlPlane']>, token: (() => string | Promise<string>) | undefined): ControlPlaneWatch {
    const { tokenFile, caFile } = options;
    if ((tokenFile === undefined) === (token === undefined)) {
      throw new TetherError(INVALID_OPTIONS, 'gateway.controlPlane: set exactly one of tokenFile or the controlPlaneToken option');
    }
    let ca: string | undefined;
    if (caFile !== undefined) {
      try {
        ca = readFileSync(caFile, 'utf8');
      } catch (reason) {
        throw new TetherError(INVALID_OPTIONS, `gateway.controlPlane.caFile: cannot read ${caFile}`, { cause: reason });
      }
    }
    return new ControlPlaneWatch({
      url: options.url,
      orgs: options.orgs,
      gatewayId: this.config.id,
      token: token ?? (() => readFile(tokenFile as string, 'utf8')),
      ...(ca === undefined ? {} : { ca }),
      backoff: options.backoff,
      apply: (clusters) => this.applyControlPlane(clusters),
      logger: this.logger.child({ component: 'control-plane-watch' }),
      registry: this.metrics.registry,
    });
  }

  /**
   * A list from the control plane: its clusters replace the registered ones, and its sovereign ones
   * plus the options' are refused. Its `tunnel` only lifts the gateway's early refusal: the agent
   * dials no tunnel unless the customer signed `tunnel` (README: sovereign mode).
   */
  private applyControlPlane(clusters: readonly WatchedCluster[]): void {
    this.setClusters(clusters.map((cluster) => cluster.id));
    this.setSovereignClusters([...this.sovereignByOptions, ...clusters.filter((cluster) => cluster.mode === 'sovereign').map((cluster) => cluster.id)]);
  }

  private defaultCheck(socket: TLSSocket): ReturnType<AgentCheck> {
    const result = checkTlsPeer(socket, { revokedSerials: this.revoked, expectedTrustDomain: this.config.trustDomain, requireSpiffe: true, usage: 'client' });
    if (!result.ok) return result;
    const { clusterId, agentId, spiffeId, serialNumber } = result.peer;
    if (clusterId === undefined || agentId === undefined) {
      return { ok: false, error: new TetherError('AGENT_IDENTITY_INVALID', 'the certificate names no cluster and agent') };
    }
    return { ok: true, peer: { clusterId, agentId, serialNumber, ...(spiffeId === undefined ? {} : { spiffeId }) } };
  }

  get registry(): Registry {
    return this.metrics.registry;
  }

  async start(): Promise<void> {
    const { tls, plain, agents } = await this.frontDoor.listen();
    this.tlsAddress = tls;
    this.plainAddr = plain;
    this.agentAddr = agents;
    if (this.config.admin !== undefined) {
      this.admin = new AdminServer({ registry: this.registry, readiness: () => this.readiness(), ...this.config.admin });
      await this.admin.listen();
    }
    this.controlPlane?.start();
    this.logger.info({ id: this.config.id, tls: this.address, agents: this.agentAddress, plain: this.plainUrl }, 'gateway listening');
  }

  /** `host:port` of the TLS port (clients, and agents unless they have a port of their own). */
  get address(): string {
    if (this.tlsAddress === null) throw new TetherError('NOT_STARTED', 'gateway is not listening');
    return formatAddress(this.tlsAddress);
  }

  /** `host:port` agents dial: the agent port when `agentListen` is set, else the TLS port. */
  get agentAddress(): string {
    return this.agentAddr === null ? this.address : formatAddress(this.agentAddr);
  }

  get url(): string {
    return `https://${this.address}`;
  }

  get plainUrl(): string | null {
    return this.plainAddr === null ? null : `http://${formatAddress(this.plainAddr)}`;
  }

  get adminUrl(): string | null {
    return this.admin?.url ?? null;
  }

  replicas(): ReplicaInfo[] {
    const self: ReplicaInfo = { id: this.config.id, address: this.config.advertiseAddress ?? (this.tlsAddress === null ? '' : this.agentAddress) };
    return [self, ...this.replicaList.filter((r) => r.id !== self.id)];
  }

  /** Replace the list of peer replicas and tell every connected agent. */
  setReplicas(replicas: ReplicaInfo[]): void {
    this.replicaList = replicas;
    this.acceptor.announceReplicas(this.replicas());
  }

  readiness(): Readiness {
    const controlPlane = this.controlPlane === null ? {} : { controlPlane: { connected: this.controlPlane.connected, clusters: this.controlPlane.clusters?.length ?? null } };
    return { ready: this.tlsAddress !== null, details: { tunnels: this.tunnels.countsByCluster(), ...controlPlane } };
  }

  updateTls(serverTls: ServerTls): void {
    this.frontDoor.updateTls(serverTls);
  }

  /** Follow a `CertificateSource` for the server certificate (new connections get the renewed one). */
  useCertificateSource(source: Pick<CertificateSource, 'subscribe'>, caPem: string): () => void {
    return source.subscribe((material) => this.updateTls({ key: material.keyPem, cert: material.chainPem, ca: caPem }));
  }

  /** Replace the revocation deny-list; live tunnels whose certificate is now revoked are closed. */
  setRevokedSerials(serials: string[]): void {
    this.revoked = new Set(serials.map((s) => s.toLowerCase()));
    for (const tunnel of this.tunnels.all()) {
      if (tunnel.serialNumber !== undefined && this.revoked.has(tunnel.serialNumber.toLowerCase())) {
        this.logger.warn({ cluster: tunnel.clusterId, agent: tunnel.agentId }, 'closing tunnel: certificate revoked');
        this.tunnels.remove(tunnel);
        tunnel.session.destroy();
      }
    }
  }

  /**
   * Refuse these client identities (token subjects) from now on, in both binding modes: requests
   * get 401 `IDENTITY_REVOKED`, and their bound connections close at once.
   */
  revokeSubjects(subjects: Iterable<string>): void {
    const revoked = new Set(subjects);
    this.proxy.revokedSubjects = revoked;
    this.bindings.revoke(revoked);
  }

  /**
   * Replace the registered clusters. Requests for a removed cluster get 404 `UNKNOWN_CLUSTER`,
   * its bound connections close at once, and its agents' tunnels are closed.
   */
  setClusters(clusters: string[]): void {
    const registered = new Set(clusters);
    this.config.clusters = [...registered];
    this.proxy.clusters = registered;
    this.bindings.dropClusters(registered);
    for (const tunnel of this.tunnels.all()) {
      if (registered.has(tunnel.clusterId)) continue;
      this.logger.warn({ cluster: tunnel.clusterId, agent: tunnel.agentId }, 'closing tunnel: cluster removed');
      this.tunnels.remove(tunnel);
      tunnel.session.destroy();
    }
  }

  /**
   * Replace the clusters in sovereign mode. From now on their agents' tunnels are refused at the
   * handshake (`CLUSTER_SOVEREIGN`) and their requests answered 403 `CLUSTER_SOVEREIGN` in both
   * binding modes; a cluster that has just become sovereign loses its live tunnels and bound
   * connections at once (a switch takes the vendor out of the data path: nothing waits for a
   * drain). A cluster taken off the list is served again once its agents dial in.
   */
  setSovereignClusters(clusters: Iterable<string>): void {
    const sovereign = new Set(clusters);
    const added = new Set([...sovereign].filter((cluster) => !this.proxy.sovereign.has(cluster)));
    this.config.sovereignClusters = [...sovereign];
    this.proxy.sovereign = sovereign;
    if (added.size === 0) return;
    this.logger.warn({ clusters: [...added] }, 'clusters switched to sovereign mode: closing their tunnels and bound connections');
    this.bindings.closeClusters(added, 'CLUSTER_SOVEREIGN');
    for (const tunnel of this.tunnels.all()) {
      if (!added.has(tunnel.clusterId)) continue;
      this.tunnels.remove(tunnel);
      tunnel.session.destroy();
    }
  }

  /** The mode this gateway applies to `clusterId`. */
  clusterMode(clusterId: string): 'tunnel' | 'sovereign' {
    return this.proxy.sovereign.has(clusterId) ? 'sovereign' : 'tunnel';
  }

  /** Client requests being admitted plus tunnel streams carrying an exchange (idle bound streams excluded). */
  private inFlight(): number {
    return this.proxy.admitting + this.tunnels.all().reduce((n, t) => n + t.activeStreams, 0) - this.bindings.idleStreams;
  }

  /**
   * Tell agents to move (control `drain`), stop accepting clients, let in-flight requests finish
   * within `graceMs`, then GOAWAY the tunnels and close.
   */
  private draining: Promise<void> | null = null;

  drain(graceMs: number = this.config.drainGraceMs): Promise<void> {
    this.draining ??= this.drainNow(graceMs);
    return this.draining;
  }

  private async drainNow(graceMs: number): Promise<void> {
    const deadline = Date.now() + graceMs;
    this.controlPlane?.close();
    this.acceptor.announceDrain(this.config.agentRetryAfterMs);
    const stopped = this.frontDoor.stopAccepting();
    this.bindings.drain();
    // Also wait for open client connections, up to the keep-alive timeout: a request may still
    // arrive on one (see FrontDoor.stopAccepting), and closing the tunnels first answered it 503
    // NO_TUNNEL.
    const connectionsDeadline = Math.min(deadline, Date.now() + this.frontDoor.keepAliveTimeoutMs);
    const busy = (): boolean => this.inFlight() > 0 || (this.frontDoor.openClientConnections > 0 && Date.now() < connectionsDeadline);
    while (busy() && Date.now() < deadline) {
      await new Promise<void>((resolve) => setTimeout(resolve, 25));
    }
    await this.acceptor.closeAll(Math.max(0, deadline - Date.now()));
    this.bindings.destroyAll();
    this.frontDoor.destroyAll();
    await stopped;
    await this.admin?.drain();
  }

  readonly close = once(async (): Promise<void> => {
    this.controlPlane?.close();
    this.acceptor.announceDrain(this.config.agentRetryAfterMs);
    const stopped = this.frontDoor.stopAccepting();
    await this.acceptor.closeAll(0);
    this.bindings.destroyAll();
    this.frontDoor.destroyAll();
    await stopped;
    await this.admin?.close();
  });
}

function formatAddress(address: AddressInfo): string {
  return address.family === 'IPv6' || address.address.includes(':') ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
}
