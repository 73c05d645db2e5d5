/**
 * The agent's tunnel side: keeps `connectionsPerGateway` connections to every gateway replica it
 * knows (seeds from its config, the rest learned from control streams), reconnects each with
 * jittered backoff honouring server retry delays, and forwards the gateway's streams upstream.
 * It opens no listening socket except the optional admin server (metrics, health) on a local address.
 *
 * With `sovereignty` configured it dials only while the customer-signed mode document says
 * `tunnel` (agent/sovereignty.ts): a switch to sovereign drains and closes every tunnel and stops
 * dialing; a signed switch back dials again. The control plane's mode claims are answered, never
 * obeyed (`answerControlPlaneMode`). With `sovereignty.listener` the agent also serves the
 * sovereign listener itself (through its xDS part, `AgentXds.setSovereign`) whenever the mode is
 * sovereign, fail-safe included, and drains it on a signed switch back to tunnel.
 */
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { CertificateSource } from '../certs/index.js';
import { AdminServer, type Readiness } from '../common/admin-server.js';
import { Backoff } from '../common/backoff.js';
import { TetherError } from '../common/errors.js';
import type { Closable } from '../common/lifecycle.js';
import { once } from '../common/lifecycle.js';
import { createLogger, type Logger } from '../common/log.js';
import { createRegistry } from '../common/metrics.js';
import { parseOptions } from '../common/options.js';
import type { ReplicaInfo } from '../gateway/tunnel/index.js';
import { AgentMetrics } from './metrics.js';
import { CLUSTER_MODES, ModeErrorCode, importCustomerPublicKey, type ClusterMode, type CustomerKeyInput, type VerifiedModeDocument } from './mode-document.js';
import { LocalMode, ModeClaimCode, type ModeAuthority, type ModeChange, type ModeClaimVerdict, type ModeRefusal } from './sovereignty.js';
import { agentOptionsSchema, type AgentConfig, type AgentConfigInput } from './options.js';
import { BoundStreams } from './bound-stream.js';
import { RouteTable } from './routes.js';
import type { StreamContext } from './stream-context.js';
import { TunnelConnection, type TlsMaterial } from './tunnel-connection.js';
import { UpstreamPools } from './upstreams.js';
import type { AgentXds } from './router/agent-xds.js';
import { sovereignOptionsOf } from './sovereign-listener.js';

export interface AgentOptions extends AgentConfigInput {
  tls: TlsMaterial;
  logger?: Logger;
  registry?: Registry;
}

/**
 * What `agent.events` emits: `live`, `closed`, `refused` and `failed`, each with an `AgentEvent`,
 * and `retry` (with `delayMs`) when a connection slot waits before dialing again.
 */
export interface AgentEvent {
  address: string;
  gatewayId: string | null;
  /** The refusal or failure code (`CERT_EXPIRED`, `CLUSTER_NOT_REGISTERED`, `TUNNEL_PING_TIMEOUT`, …). */
  code?: string;
  /** `retry` only: how long the slot waits before the next dial (backoff, or the gateway's retry-after spread by jitter). */
  delayMs?: number;
}

/**
 * The sovereign listener's state changes (`sovereignListener` event): `up` (serving; `address` is
 * the built-in router's socket, null when only published for an Envoy), `down` (drained and
 * stopped), `failed` (could not start or stop; `code` says why; the agent stays without a tunnel).
 */
export interface SovereignListenerEvent {
  state: 'up' | 'down' | 'failed';
  address: AddressInfo | null;
  code?: string;
  message?: string;
}

/** A mode the control plane claimed that the customer has not approved, as the agent answered it. */
export interface ModeClaim {
  claimed: ClusterMode;
  local: ClusterMode;
  code: string;
}

/**
 * `agent.events`: the connection events (`AgentEvent`), and the local mode's: `mode` (a switch
 * took effect), `modeRefused` (a mode document was refused; the mode in force stays), `modeClaim`
 * (the control plane claimed a mode the customer has not approved).
 */
