/** The agent's Prometheus series (names after cloudflared's and Konnectivity's, research/tunnels.md A4/D6). */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { DeferredCounts } from '../common/metrics.js';
import type { ByteCounter } from '../gateway/tunnel/index.js';

/** `bound`: an HTTP/1.1 client connection bound to one upstream connection (agent/bound-stream.ts). */
export type StreamProtocol = 'http' | 'grpc' | 'websocket' | 'tcp' | 'bound';

export class AgentMetrics {
  readonly tunnelConnections: Gauge<'gateway'>;
  readonly handshakes: Counter<'result' | 'reason'>;
  readonly reconnects: Counter;
  readonly streamsActive: Gauge<'protocol'>;
  readonly streamsTotal: Counter<'protocol'>;
  readonly upstreamErrors: Counter<'code'>;
  readonly upstreamRetries: Counter<'reason'>;
  readonly upstreamSetup: Histogram<'protocol'>;
  readonly pingRtt: Histogram;
  readonly bytes: Counter<'direction'>;
  /** 1 for the agent's local mode, 0 for the other (agent/sovereignty.ts). */
  readonly mode: Gauge<'mode'>;
  /** The `seq` of the customer-signed mode document in force (0: none). */
  readonly modeSeq: Gauge;
  /** Mode documents read: `accepted`, or the refusal code (`MODE_UNSIGNED`, `MODE_BAD_SIGNATURE`, …). */
  readonly modeDocuments: Counter<'result'>;
  /** Modes the control plane claimed: `agreed`, or the agent's answer (`CLUSTER_SOVEREIGN`, `MODE_NOT_APPROVED`). */
  readonly modeClaims: Counter<'claimed' | 'result'>;
  /** 1 while the agent serves (or publishes, for an Envoy) its sovereign listener, else 0. */
  readonly sovereignListenerUp: Gauge;
  /** Sovereign listener starts and stops, by action (`start`, `stop`) and result (`ok`, or the failure code). */
  readonly sovereignListenerChanges: Counter<'action' | 'result'>;
  /**
   * Labelled children resolved once, for the per-chunk and per-stream paths: prom-client's
   * `labels()` hashes the labels and builds an object with seven bound methods on every call.
   */
  readonly bytesToGateway: ByteCounter;
  readonly bytesToUpstream: ByteCounter;
  /** Bound connections' bytes, heads and chunk framing included (the agent does not parse them). */
  readonly boundBytes: Counter<'direction'>;
  readonly boundToGateway: ByteCounter;
  readonly boundToUpstream: ByteCounter;
  private readonly deferredBytes = new DeferredCounts<'direction'>();
  private readonly deferredBoundBytes = new DeferredCounts<'direction'>();
  private readonly activeByProtocol = new Map<StreamProtocol, { inc(): void; dec(): void }>();

  /** The streams-active gauge's child for `protocol`. */
  streamsActiveFor(protocol: StreamProtocol): { inc(): void; dec(): void } {
    let gauge = this.activeByProtocol.get(protocol);
    if (gauge === undefined) {
      gauge = this.streamsActive.labels({ protocol });
      this.activeByProtocol.set(protocol, gauge);
    }
    return gauge;
  }

  constructor(readonly registry: Registry) {
    const registers = [registry];
    this.tunnelConnections = new Gauge({ name: 'tether_agent_tunnel_connections', help: 'Live tunnel connections per gateway replica.', labelNames: ['gateway'], registers });
    this.handshakes = new Counter({ name: 'tether_agent_tunnel_handshakes_total', help: 'Tunnel handshake attempts by result and refusal reason.', labelNames: ['result', 'reason'], registers });
    this.reconnects = new Counter({ name: 'tether_agent_tunnel_reconnects_total', help: 'Tunnel reconnect attempts.', registers });
    this.streamsActive = new Gauge({ name: 'tether_agent_streams_active', help: 'Streams being forwarded now, by protocol.', labelNames: ['protocol'], registers });
    this.streamsTotal = new Counter({ name: 'tether_agent_streams_total', help: 'Streams forwarded, by protocol.', labelNames: ['protocol'], registers });
    this.upstreamErrors = new Counter({ name: 'tether_agent_upstream_errors_total', help: 'Streams that failed towards the upstream, by error code.', labelNames: ['code'], registers });
    this.upstreamRetries = new Counter({ name: 'tether_agent_upstream_retries_total', help: 'Upstream tries retried by the built-in router on the tunnel path, by retry_on reason.', labelNames: ['reason'], registers });
    this.upstreamSetup = new Histogram({ name: 'tether_agent_upstream_setup_seconds', help: 'Time from stream arrival to the upstream response headers (or connect).', labelNames: ['protocol'], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers });
    this.pingRtt = new Histogram({ name: 'tether_agent_ping_rtt_seconds', help: 'HTTP/2 PING round-trip time to the gateway.', buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers });
    this.mode = new Gauge({ name: 'tether_agent_mode', help: 'The local mode approved by the customer: 1 for the mode in force (tunnel or sovereign), 0 for the other.', labelNames: ['mode'], registers });
    this.modeSeq = new Gauge({ name: 'tether_agent_mode_document_seq', help: 'Sequence of the customer-signed mode document in force (0: none).', registers });
    this.modeDocuments = new Counter({ name: 'tether_agent_mode_documents_total', help: 'Mode documents read, by result (accepted, or the refusal code).', labelNames: ['result'], registers });
    this.modeClaims = new Counter({ name: 'tether_agent_mode_claims_total', help: 'Modes claimed by the control plane, by claimed mode and result (agreed, CLUSTER_SOVEREIGN, MODE_NOT_APPROVED).', labelNames: ['claimed', 'result'], registers });
    this.sovereignListenerUp = new Gauge({ name: 'tether_agent_sovereign_listener_up', help: "1 while the agent serves its sovereign listener (customer's mode sovereign), else 0.", registers });
    this.sovereignListenerChanges = new Counter({ name: 'tether_agent_sovereign_listener_changes_total', help: 'Sovereign listener starts and stops, by action (start, stop) and result (ok, or the failure code).', labelNames: ['action', 'result'], registers });
    // Counted per chunk: plain numbers, handed to prom-client when collected.
    const deferredBytes = this.deferredBytes;
    this.bytes = new Counter({
      name: 'tether_agent_bytes_total',
      help: 'Body bytes forwarded, by direction (to_upstream, to_gateway).',
      labelNames: ['direction'],
      registers,
      collect() {
        deferredBytes.flush(this);
      },
    });
    this.bytesToGateway = deferredBytes.child({ direction: 'to_gateway' });
    this.bytesToUpstream = deferredBytes.child({ direction: 'to_upstream' });
    const deferredBoundBytes = this.deferredBoundBytes;
    this.boundBytes = new Counter({
      name: 'tether_agent_bound_bytes_total',
      help: 'Bytes relayed on bound client connections, heads included, by direction (to_upstream, to_gateway).',
      labelNames: ['direction'],
      registers,
      collect() {
        deferredBoundBytes.flush(this);
      },
    });
    this.boundToGateway = deferredBoundBytes.child({ direction: 'to_gateway' });
    this.boundToUpstream = deferredBoundBytes.child({ direction: 'to_upstream' });
  }
}
