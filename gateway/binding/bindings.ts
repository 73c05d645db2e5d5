/**
 * The gateway's client connections in binding mode (HTTP/1.1 and HTTP/2): one sweep timer closes bound connections at
 * their token's `exp`, and the gateway's revocations, cluster removals, tunnel drains and its own
 * drain reach every binding they concern.
 */
import type { AgentTunnel } from '../tunnel-registry.js';

/** A client connection in binding mode, as the registry sees it. */
export interface BoundClient {
  readonly subject: string | null;
  readonly clusterId: string | null;
  readonly tunnel: AgentTunnel | null;
  /** Bound, with nothing in flight on its tunnel stream. */
  readonly idle: boolean;
  /** The token's `exp` in ms since epoch (Infinity: none, or not bound yet). */
  readonly expiresAt: number;
  expire(code: string): void;
  checkDeadline(now: number): void;
  closeIfIdle(now: number): void;
  closeGracefully(): void;
  tunnelDraining(): void;
  destroy(): void;
}

const SWEEP_MS = 250;

export class Bindings {
  private readonly connections = new Set<BoundClient>();
  private sweeper: NodeJS.Timeout | null = null;

  add(connection: BoundClient): void {
    this.connections.add(connection);
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
      this.sweeper.unref();
    }
  }

  delete(connection: BoundClient): void {
    this.connections.delete(connection);
    if (this.connections.size === 0) this.stopSweeper();
  }

  get size(): number {
    return this.connections.size;
  }

  /** Bound connections whose tunnel stream carries no exchange now (not in flight for a drain). */
  get idleStreams(): number {
    let n = 0;
    for (const connection of this.connections) if (connection.idle) n++;
    return n;
  }

  /** Close every binding whose token has expired, answer overdue response heads, close idle connections (the sweep timer calls this). */
  sweep(now = Date.now()): void {
    for (const connection of this.connections) {
      if (connection.expiresAt <= now) connection.expire('BINDING_EXPIRED');
      else {
        connection.checkDeadline(now);
        connection.closeIfIdle(now);
      }
    }
  }

  /** The identities of `subjects` are revoked: their bound connections close now. */
  revoke(subjects: ReadonlySet<string>): void {
    for (const connection of this.connections) {
      const subject = connection.subject;
      if (subject !== null && subjects.has(subject)) connection.expire('IDENTITY_REVOKED');
    }
  }

  /** Clusters no longer registered: their bound connections close now. */
  dropClusters(registered: ReadonlySet<string>): void {
    for (const connection of this.connections) {
      const cluster = connection.clusterId;
      if (cluster !== null && !registered.has(cluster)) connection.expire('UNKNOWN_CLUSTER');
    }
  }

  /** Clusters switched to sovereign mode: their bound connections close now. */
  closeClusters(clusters: ReadonlySet<string>, code: string): void {
    for (const connection of this.connections) {
      const cluster = connection.clusterId;
      if (cluster !== null && clusters.has(cluster)) connection.expire(code);
    }
  }

  /** `tunnel` takes no new streams: its bindings move to another tunnel at their next idle moment. */
  tunnelDraining(tunnel: AgentTunnel): void {
    for (const connection of this.connections) if (connection.tunnel === tunnel) connection.tunnelDraining();
  }

  /** The gateway drains: each bound connection closes after its current exchange. */
  drain(): void {
    for (const connection of [...this.connections]) connection.closeGracefully();
  }

  destroyAll(): void {
    for (const connection of [...this.connections]) connection.destroy();
    this.stopSweeper();
  }

  private stopSweeper(): void {
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
  }
}