export interface AgentEventMap {
  live: [AgentEvent];
  closed: [AgentEvent];
  refused: [AgentEvent];
  failed: [AgentEvent];
  retry: [AgentEvent];
  mode: [ModeChange];
  modeRefused: [ModeRefusal];
  modeClaim: [ModeClaim];
  sovereignListener: [SovereignListenerEvent];
}

export class Agent implements Closable, ModeAuthority {
  readonly config: AgentConfig;
  /** Connection lifecycle and mode events, for operators' hooks and tests. */
  readonly events = new EventEmitter<AgentEventMap>();
  readonly metrics: AgentMetrics;
  private tls: TlsMaterial;
  private readonly logger: Logger;
  private readonly streams: StreamContext;
  private readonly pools: UpstreamPools;
  private readonly bound = new BoundStreams();
  private readonly targets = new Map<string, Slot[]>();
  private readonly seeds: Set<string>;
  private admin: AdminServer | null = null;
  /**
   * The embedded xDS server and built-in router (`xds` option), or null; made by `start()`. Loaded
   * only when configured: its generated Envoy types are ~20 MiB of heap, and every major GC of an
   * agent that carries them pauses longer (the tunnel's p99).
   */
  private xdsPart: AgentXds | null = null;

  get xds(): AgentXds | null {
    return this.xdsPart;
  }
  private readyWaiters: Array<() => void> = [];
  private stopped = false;
  /** The customer-approved mode (`sovereignty` option), or null: tunnel mode as configured. */
  private localMode: LocalMode | null = null;
  private customerKey: ReturnType<typeof importCustomerPublicKey> | null = null;
  /** Slots taken out of `targets` (vanished replicas, a switch to sovereign) until they have stopped. */
  private readonly retiring = new Set<Slot>();
  /** Whether the sovereign listener is served now (`sovereignty.listener`), and the last failure. */
  private sovereignServing = false;
  private sovereignFailure: { code: string; message: string } | null = null;
  /** Sovereign listener starts and stops, one at a time, in order. Never rejects. */
  private listenerWork: Promise<void> = Promise.resolve();

  constructor(options: AgentOptions) {
    const { tls, logger, registry, ...rest } = options;
    this.config = parseOptions(agentOptionsSchema, rest, 'agent');
    this.tls = tls;
    this.logger = logger ?? createLogger('agent');
    this.metrics = new AgentMetrics(registry ?? createRegistry({ defaultLabels: { component: 'agent' } }));
    this.pools = new UpstreamPools(this.config.limits.streamWindowBytes);
    this.streams = {
      routes: new RouteTable(this.config.routes, this.config.tcpTargets),
      pools: this.pools,
      upstreamTimeoutMs: this.config.upstreamTimeoutMs,
      ...(this.config.upstreamCa === undefined ? {} : { upstreamCa: this.config.upstreamCa }),
      metrics: this.metrics,
      logger: this.logger,
      bound: this.bound,
    };
    this.seeds = new Set(this.config.gateways);
    const key = this.config.sovereignty?.customerKey;
    if (key !== undefined) this.customerKey = importCustomerPublicKey(key as CustomerKeyInput);
    this.setModeGauge();
  }

  /**
   * The local mode: `tunnel` without `sovereignty`; with it, the mode of the customer-signed
   * document in force, `sovereign` when there is none (before `start()` too).
   */
  get mode(): ClusterMode {
    if (this.config.sovereignty === undefined) return 'tunnel';
    return this.localMode?.mode ?? 'sovereign';
  }

  /** The customer-signed mode document in force, or null. */
  get modeDocument(): VerifiedModeDocument | null {
    return this.localMode?.document ?? null;
  }

  /** Read the mode file now (it is also followed by itself); resolves once any switch it causes has begun. */
  async reloadMode(): Promise<void> {
    await this.localMode?.reload();
  }

