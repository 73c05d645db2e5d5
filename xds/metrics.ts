/** The xDS server's Prometheus series, on a registry the owner passes in. */
import { Counter, Gauge, Histogram } from 'prom-client';
import type { Registry } from 'prom-client';

export interface XdsMetrics {
  connectedClients: Gauge<'kind'>;
  responses: Counter<'type'>;
  acks: Counter<'type'>;
  nacks: Counter<'type'>;
  convergence: Histogram<'type'>;
  bytesSent: Counter<'type'>;
  resourcesSent: Counter<'type'>;
  snapshotsRefused: Counter<'reason'>;
  servedInvalid: Counter<'kind' | 'type'>;
}

export function createXdsMetrics(registry: Registry): XdsMetrics {
  const registers = [registry];
  return {
    connectedClients: new Gauge({ name: 'tether_xds_connected_clients', help: 'Open xDS streams by client kind (envoy, grpc, other).', labelNames: ['kind'], registers }),
    responses: new Counter({ name: 'tether_xds_responses_total', help: 'Discovery responses sent, by resource type.', labelNames: ['type'], registers }),
    acks: new Counter({ name: 'tether_xds_acks_total', help: 'ACKs received, by resource type.', labelNames: ['type'], registers }),
    nacks: new Counter({ name: 'tether_xds_nacks_total', help: 'NACKs received (requests with error_detail), by resource type.', labelNames: ['type'], registers }),
    convergence: new Histogram({
      name: 'tether_xds_convergence_seconds',
      help: 'Time from a change (snapshot publish or subscription request) to the client ACKing the response that carried it.',
      labelNames: ['type'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    bytesSent: new Counter({ name: 'tether_xds_sent_bytes_total', help: 'Encoded response bytes sent, by resource type.', labelNames: ['type'], registers }),
    resourcesSent: new Counter({ name: 'tether_xds_sent_resources_total', help: 'Resources sent in responses, by resource type.', labelNames: ['type'], registers }),
    servedInvalid: new Counter({
      name: 'tether_xds_served_invalid_total',
      help: 'Resources sent to a client whose kind is expected to reject them (it subscribed after they were published).',
      labelNames: ['kind', 'type'],
      registers,
    }),
    snapshotsRefused: new Counter({ name: 'tether_xds_snapshots_refused_total', help: 'Snapshots refused before publishing (inconsistent, or invalid for a connected client kind).', labelNames: ['reason'], registers }),
  };
}
