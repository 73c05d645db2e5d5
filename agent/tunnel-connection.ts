/**
 * One agent-dialed tunnel connection: TCP + TLS 1.3 (mutual, ALPN `tether-tunnel/1`) to a gateway
 * replica, then the roles reverse and the agent serves HTTP/2 on that socket. The first stream the
 * gateway opens is the control stream; its `welcome` makes the connection live, a `refused` names
 * the reason the gateway rejected this agent.
 */
import * as http2 from 'node:http2';
import { type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import * as tls from 'node:tls';
import { type TLSSocket } from 'node:tls';
import { tlsVerifyError } from '../certs/index.js';
import { TetherError, getErrorMessage } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import {
  CONTROL_PATH,
  PingKeeper,
  TUNNEL_ALPN,
  TUNNEL_HEADER_PAIRS,
  readMessages,
  tunnelSettings,
  writeMessage,
  type ReplicaInfo,
  type TunnelLimits,
} from '../gateway/tunnel/index.js';
import type { StreamContext } from './stream-context.js';
import { handleTunnelStream } from './stream-handler.js';

export interface TlsMaterial {
  key: string;
  cert: string;
  /** Trust bundle for the gateway's server certificate. */
  ca: string;
}

export interface TunnelConnectionOptions {
  /** `host:port` of the gateway replica. */
  address: string;
  /** TLS server name to verify (default: the host part of `address`). */
  serverName?: string;
  tls: TlsMaterial;
  limits: TunnelLimits;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  handshakeTimeoutMs: number;
  streams: StreamContext;
  logger: Logger;
  onReplicas: (replicas: ReplicaInfo[]) => void;
  onRetryAfter: (ms: number) => void;
  onPingRtt: (ms: number) => void;
}

export const TUNNEL_HANDSHAKE_FAILED = 'TUNNEL_HANDSHAKE_FAILED';
export const TUNNEL_HANDSHAKE_TIMEOUT = 'TUNNEL_HANDSHAKE_TIMEOUT';
export const TUNNEL_ALPN_MISMATCH = 'TUNNEL_ALPN_MISMATCH';
export const TUNNEL_PING_TIMEOUT = 'TUNNEL_PING_TIMEOUT';

export type ConnectionState = 'connecting' | 'live' | 'draining' | 'closed';

export function splitAddress(address: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(address);
  if (match === null) throw new TetherError('INVALID_OPTIONS', `gateway address ${address}: expected host:port`);
  return { host: match[1] ?? match[2] ?? '', port: Number(match[3]) };
}

export class TunnelConnection {
  state: ConnectionState = 'connecting';
  /**
   * The agent itself is draining this connection (shutdown): new streams are refused. A drain the
   * gateway announced is different: this connection is no longer counted as live (the slot dials
   * elsewhere), but the gateway may still carry requests it accepted before its drain through it
   * until it closes the connection, and those are served.
   */
  private selfDraining = false;
  gatewayId: string | null = null;
  /** Why the connection ended, when it ended badly. */
  closeReason: TetherError | null = null;
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private socket: TLSSocket | null = null;
  private session: ServerHttp2Session | null = null;
  private control: ServerHttp2Stream | null = null;
  private readonly active = new Set<ServerHttp2Stream>();
  private keeper: PingKeeper | null = null;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly options: TunnelConnectionOptions) {
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
  }

  get activeStreams(): number {
    return this.active.size;
  }

  /** Dial, handshake and wait for the gateway's welcome. Rejects with the refusal or failure. */
  start(): Promise<void> {
    const { address, tls: material, limits, logger } = this.options;
    const { host, port } = splitAddress(address);
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const settle = (error: TetherError | null): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (error === null) resolve();
        else {
          this.closeReason = error;
          this.destroy();
          reject(error);
        }
      };
      const timer = setTimeout(
        () => settle(new TetherError(TUNNEL_HANDSHAKE_TIMEOUT, `no welcome from ${address} within ${this.options.handshakeTimeoutMs} ms`)),
        this.options.handshakeTimeoutMs,
      );
      const socket = tls.connect({
        host,
        port,
        servername: this.options.serverName ?? (net_isIp(host) ? undefined : host),
        ALPNProtocols: [TUNNEL_ALPN],
        key: material.key,
        cert: material.cert,
        ca: material.ca,
        minVersion: 'TLSv1.3',
      });
      this.socket = socket;
      socket.setNoDelay(true);
      socket.setKeepAlive(true, 10_000);
      socket.on('error', (reason: unknown) => {
        // A gateway certificate we refuse (expired, untrusted, wrong name) keeps its certs/ code.
        settle(tlsVerifyError(reason) ?? new TetherError(TUNNEL_HANDSHAKE_FAILED, `${address}: ${getErrorMessage(reason)}`, { cause: reason }));
      });
      socket.once('close', () => {
        settle(new TetherError(TUNNEL_HANDSHAKE_FAILED, `${address}: connection closed during handshake`));
        this.onClosed();
      });
      socket.once('secureConnect', () => {
        if (socket.alpnProtocol !== TUNNEL_ALPN) {
          settle(new TetherError(TUNNEL_ALPN_MISMATCH, `${address} did not select ALPN ${TUNNEL_ALPN}`));
          return;
        }
        const session = http2.performServerHandshake(socket, {
          settings: tunnelSettings(limits, true),
          maxSessionMemory: limits.maxSessionMemoryMiB,
          maxHeaderListPairs: TUNNEL_HEADER_PAIRS,
        });
        this.session = session;
        session.setLocalWindowSize(limits.connectionWindowBytes);
        session.on('error', (reason: unknown) => logger.debug({ err: reason, address }, 'tunnel session error'));
        session.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
          if (this.control === null && headers[':path'] === CONTROL_PATH && headers[':method'] === 'POST') {
            this.acceptControl(stream, settle);
            return;
          }
          this.acceptStream(stream, headers);
        });
        session.on('goaway', () => {
          if (this.state === 'live') this.state = 'draining';
        });
      });
    });
  }

  private acceptControl(stream: ServerHttp2Stream, settle: (error: TetherError | null) => void): void {
    this.control = stream;
    stream.respond({ ':status': 200 });
    stream.on('error', () => undefined);
    // The gateway ends its side when it closes the connection: end ours so the session can close.
    stream.once('end', () => stream.end());
    readMessages(
      stream,
      (message) => {
        switch (message.type) {
          case 'welcome': {
            this.gatewayId = typeof message.gatewayId === 'string' ? message.gatewayId : null;
            if (this.state === 'connecting') this.state = 'live';
            const replicas = replicasOf(message.replicas);
            if (replicas !== null) this.options.onReplicas(replicas);
            this.startLiveness();
            settle(null);
            return;
          }
          case 'replicas': {
            const replicas = replicasOf(message.replicas);
            if (replicas !== null) this.options.onReplicas(replicas);
            return;
          }
          case 'drain': {
            if (this.state === 'live') this.state = 'draining';
            const retryAfterMs = Number(message.retryAfterMs);
            if (retryAfterMs > 0) this.options.onRetryAfter(retryAfterMs);
            this.notifyIfIdle();
            return;
          }
          case 'refused': {
            const retryAfterMs = Number(message.retryAfterMs);
            if (retryAfterMs > 0) this.options.onRetryAfter(retryAfterMs);
            settle(new TetherError(String(message.code), `gateway refused the tunnel: ${String(message.message)}`, { details: { retryAfterMs, refusedByGateway: true } }));
            return;
          }
          default:
            return; // unknown messages are ignored: newer gateways may send more
        }
      },
      (error) => {
        this.closeReason = error;
        this.destroy();
      },
    );
  }

  private acceptStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    if (this.state !== 'live' && (this.state !== 'draining' || this.selfDraining)) {
      // Not processed: the gateway may safely retry it on another connection. Closing with an
      // error code emits 'error' on the stream; without a listener that crashed the agent.
      stream.on('error', () => undefined);
      stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    this.active.add(stream);
    stream.once('close', () => {
      this.active.delete(stream);
      this.notifyIfIdle();
    });
    handleTunnelStream(stream, headers, this.options.streams);
  }

  private startLiveness(): void {
    const session = this.session;
    if (session === null || this.keeper !== null) return;
    this.keeper = new PingKeeper(session, {
      intervalMs: this.options.pingIntervalMs,
      timeoutMs: this.options.pingTimeoutMs,
      onRtt: (ms) => this.options.onPingRtt(ms),
      onDead: () => {
        this.options.logger.warn({ address: this.options.address, gatewayId: this.gatewayId }, 'tunnel PING timed out; replacing the connection');
        this.closeReason = new TetherError(TUNNEL_PING_TIMEOUT, `no PING ack within ${this.options.pingTimeoutMs} ms`);
        this.destroy();
      },
    });
    this.keeper.start();
  }

  /**
   * Stop taking new streams (tell the gateway), wait for in-flight streams up to `graceMs`, then
   * close the session with GOAWAY.
   */
  async drain(graceMs: number): Promise<void> {
    if (this.state === 'closed') return;
    if (this.state === 'live' || this.state === 'connecting') this.state = 'draining';
    this.selfDraining = true;
    if (this.control !== null) writeMessage(this.control, { type: 'draining' });
    if (this.active.size > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs);
        this.idleWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    this.shutdownGracefully();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, Math.max(200, Math.min(graceMs, 2000)));
      void this.closed.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.destroy();
    await this.closed;
  }

  private shutdownGracefully(): void {
    this.keeper?.stop();
    const session = this.session;
    if (session !== null && !session.closed && !session.destroyed) {
      this.control?.end();
      session.close();
    } else {
      this.socket?.end();
    }
  }

  private notifyIfIdle(): void {
    if (this.active.size > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const waiter of waiters) waiter();
  }

  /** Tear down now. */
  destroy(): void {
    this.keeper?.stop();
    if (this.session !== null && !this.session.destroyed) this.session.destroy();
    if (this.socket !== null && !this.socket.destroyed) this.socket.destroy();
    if (this.socket === null) this.onClosed();
  }

  private onClosed(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.keeper?.stop();
    this.notifyIfIdle();
    for (const stream of this.active) stream.destroy();
    this.resolveClosed();
  }
}

/**
 * The replicas in a control message's list: entries with a string `id` and `address`; anything
 * else in it is dropped (a `null` entry threw in the agent's replica bookkeeping and ended the
 * process). Null when the list is not a list.
 */
function replicasOf(value: unknown): ReplicaInfo[] | null {
  if (!Array.isArray(value)) return null;
  return value.filter((entry: unknown): entry is ReplicaInfo => {
    if (typeof entry !== 'object' || entry === null) return false;
    const { id, address } = entry as Record<string, unknown>;
    return typeof id === 'string' && typeof address === 'string';
  });
}

function net_isIp(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}