  /**
   * The control plane claims the cluster is in `claimed` mode (`Welcome.mode`). The customer's
   * local document wins in both directions: nothing changes here. A claim that differs is logged
   * and counted, emitted as `modeClaim`, and answered with its code for the control plane's audit
   * log: `CLUSTER_SOVEREIGN` (it claims tunnel, the customer says sovereign) or
   * `MODE_NOT_APPROVED` (it claims sovereign, the customer, or an agent without sovereignty
   * configured, says tunnel).
   */
  answerControlPlaneMode(claimed: ClusterMode): ModeClaimVerdict {
    const local = this.mode;
    if (claimed === local) {
      this.metrics.modeClaims.inc({ claimed, result: 'agreed' });
      return { agreed: true, local };
    }
    const code = local === 'sovereign' ? ModeClaimCode.CLUSTER_SOVEREIGN : ModeClaimCode.MODE_NOT_APPROVED;
    const seq = this.modeDocument?.seq ?? 0;
    const message =
      local === 'sovereign'
        ? `the control plane claims tunnel mode; the customer's mode document${seq === 0 ? ' (none valid: fail-safe)' : ` (seq ${seq})`} says sovereign, so no tunnel opens`
        : this.config.sovereignty === undefined
          ? 'the control plane claims sovereign mode; this agent has no customer key configured and stays in tunnel mode'
          : `the control plane claims sovereign mode; the customer's mode document (seq ${seq}) says tunnel`;
    this.metrics.modeClaims.inc({ claimed, result: code });
    this.logger.warn({ audit: 'agent.mode.claim', code, claimed, local, seq }, message);
    this.events.emit('modeClaim', { claimed, local, code });
    return { agreed: false, local, claimed, code, seq, message };
  }

  private setModeGauge(): void {
    const mode = this.mode;
    for (const m of CLUSTER_MODES) this.metrics.mode.set({ mode: m }, m === mode ? 1 : 0);
    this.metrics.modeSeq.set(this.modeDocument?.seq ?? 0);
  }

  private async startLocalMode(): Promise<void> {
    const sovereignty = this.config.sovereignty;
    if (sovereignty === undefined || this.localMode !== null) return;
    if (this.customerKey === null) {
      const file = sovereignty.customerKeyFile as string;
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch (reason) {
        throw new TetherError(ModeErrorCode.KEY_INVALID, `cannot read sovereignty.customerKeyFile ${file}`, { cause: reason });
      }
      const trimmed = text.trim();
      let input: CustomerKeyInput = trimmed;
      if (trimmed.startsWith('{')) {
        try {
          input = JSON.parse(trimmed) as Record<string, unknown>;
        } catch (reason) {
          throw new TetherError(ModeErrorCode.KEY_INVALID, `sovereignty.customerKeyFile ${file}: not a JWK (invalid JSON)`, { cause: reason });
        }
      }
      this.customerKey = importCustomerPublicKey(input);
    }
    const localMode = new LocalMode({
      clusterId: sovereignty.clusterId,
      key: this.customerKey,
      modeFile: sovereignty.modeFile,
      ...(sovereignty.stateFile === undefined ? {} : { stateFile: sovereignty.stateFile }),
      pollMs: sovereignty.pollMs,
      logger: this.logger,
      onRefused: (refusal) => {
        this.metrics.modeDocuments.inc({ result: refusal.code });
        this.events.emit('modeRefused', refusal);
      },
      onAccepted: (document, previous) => this.modeAccepted(document, previous),
    });
    this.localMode = localMode;
    try {
      await localMode.start();
    } catch (reason) {
      await localMode.close();
      this.localMode = null;
      throw reason;
    }
    if (localMode.document === null) {
      this.logger.warn({ audit: 'agent.mode', mode: this.mode, modeFile: sovereignty.modeFile }, 'no valid customer-signed mode document: sovereign (no tunnel) until one says tunnel');
    }
  }

