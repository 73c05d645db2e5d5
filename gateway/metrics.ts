/** The gateway's Prometheus series (names after cloudflared's and Konnectivity's, research/tunnels.md A4/D6). */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { deferredCounter, type DeferredCounts } from '../common/metrics.js';
import type { ByteCounter } from './tunnel/index.js';

/**
 * The `reason` label for an HTTP/2 session's 'error': what nghttp2 or Node refused (its error
 * number names it). Null for the connection's own failures (a reset, a broken pipe): those are
 * not the peer misbehaving.
 */
export function sessionErrorReason(error: unknown): string | null {
  const { code, errno } = (typeof error === 'object' && error !== null ? error : {}) as { code?: unknown; errno?: unknown };
  if (code === 'ERR_HTTP2_TOO_MANY_INVALID_FRAMES') return 'invalid_frames';
  if (code !== 'ERR_HTTP2_ERROR') return typeof code === 'string' && /^E[A-Z]+$/.test(code) ? null : 'other';
  // nghttp2's error numbers (nghttp2.h).
  switch (errno) {
    case -904:
      return 'flood';
    case -524:
      return 'flow_control';
    case -522:
      return 'frame_size';
    case -523:
      return 'compression';
    default:
      return 'protocol';
  }
}

export class GatewayMetrics {
  readonly tunnelConnections: Gauge<'cluster'>;
  readonly handshakes: Counter<'result' | 'reason'>;
  readonly requestsTotal: Counter<'cluster' | 'protocol'>;
  readonly requestsActive: Gauge<'cluster'>;
  readonly errors: Counter<'code'>;
  readonly sessionErrors: Counter<'peer' | 'reason'>;
  readonly streamSetup: Histogram<'protocol'>;
  readonly pingRtt: Histogram;
  readonly bytes: Counter<'direction'>;
  readonly streamRetries: Counter;
  readonly tokenCache: Counter<'result'>;
  readonly bindings: Gauge<'cluster'>;
  /** Body bytes, counted per chunk: deferred to collection time. */
  readonly bytesToClient: ByteCounter;
  readonly bytesToAgent: ByteCounter;
  /** Requests on bound connections, counted per request: deferred to collection time. */
  private readonly deferredRequests: DeferredCounts<'cluster' | 'protocol'>;

  /** The requests counter's child for `cluster` and `protocol`, for a per-request hot path. */
  requestsFor(cluster: string, protocol: string): { inc(): void } {
    return this.deferredRequests.child({ cluster, protocol });
  }

  /** `tokenCacheStats`: the authenticator's verified-token cache counts, read at scrape time. */
  constructor(readonly registry: Registry, tokenCacheStats: () => { hits: number; misses: number } = () => ({ hits: 0, misses: 0 })) {
    const registers = [registry];
    this.tunnelConnections = new Gauge({ name: 'tether_gateway_tunnel_connections', help: 'Live agent tunnel connections on this replica, per cluster.', labelNames: ['cluster'], registers });
    this.handshakes = new Counter({ name: 'tether_gateway_tunnel_handshakes_total', help: 'Agent tunnel handshakes by result and refusal reason.', labelNames: ['result', 'reason'], registers });
    const requests = deferredCounter<'cluster' | 'protocol'>({
      name: 'tether_gateway_requests_total',
      help: 'Client requests carried into a tunnel, by cluster and protocol (http1, http1-bound, http2, grpc, websocket, tcp).',
      labelNames: ['cluster', 'protocol'],
      registers,
    });
    this.requestsTotal = requests.counter;
    this.deferredRequests = requests.counts;
    this.requestsActive = new Gauge({ name: 'tether_gateway_concurrent_requests', help: 'Client requests in flight, per cluster.', labelNames: ['cluster'], registers });
    this.errors = new Counter({ name: 'tether_gateway_request_errors_total', help: 'Client requests answered with an error, by tether-error code.', labelNames: ['code'], registers });
    this.sessionErrors = new Counter({
      name: 'tether_gateway_session_errors_total',
      help: 'HTTP/2 sessions the gateway closed because of their peer, by peer (client, agent) and reason (flood, protocol, flow_control, frame_size, compression, invalid_frames, unresponsive: a PING left unanswered, other).',
      labelNames: ['peer', 'reason'],
      registers,
    });
    this.streamSetup = new Histogram({ name: 'tether_gateway_stream_setup_seconds', help: 'Time from opening the tunnel stream to its response headers.', labelNames: ['protocol'], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers });
    this.pingRtt = new Histogram({ name: 'tether_gateway_ping_rtt_seconds', help: 'HTTP/2 PING round-trip time to agents.', buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers });
    // Counted per chunk: plain numbers, handed to prom-client when collected.
    const bytes = deferredCounter<'direction'>({ name: 'tether_gateway_bytes_total', help: 'Body bytes carried, by direction (to_agent, to_client).', labelNames: ['direction'], registers });
    this.bytes = bytes.counter;
    this.bytesToClient = bytes.counts.child({ direction: 'to_client' });
    this.bytesToAgent = bytes.counts.child({ direction: 'to_agent' });
    this.tokenCache = new Counter({
      name: 'tether_gateway_token_cache_lookups_total',
      help: 'Bearer tokens looked up in the verified-token cache, by result (hit: no signature check needed).',
      labelNames: ['result'],
      registers,
      collect() {
        const { hits, misses } = tokenCacheStats();
        this.reset();
        this.inc({ result: 'hit' }, hits);
        this.inc({ result: 'miss' }, misses);
      },
    });
    this.bindings = new Gauge({ name: 'tether_gateway_bound_connections', help: 'Client connections (HTTP/1.1 and HTTP/2) bound to one tunnel stream, per cluster.', labelNames: ['cluster'], registers });
    this.streamRetries = new Counter({ name: 'tether_gateway_stream_retries_total', help: 'Requests re-sent on another tunnel connection after a refused stream.', registers });
  }
}
