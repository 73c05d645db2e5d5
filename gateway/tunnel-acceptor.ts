/**
 * Accepting an agent's tunnel connection: check its certificate identity (trusted, valid, not
 * revoked, SPIFFE id naming a registered cluster), become the HTTP/2 client on its socket, open the
 * control stream (welcome, or the refusal reason), keep PING liveness, and register it.
 */
import * as http2 from 'node:http2';
import type { ClientHttp2Session, ClientHttp2Stream } from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { TetherError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { GatewayConfig } from './options.js';
import { sessionErrorReason, type GatewayMetrics } from './metrics.js';
import type { AgentTunnel, TunnelRegistry } from './tunnel-registry.js';
import {
  CONTROL_PATH,
  H_CONTROL,
  PingKeeper,
  RefusalCodes,
  TUNNEL_HEADER_PAIRS,
  readMessages,
  tunnelSettings,
  writeMessage,
  type ReplicaInfo,
} from './tunnel/index.js';

export interface AgentPeer {
  clusterId: string;
  agentId: string;
  spiffeId?: string;
  serialNumber?: string;
}

/** Decide who the agent on `socket` is; never throws. */
export type AgentCheck = (socket: TLSSocket) => { ok: true; peer: AgentPeer } | { ok: false; error: TetherError };

interface Accepted {
  socket: TLSSocket;
  tunnel: AgentTunnel | null;
  session: ClientHttp2Session;
  control: ClientHttp2Stream;
  keeper: PingKeeper | null;
}

export class TunnelAcceptor {
  private readonly accepted = new Set<Accepted>();
  private nextId = 1;
  private draining = false;

  constructor(
    private readonly config: GatewayConfig,
    private readonly registry: TunnelRegistry,
    private readonly metrics: GatewayMetrics,
    private readonly logger: Logger,
    private readonly checkAgent: AgentCheck,
    private readonly replicas: () => ReplicaInfo[],
  ) {}

  accept(socket: TLSSocket): void {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    const check = this.checkAgent(socket);
    let refusal: TetherError | null = check.ok ? null : check.error;
    if (check.ok && this.config.sovereignClusters.includes(check.peer.clusterId)) {
      refusal = new TetherError(RefusalCodes.CLUSTER_SOVEREIGN, `cluster ${check.peer.clusterId} is in sovereign mode: this gateway accepts no tunnel for it`);
    } else if (check.ok && !this.config.clusters.includes(check.peer.clusterId)) {
      refusal = new TetherError(RefusalCodes.CLUSTER_NOT_REGISTERED, `cluster ${check.peer.clusterId} is not registered at this gateway`);
    }
    if (refusal === null && this.draining) refusal = new TetherError(RefusalCodes.GATEWAY_DRAINING, 'this gateway is draining');
    const limits = this.config.limits;
    const session = http2.connect(`https://tunnel.invalid`, {
      createConnection: () => socket,
      settings: tunnelSettings(limits, false),
      maxSessionMemory: limits.maxSessionMemoryMiB,
      maxHeaderListPairs: TUNNEL_HEADER_PAIRS,
    });
    session.on('error', (reason: unknown) => {
      this.logger.debug({ err: reason }, 'tunnel session error');
      const label = sessionErrorReason(reason);
      if (label !== null) this.metrics.sessionErrors.inc({ peer: 'agent', reason: label });
    });
    session.once('connect', () => session.setLocalWindowSize(limits.connectionWindowBytes));
    const control = session.request({ ':method': 'POST', ':path': CONTROL_PATH, [H_CONTROL]: '1' }, { endStream: false });
    control.on('error', () => undefined);
    control.once('end', () => control.end());
    const entry: Accepted = { socket, tunnel: null, session, control, keeper: null };
    this.accepted.add(entry);
    session.once('close', () => {
      this.accepted.delete(entry);
      entry.keeper?.stop();
      if (entry.tunnel !== null) {
        this.registry.remove(entry.tunnel);
        this.logger.info({ cluster: entry.tunnel.clusterId, agent: entry.tunnel.agentId }, 'agent tunnel closed');
      }
    });

    if (refusal !== null || !check.ok) {
      const error = refusal ?? new TetherError(RefusalCodes.AGENT_REFUSED, 'refused');
      this.metrics.handshakes.inc({ result: 'refused', reason: error.code });
      this.logger.warn({ code: error.code, reason: error.rawMessage, remote: socket.remoteAddress }, 'agent tunnel refused');
      writeMessage(control, { type: 'refused', code: error.code, message: error.rawMessage, retryAfterMs: this.config.agentRetryAfterMs });
      control.end();
      const timer = setTimeout(() => session.destroy(), 2_000);
      control.once('close', () => {
        clearTimeout(timer);
        session.close();
        socket.end();
      });
      session.once('close', () => clearTimeout(timer));
      return;
    }

    const peer = check.peer;
    const tunnel: AgentTunnel = { id: this.nextId++, clusterId: peer.clusterId, agentId: peer.agentId, ...(peer.serialNumber === undefined ? {} : { serialNumber: peer.serialNumber }), session, activeStreams: 0, draining: false };
    entry.tunnel = tunnel;
    writeMessage(control, { type: 'welcome', gatewayId: this.config.id, replicas: this.replicas(), pingIntervalMs: this.config.pingIntervalMs });
    readMessages(
      control,
      (message) => {
        if (message.type === 'draining') this.registry.markDraining(tunnel);
      },
      () => session.destroy(),
    );
    control.once('close', () => {
      // Without its control stream the connection cannot be drained or told anything: replace it.
      if (!session.closed) session.close();
    });
    session.on('goaway', () => this.registry.markDraining(tunnel));
    // Register once the agent's SETTINGS (extended CONNECT, stream limits) are known.
    session.once('remoteSettings', () => {
      if (session.closed || session.destroyed) return;
      this.registry.add(tunnel);
      this.metrics.handshakes.inc({ result: 'ok', reason: '' });
      this.logger.info({ cluster: peer.clusterId, agent: peer.agentId, spiffeId: peer.spiffeId }, 'agent tunnel connected');
    });
    entry.keeper = new PingKeeper(session, {
      intervalMs: this.config.pingIntervalMs,
      timeoutMs: this.config.pingTimeoutMs,
      onRtt: (ms) => this.metrics.pingRtt.observe(ms / 1000),
      onDead: () => {
        this.logger.warn({ cluster: peer.clusterId, agent: peer.agentId }, 'agent tunnel PING timed out; closing it');
        this.metrics.sessionErrors.inc({ peer: 'agent', reason: 'unresponsive' });
        session.destroy();
        socket.destroy();
      },
    });
    entry.keeper.start();
  }

  /**
   * Tell every agent to move (control `drain`), stop accepting new tunnels. The tunnels stay
   * usable for this gateway's own in-flight and already-accepted requests until `closeAll()`:
   * marking them draining here answered those requests 503 NO_TUNNEL during a graceful drain.
   * (`tunnel.draining` is the agent's own drain notice.)
   */
  announceDrain(retryAfterMs: number): void {
    this.draining = true;
    for (const entry of this.accepted) {
      writeMessage(entry.control, { type: 'drain', retryAfterMs, reason: 'gateway shutting down' });
    }
  }

  /** Announce a new replica list to every agent. */
  announceReplicas(replicas: ReplicaInfo[]): void {
    for (const entry of this.accepted) if (entry.tunnel !== null) writeMessage(entry.control, { type: 'replicas', replicas });
  }

  /** GOAWAY every tunnel; in-flight streams finish; resolves when all closed or `graceMs` passed (then destroys). */
  async closeAll(graceMs: number): Promise<void> {
    const entries = [...this.accepted];
    await Promise.all(
      entries.map(
        ({ session, socket, control }) =>
          new Promise<void>((resolve) => {
            if (session.destroyed) return resolve();
            // After the grace period: destroy the session and its socket, and stop waiting for
            // 'close' after a further second (a session whose peer vanished may never emit it).
            let last: NodeJS.Timeout | null = null;
            const timer = setTimeout(() => {
              session.destroy();
              socket.destroy();
              last = setTimeout(resolve, 1_000);
            }, graceMs);
            session.once('close', () => {
              clearTimeout(timer);
              if (last !== null) clearTimeout(last);
              resolve();
            });
            control.end();
            session.close();
          }),
      ),
    );
  }
}