  private modeAccepted(document: VerifiedModeDocument, previous: ClusterMode): void {
    this.metrics.modeDocuments.inc({ result: 'accepted' });
    this.setModeGauge();
    const change: ModeChange = { mode: document.mode, previous, seq: document.seq };
    this.logger.warn({ audit: 'agent.mode', ...change, iat: document.iat, cluster: document.cluster }, `customer-signed mode document accepted: ${document.mode}`);
    if (document.mode !== previous && !this.stopped) {
      if (document.mode === 'sovereign') this.enterSovereign();
      else for (const address of this.seeds) this.addTarget(address);
      this.changed();
      void this.followSovereignListener();
    }
    this.events.emit('mode', change);
  }

  /** Stop dialing; drain every tunnel (in-flight streams get `sovereignty.drainGraceMs`). */
  private enterSovereign(): void {
    const graceMs = this.config.sovereignty?.drainGraceMs ?? this.config.drainGraceMs;
    const slots = [...this.targets.values()].flat();
    this.targets.clear();
    for (const slot of slots) this.retire(slot, graceMs);
    this.logger.warn({ audit: 'agent.mode', connections: slots.length, graceMs }, 'sovereign mode: closing every tunnel connection');
  }

  private retire(slot: Slot, graceMs: number): void {
    this.retiring.add(slot);
    void slot
      .stop(graceMs)
      .catch((reason: unknown) => this.logger.warn({ err: reason, address: slot.address }, 'stopping a tunnel connection failed'))
      .finally(() => {
        this.retiring.delete(slot);
        this.changed();
      });
  }

  get registry(): Registry {
    return this.metrics.registry;
  }

  /**
   * Where the sovereign listener listens (the built-in router's front, `sovereignty.listener`
   * with port 0 picks one), or null when it is not served (tunnel mode, not configured, stopped,
   * or published for an Envoy only).
   */
  get sovereignAddress(): AddressInfo | null {
    return this.xdsPart?.sovereignFront?.address ?? null;
  }

  /** True while the sovereign listener is served (or published for an Envoy). */
  get sovereignListening(): boolean {
    return this.sovereignServing;
  }

  /**
   * Bring the sovereign listener in line with the mode: served while the mode is sovereign (and
   * `sovereignty.listener` is set), drained and stopped otherwise. Queued behind earlier changes;
   * resolves with the failure, if this change failed (it is also logged, counted and emitted).
   */
  private followSovereignListener(): Promise<TetherError | null> {
    const work = this.listenerWork.then(() => this.applySovereignListener());
    this.listenerWork = work.then(() => undefined);
    return work;
  }

  private async applySovereignListener(): Promise<TetherError | null> {
    const listener = this.config.sovereignty?.listener;
    const xds = this.xdsPart;
    // Stopping: drain()/close() take the xDS part (and its front) down themselves.
    if (listener === undefined || xds === null || this.stopped) return null;
    const wanted = this.mode === 'sovereign';
    if (wanted === this.sovereignServing) return null;
    const action = wanted ? 'start' : 'stop';
    const seq = this.modeDocument?.seq ?? 0;
    try {
      if (wanted) await xds.setSovereign(await sovereignOptionsOf(listener));
      else await xds.setSovereign(null, this.config.sovereignty?.drainGraceMs ?? this.config.drainGraceMs);
    } catch (reason) {
      const error = TetherError.from(reason, 'SOVEREIGN_LISTENER_FAILED');
      // A listener that did not come up is not left published either.
      if (wanted) await xds.setSovereign(null, 0).catch((cleanup: unknown) => this.logger.warn({ err: cleanup }, 'withdrawing the sovereign listener failed'));
      this.sovereignFailure = { code: error.code, message: error.rawMessage };
      this.metrics.sovereignListenerChanges.inc({ action, result: error.code });
      this.logger.error({ audit: 'agent.sovereign.listener', action, code: error.code, seq, listener: listener.name }, `the sovereign listener could not ${action}: ${error.rawMessage}`);
      this.events.emit('sovereignListener', { state: 'failed', address: this.sovereignAddress, code: error.code, message: error.rawMessage });
      return error;
    }
    this.sovereignServing = wanted;
    this.sovereignFailure = null;
    this.metrics.sovereignListenerUp.set(wanted ? 1 : 0);
    this.metrics.sovereignListenerChanges.inc({ action, result: 'ok' });
    const address = this.sovereignAddress;
    const where = address === null ? (wanted ? 'published over xDS for an Envoy' : '') : `${address.address}:${address.port}`;
    this.logger.warn(
      { audit: 'agent.sovereign.listener', action, listener: listener.name, seq, ...(address === null ? {} : { address: address.address, port: address.port }) },
      wanted ? `sovereign mode: serving the sovereign listener ${where}` : 'tunnel mode: the sovereign listener is drained and stopped',
    );
    this.events.emit('sovereignListener', { state: wanted ? 'up' : 'down', address });
    return null;
  }

