/** Metrics of the dataproxy API and the blob server (registered on the registry passed in). */
import { Counter } from 'prom-client';
import type { Registry } from 'prom-client';

export class DataproxyMetrics {
  /** Dataproxy API calls by operation and result code (`OK` or an error code). */
  readonly requests: Counter<'operation' | 'code'>;
  /** Blob server requests by method and result code. */
  readonly blobRequests: Counter<'method' | 'code'>;
  /** Bytes through the blob server: `in` (uploads stored), `out` (downloads served). */
  readonly blobBytes: Counter<'direction'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.requests = new Counter({ name: 'tether_dataproxy_requests_total', help: 'Dataproxy API calls (signed URL issuance) by operation and result code.', labelNames: ['operation', 'code'], registers });
    this.blobRequests = new Counter({ name: 'tether_blob_requests_total', help: 'Blob server requests by method and result code.', labelNames: ['method', 'code'], registers });
    this.blobBytes = new Counter({ name: 'tether_blob_bytes_total', help: 'Bytes stored (in) and served (out) by the blob server.', labelNames: ['direction'], registers });
  }
}

/** One metrics object per registry, so the API, the blob server and the signer can share it. */
const byRegistry = new WeakMap<Registry, DataproxyMetrics>();

export function dataproxyMetrics(registry: Registry): DataproxyMetrics {
  let metrics = byRegistry.get(registry);
  if (metrics === undefined) {
    metrics = new DataproxyMetrics(registry);
    byRegistry.set(registry, metrics);
  }
  return metrics;
}
