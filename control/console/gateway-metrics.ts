/**
 * The tunnels page's source: the metrics each gateway replica exports. The control plane has no
 * channel to the gateways, so it is told where to read them, explicitly: `console.gateways` in
 * the control plane's config (a name and a `/metrics` URL per replica: an http(s) GET with a 2 s
 * limit), or, when a gateway runs in the same process (`tether dev`), its prom-client registry
 * (`addRegistry`). With neither, the page says "not configured".
 *
 * Each replica is read when a page asks (at most once per second, one read in flight), and every
 * `sampleMs` by a timer that keeps one hour of request and error totals for the request-rate
 * chart. `close()` stops the timer; reads in flight are not waited for.
 */
import { request as httpRequest } from 'node:http';
import type { IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Registry } from 'prom-client';
import { getErrorMessage } from '../../common/errors.js';
import { parsePrometheusText, sumBy, sumOf } from './prometheus-text.js';
import type { Sample } from './prometheus-text.js';

export const HOUR_MS = 3_600_000;
const FRESH_MS = 1_000;
const READ_LIMIT_MS = 2_000;
const MAX_BODY_BYTES = 8 * 1024 * 1024;

export interface GatewayMetricsSource {
  /** The replica's name on the page. */
  name: string;
  /** Where it is read from (shown on the page): a URL, or "in-process registry". */
  origin: string;
  /** Prometheus text. */
  read(): Promise<string>;
}

export function registrySource(name: string, registry: Registry): GatewayMetricsSource {
  return { name, origin: 'in-process registry', read: () => registry.metrics() };
}

export function urlSource(name: string, url: string, limitMs = READ_LIMIT_MS): GatewayMetricsSource {
  const target = new URL(url);
  const request = target.protocol === 'https:' ? httpsRequest : target.protocol === 'http:' ? httpRequest : null;
  return {
    name,
    origin: url,
    read: () =>
      new Promise<string>((resolve, reject) => {
        if (request === null) {
          reject(new Error(`unsupported scheme ${target.protocol}`));
          return;
        }
        const outgoing = request(target, { method: 'GET', headers: { accept: 'text/plain' }, timeout: limitMs }, (response: IncomingMessage) => {
          if (response.statusCode !== 200) {
            response.resume();
            reject(new Error(`HTTP ${response.statusCode ?? 0}`));
            return;
          }
          const chunks: Buffer[] = [];
          let size = 0;
          response.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_BODY_BYTES) {
              outgoing.destroy(new Error(`more than ${MAX_BODY_BYTES} bytes`));
              return;
            }
            chunks.push(chunk);
          });
          response.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
          response.on('error', reject);
        });
        outgoing.on('timeout', () => outgoing.destroy(new Error(`no answer within ${limitMs} ms`)));
        outgoing.on('error', reject);
        outgoing.end();
      }),
  };
}

/** One replica as its metrics describe it. */
export interface ReplicaReading {
  name: string;
  origin: string;
  readAt: number;
  /** Why the read failed (then the figures are absent). */
  error: string | null;
  figures: ReplicaFigures | null;
}

export interface ReplicaFigures {
  /** `tether_gateway_tunnel_connections`, per cluster. */
  tunnelsByCluster: Array<[cluster: string, connections: number]>;
  tunnels: number;
  /** `tether_gateway_concurrent_requests`: tunnel streams carrying a request now. */
  activeStreams: number;
  /** `tether_gateway_bound_connections`: client connections holding a bound stream. */
  boundConnections: number;
  bytesToAgent: number;
  bytesToClient: number;
  requests: number;
  /** `tether_gateway_request_errors_total`, total and per code (largest first). */
  errors: number;
  errorsByCode: Array<[code: string, count: number]>;
  /** Agent tunnel handshakes refused. */
  handshakesRefused: number;
}

export function figuresOf(samples: readonly Sample[]): ReplicaFigures {
  const tunnelsByCluster = [...sumBy(samples, 'tether_gateway_tunnel_connections', 'cluster')].sort(([a], [b]) => (a < b ? -1 : 1));
  const errorsByCode = [...sumBy(samples, 'tether_gateway_request_errors_total', 'code')].filter(([, count]) => count > 0).sort(([, a], [, b]) => b - a);
  return {
    tunnelsByCluster,
    tunnels: tunnelsByCluster.reduce((sum, [, count]) => sum + count, 0),
    activeStreams: sumOf(samples, 'tether_gateway_concurrent_requests'),
    boundConnections: sumOf(samples, 'tether_gateway_bound_connections'),
    bytesToAgent: sumOf(samples, 'tether_gateway_bytes_total', { direction: 'to_agent' }),
    bytesToClient: sumOf(samples, 'tether_gateway_bytes_total', { direction: 'to_client' }),
    requests: sumOf(samples, 'tether_gateway_requests_total'),
    errors: errorsByCode.reduce((sum, [, count]) => sum + count, 0),
    errorsByCode,
    handshakesRefused: sumOf(samples, 'tether_gateway_tunnel_handshakes_total') - sumOf(samples, 'tether_gateway_tunnel_handshakes_total', { result: 'ok' }),
  };
}