  /** Start dialing; resolves once the admin server (if any) listens, not when tunnels are up. */
  async start(): Promise<void> {
    if (this.config.admin !== undefined) {
      this.admin = new AdminServer({ registry: this.registry, readiness: () => this.readiness(), ...this.config.admin });
      await this.admin.listen();
    }
    // The router has its first configuration before any tunnel carries a stream.
    const xds = this.config.xds;
    if (xds !== undefined && this.xdsPart === null) {
      const { AgentXds } = await import('./router/agent-xds.js');
      this.xdsPart = new AgentXds({ routes: this.config.routes, listen: xds.listen, useBuiltInRouter: xds.useBuiltInRouter, logger: this.logger, registry: this.metrics.registry });
      this.streams.routing = this.xdsPart.routing;
      await this.xdsPart.start();
    }
    await this.startLocalMode();
    this.setModeGauge();
    if (this.mode === 'tunnel') for (const address of this.seeds) this.addTarget(address);
    // Sovereign at start (fail-safe included): the listener is up before start() resolves.
    const failure = await this.followSovereignListener();
    if (failure !== null) throw failure;
  }

  get adminAddress(): AddressInfo | null {
    return this.admin?.address() ?? null;
  }

  /**
   * Replace the static route table (and TCP targets). Requests from now on use the new table;
   * connections bound through a route that is gone or changed are closed now (their clients'
   * next requests are routed afresh).
   */
  setRoutes(routes: AgentConfig['routes'], tcpTargets: string[] = this.config.tcpTargets): void {
    const table = new RouteTable(routes, tcpTargets);
    // The embedded xDS server (and so the built-in router, and an Envoy) follows too; a snapshot it
    // refuses throws here, before anything else changed.
    this.xdsPart?.setRoutes(routes);
    this.config.routes = routes;
    this.config.tcpTargets = tcpTargets;
    this.streams.routes = table;
    const closed = this.bound.closeMissingFrom(table);
    if (closed > 0) this.logger.info({ closed }, 'closed bound connections of removed routes');
  }

  /** New certificates (renewal): used by every later dial. */
  updateTls(material: TlsMaterial): void {
    this.tls = material;
  }

  /**
   * Follow a `CertificateSource` (certs/): every renewed certificate is used by later dials; live
   * connections keep their streams. Returns the unsubscribe function.
   */
  useCertificateSource(source: Pick<CertificateSource, 'subscribe'>, caPem: string): () => void {
    return source.subscribe((material) => this.updateTls({ key: material.keyPem, cert: material.chainPem, ca: caPem }));
  }

  get tlsMaterial(): TlsMaterial {
    return this.tls;
  }

  /** Live connections (welcomed, not draining). */
  liveConnections(): TunnelConnection[] {
    const live: TunnelConnection[] = [];
    for (const slots of this.targets.values()) for (const slot of slots) if (slot.connection?.state === 'live') live.push(slot.connection);
    return live;
  }

