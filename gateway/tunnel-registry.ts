/**
 * The gateway's live tunnel connections, by cluster. New streams go to the least-loaded healthy
 * connection (fewest active streams; draining connections take none).
 */
import type { ClientHttp2Session } from 'node:http2';

export interface AgentTunnel {
  readonly id: number;
  readonly clusterId: string;
  readonly agentId: string;
  readonly serialNumber?: string;
  readonly session: ClientHttp2Session;
  activeStreams: number;
  /** The agent said it is draining, or this gateway is. */
  draining: boolean;
}

export class TunnelRegistry {
  private readonly byCluster = new Map<string, Set<AgentTunnel>>();
  private readonly listeners = new Set<() => void>();
  private readonly drainListeners = new Set<(tunnel: AgentTunnel) => void>();

  add(tunnel: AgentTunnel): void {
    let set = this.byCluster.get(tunnel.clusterId);
    if (set === undefined) {
      set = new Set();
      this.byCluster.set(tunnel.clusterId, set);
    }
    set.add(tunnel);
    this.emit();
  }

  remove(tunnel: AgentTunnel): void {
    const set = this.byCluster.get(tunnel.clusterId);
    if (set === undefined || !set.delete(tunnel)) return;
    if (set.size === 0) this.byCluster.delete(tunnel.clusterId);
    this.emit();
  }

  /**
   * Least-loaded usable connection for `clusterId`, skipping `exclude` and connections at the
   * agent's concurrent-stream limit. `busy` is set when only full connections were found.
   */
  pick(clusterId: string, exclude?: ReadonlySet<AgentTunnel>, busy?: { full: boolean }): AgentTunnel | null {
    let best: AgentTunnel | null = null;
    for (const tunnel of this.byCluster.get(clusterId) ?? []) {
      if (tunnel.draining || tunnel.session.closed || tunnel.session.destroyed) continue;
      if (exclude?.has(tunnel)) continue;
      const limit = tunnel.session.remoteSettings.maxConcurrentStreams ?? Number.POSITIVE_INFINITY;
      if (tunnel.activeStreams >= limit) {
        if (busy !== undefined) busy.full = true;
        continue;
      }
      if (best === null || tunnel.activeStreams < best.activeStreams) best = tunnel;
    }
    return best;
  }

  count(clusterId?: string): number {
    if (clusterId !== undefined) return this.byCluster.get(clusterId)?.size ?? 0;
    let n = 0;
    for (const set of this.byCluster.values()) n += set.size;
    return n;
  }

  all(): AgentTunnel[] {
    return [...this.byCluster.values()].flatMap((set) => [...set]);
  }

  countsByCluster(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [cluster, set] of this.byCluster) out[cluster] = set.size;
    return out;
  }

  /** The agent (or GOAWAY) said `tunnel` is draining: it takes no new streams. */
  markDraining(tunnel: AgentTunnel): void {
    if (tunnel.draining) return;
    tunnel.draining = true;
    for (const listener of this.drainListeners) listener(tunnel);
  }

  onDraining(listener: (tunnel: AgentTunnel) => void): () => void {
    this.drainListeners.add(listener);
    return () => this.drainListeners.delete(listener);
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(): void {
    for (const listener of this.listeners) listener();
  }
}