/** A point of the last hour: cumulative totals at `at`. */
export interface RatePoint {
  at: number;
  requests: number;
  errors: number;
}

interface Replica {
  source: GatewayMetricsSource;
  latest: ReplicaReading | null;
  pending: Promise<ReplicaReading> | null;
  history: RatePoint[];
}

export interface GatewayBoardOptions {
  sampleMs: number;
  now: () => number;
}

export class GatewayMetricsBoard {
  readonly #replicas = new Map<string, Replica>();
  readonly #options: GatewayBoardOptions;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(options: GatewayBoardOptions) {
    this.#options = options;
  }

  /** Add (or replace) a replica's source; returns its removal. */
  add(source: GatewayMetricsSource): () => void {
    const replica: Replica = { source, latest: null, pending: null, history: [] };
    this.#replicas.set(source.name, replica);
    this.#startSampling();
    return () => {
      if (this.#replicas.get(source.name) === replica) this.#replicas.delete(source.name);
    };
  }

  addRegistry(name: string, registry: Registry): () => void {
    return this.add(registrySource(name, registry));
  }

  get configured(): boolean {
    return this.#replicas.size > 0;
  }

  #startSampling(): void {
    if (this.#timer !== null || this.#closed) return;
    this.#timer = setInterval(() => void this.#sampleAll(), this.#options.sampleMs);
    this.#timer.unref();
    void this.#sampleAll();
  }

  async #sampleAll(): Promise<void> {
    await this.sampleNow();
  }

  /** Read every replica and keep its totals for the chart (the timer's job; tests call it directly). */
  async sampleNow(): Promise<void> {
    await Promise.all([...this.#replicas.values()].map((replica) => this.#read(replica, true)));
  }

  #read(replica: Replica, sample: boolean): Promise<ReplicaReading> {
    const now = this.#options.now();
    if (!sample && replica.latest !== null && now - replica.latest.readAt < FRESH_MS) return Promise.resolve(replica.latest);
    replica.pending ??= (async (): Promise<ReplicaReading> => {
      let reading: ReplicaReading;
      try {
        const figures = figuresOf(parsePrometheusText(await replica.source.read()).samples);
        reading = { name: replica.source.name, origin: replica.source.origin, readAt: this.#options.now(), error: null, figures };
      } catch (reason) {
        reading = { name: replica.source.name, origin: replica.source.origin, readAt: this.#options.now(), error: getErrorMessage(reason), figures: null };
      }
      replica.latest = reading;
      replica.pending = null;
      return reading;
    })();
    return replica.pending.then((reading) => {
      if (sample && reading.figures !== null) this.#record(replica, reading.readAt, reading.figures);
      return reading;
    });
  }

  #record(replica: Replica, at: number, figures: ReplicaFigures): void {
    const last = replica.history[replica.history.length - 1];
    if (last !== undefined && at - last.at < this.#options.sampleMs / 2) return;
    replica.history.push({ at, requests: figures.requests, errors: figures.errors });
    const cutoff = at - HOUR_MS;
    while ((replica.history[0]?.at ?? at) < cutoff) replica.history.shift();
  }

  /** Every replica, read now unless read within the last second. */
  async readings(): Promise<ReplicaReading[]> {
    return Promise.all([...this.#replicas.values()].map((replica) => this.#read(replica, false)));
  }

  /** Requests per second between consecutive samples of the last hour, per replica. */
  rates(): Array<{ name: string; points: Array<{ at: number; perSecond: number; errorsPerSecond: number }> }> {
    return [...this.#replicas.values()].map((replica) => {
      const points: Array<{ at: number; perSecond: number; errorsPerSecond: number }> = [];
      for (let index = 1; index < replica.history.length; index += 1) {
        const before = replica.history[index - 1]!;
        const after = replica.history[index]!;
        const seconds = (after.at - before.at) / 1000;
        if (seconds <= 0) continue;
        // A counter that went down was reset (the replica restarted): count from zero.
        const requests = after.requests >= before.requests ? after.requests - before.requests : after.requests;
        const errors = after.errors >= before.errors ? after.errors - before.errors : after.errors;
        points.push({ at: after.at, perSecond: requests / seconds, errorsPerSecond: errors / seconds });
      }
      return { name: replica.source.name, points };
    });
  }

  close(): void {
    this.#closed = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }
}