  readiness(): Readiness {
    const live = this.liveConnections();
    const byGateway: Record<string, number> = {};
    for (const c of live) byGateway[c.gatewayId ?? 'unknown'] = (byGateway[c.gatewayId ?? 'unknown'] ?? 0) + 1;
    // Sovereign: having no tunnel is the job; ready unless stopping (and, with a listener configured, while it is served).
    const mode = this.mode;
    const listener = this.config.sovereignty?.listener !== undefined;
    const sovereignReady = mode === 'sovereign' && (!listener || this.sovereignServing);
    const address = this.sovereignAddress;
    return {
      ready: (live.length > 0 || sovereignReady) && !this.stopped,
      details: {
        mode,
        modeSeq: this.modeDocument?.seq ?? 0,
        readyConnections: live.length,
        gateways: byGateway,
        knownGateways: [...this.targets.keys()],
        ...(listener
          ? { sovereignListener: { serving: this.sovereignServing, ...(address === null ? {} : { address: `${address.address}:${address.port}` }), ...(this.sovereignFailure === null ? {} : { failure: this.sovereignFailure.code }) } }
          : {}),
      },
    };
  }

  /** Resolves when at least `count` connections are live. */
  async waitForConnections(count = 1, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.liveConnections().length < count) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new TetherError('TUNNEL_NOT_READY', `fewer than ${count} live tunnel connections after ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, remaining);
        function done(): void {
          clearTimeout(timer);
          resolve();
        }
        this.readyWaiters.push(done);
      });
    }
  }

  /** Called by slots when a connection's state changed. */
  private changed(): void {
    this.metrics.tunnelConnections.reset();
    for (const c of this.liveConnections()) this.metrics.tunnelConnections.inc({ gateway: c.gatewayId ?? 'unknown' });
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w();
  }

  private addTarget(address: string): void {
    if (this.targets.has(address) || this.stopped || this.mode === 'sovereign') return;
    const slots: Slot[] = [];
    for (let i = 0; i < this.config.connectionsPerGateway; i++) slots.push(new Slot(address, this));
    this.targets.set(address, slots);
    for (const slot of slots) slot.run();
  }

  /** A control stream told us the replica list: dial new ones, let vanished learned ones go. */
  private learnReplicas(replicas: ReplicaInfo[]): void {
    const addresses = new Set(replicas.map((r) => r.address).filter((a) => typeof a === 'string' && a !== ''));
    for (const address of addresses) this.addTarget(address);
    for (const [address, slots] of this.targets) {
      if (addresses.has(address) || this.seeds.has(address)) continue;
      this.targets.delete(address);
      for (const slot of slots) this.retire(slot, this.config.drainGraceMs);
    }
  }

  /** @internal for Slot */
  connectionOptions(slot: Slot): ConstructorParameters<typeof TunnelConnection>[0] {
    return {
      address: slot.address,
      ...(this.config.serverName === undefined ? {} : { serverName: this.config.serverName }),
      tls: this.tls,
      limits: this.config.limits,
      pingIntervalMs: this.config.pingIntervalMs,
      pingTimeoutMs: this.config.pingTimeoutMs,
      handshakeTimeoutMs: this.config.handshakeTimeoutMs,
      streams: this.streams,
      logger: this.logger,
      onReplicas: (replicas) => this.learnReplicas(replicas),
      onRetryAfter: (ms) => slot.backoff.setRetryAfter(ms),
      onPingRtt: (ms) => this.metrics.pingRtt.observe(ms / 1000),
    };
  }

  /** @internal for Slot */
  slotEvent(kind: 'live' | 'closed' | 'refused' | 'failed', slot: Slot, error?: TetherError): void {
    if (kind === 'live') this.metrics.handshakes.inc({ result: 'ok', reason: '' });
    if (kind === 'refused' || kind === 'failed') {
      this.metrics.handshakes.inc({ result: kind, reason: error?.code ?? 'UNKNOWN' });
      this.logger.warn({ address: slot.address, code: error?.code, err: error?.rawMessage }, kind === 'refused' ? 'gateway refused the tunnel' : 'tunnel connection failed');
    }
    const code = error?.code ?? slot.connection?.closeReason?.code;
    this.events.emit(kind, { address: slot.address, gatewayId: slot.connection?.gatewayId ?? null, ...(code === undefined ? {} : { code }) });
    this.changed();
  }

  /** @internal for Slot */
  newBackoff(): Backoff {
    return new Backoff(this.config.backoff);
  }

  /** @internal for Slot */
  countReconnect(): void {
    this.metrics.reconnects.inc();
  }

  /** @internal for Slot */
  retryScheduled(slot: Slot, delayMs: number): void {
    this.events.emit('retry', { address: slot.address, gatewayId: slot.connection?.gatewayId ?? null, delayMs });
  }

  /** Tell gateways to stop sending new streams, finish in-flight ones within `graceMs`, then stop. */
  private draining: Promise<void> | null = null;

  drain(graceMs: number = this.config.drainGraceMs): Promise<void> {
    this.draining ??= this.drainNow(graceMs);
    return this.draining;
  }

  private async drainNow(graceMs: number): Promise<void> {
    this.stopped = true;
    await this.localMode?.close();
    await this.listenerWork;
    this.changed();
    const all = [...this.targets.values()].flat().concat([...this.retiring]);
    await Promise.all(all.map((slot) => slot.stop(graceMs)));
    await this.pools.drain();
    await this.xds?.drain();
    this.listenerStopped();
    await this.admin?.drain();
  }

  /** The xDS part (and the front with it) is down. */
  private listenerStopped(): void {
    if (!this.sovereignServing) return;
    this.sovereignServing = false;
    this.metrics.sovereignListenerUp.set(0);
    this.logger.info({ listener: this.config.sovereignty?.listener?.name }, 'agent stopping: the sovereign listener is closed');
  }

  readonly close = once(async (): Promise<void> => {
    this.stopped = true;
    await this.localMode?.close();
    await this.listenerWork;
    const all = [...this.targets.values()].flat().concat([...this.retiring]);
    await Promise.all(all.map((slot) => slot.stop(0)));
    await this.pools.close();
    await this.xds?.close();
    this.listenerStopped();
    await this.admin?.close();
    this.changed();
  });
}

/** One connection slot to one gateway address: connect, serve, reconnect with backoff. */
class Slot {
  connection: TunnelConnection | null = null;
  readonly backoff: Backoff;
  private stopped = false;
  private sleepTimer: NodeJS.Timeout | null = null;
  private wake: (() => void) | null = null;
  private loop: Promise<void> = Promise.resolve();

  constructor(
    readonly address: string,
    private readonly agent: Agent,
  ) {
    this.backoff = agent.newBackoff();
  }

  run(): void {
    this.loop = this.runLoop();
  }

  private async runLoop(): Promise<void> {
    let first = true;
    while (!this.stopped) {
      if (!first) this.agent.countReconnect();
      first = false;
      const connection = new TunnelConnection(this.agent.connectionOptions(this));
      this.connection = connection;
      try {
        await connection.start();
        this.backoff.reset();
        this.agent.slotEvent('live', this);
        await connection.closed;
        this.agent.slotEvent('closed', this);
      } catch (reason) {
        const error = TetherError.from(reason);
        const refused = error.details?.refusedByGateway === true;
        this.agent.slotEvent(refused ? 'refused' : 'failed', this, error);
        await connection.closed;
      }
      if (this.stopped) break;
      const delayMs = this.backoff.next();
      this.agent.retryScheduled(this, delayMs);
      await this.sleep(delayMs);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = () => {
        if (this.sleepTimer !== null) clearTimeout(this.sleepTimer);
        this.sleepTimer = null;
        this.wake = null;
        resolve();
      };
      this.sleepTimer = setTimeout(() => this.wake?.(), ms);
    });
  }

  async stop(graceMs: number): Promise<void> {
    this.stopped = true;
    this.wake?.();
    const connection = this.connection;
    if (connection !== null) {
      if (graceMs > 0 && connection.state === 'live') await connection.drain(graceMs);
      else connection.destroy();
      await connection.closed;
    }
    await this.loop;
  }
}
