/**
 * The gateway's end of the control plane's watch (gateway/proto/, served by
 * control/cluster-watch.ts): one server stream to `WatchClusters`, each list it brings handed to
 * `apply` (the gateway's `setClusters` + `setSovereignClusters`). On an error or the end of the
 * stream it reconnects with jittered backoff, reading the token again, and meanwhile keeps the last
 * list (fail-static: a control plane that is away neither opens nor closes a cluster). Visible as
 * `tether_gateway_control_plane_connected`, `tether_gateway_control_plane_updates_total`,
 * `tether_gateway_control_plane_errors_total{code}` and the `update` / `disconnected` events.
 */
import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { Client, credentials as grpcCredentials, Metadata, status } from '@grpc/grpc-js';
import type { ClientReadableStream, ServiceError } from '@grpc/grpc-js';
import { Counter, Gauge } from 'prom-client';
import type { Registry } from 'prom-client';
import { Backoff } from '../common/backoff.js';
import { getErrorMessage, TetherError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { INVALID_OPTIONS } from '../common/options.js';
import * as pb from './gen/tether/gateway/v1/cluster_watch_pb.js';

export const ControlPlaneErrorCode = {
  /** The token file could not be read, or is empty. */
  TOKEN_UNREADABLE: 'CONTROL_PLANE_TOKEN_UNREADABLE',
  /** The stream failed without a control-plane code (unreachable, TLS refused, ended). */
  UNREACHABLE: 'CONTROL_PLANE_UNREACHABLE',
} as const;

export interface WatchedCluster {
  id: string;
  org: string;
  mode: 'tunnel' | 'sovereign';
}

export interface ControlPlaneWatchOptions {
  url: string;
  orgs: readonly string[];
  gatewayId: string;
  /** The bearer token, asked for at every connect. */
  token: () => string | Promise<string>;
  /** PEM roots for an `https://` control plane. */
  ca?: string;
  backoff: { initialDelayMs: number; maxDelayMs: number };
  apply: (clusters: WatchedCluster[]) => void;
  logger: Logger;
  registry: Registry;
}

export interface ControlPlaneWatchEvents {
  update: [clusters: WatchedCluster[]];
  disconnected: [error: TetherError];
}

const METHOD = pb.ClusterWatchService.method.watchClusters;
const PATH = `/${pb.ClusterWatchService.typeName}/${METHOD.name}`;
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);

/** `host:port` and credentials for the URL; `http://` only to a loopback host (the token would travel in clear). */
function target(url: string, ca: string | undefined): { address: string; secure: boolean } {
  const parsed = new URL(url);
  const secure = parsed.protocol === 'https:';
  const host = parsed.hostname;
  const loopback = LOOPBACK.has(host) || (isIP(host) === 4 && host.startsWith('127.'));
  if (!secure && !loopback) throw new TetherError(INVALID_OPTIONS, `gateway.controlPlane.url: http:// is allowed only to a loopback host (the token would cross the network in clear); use https:// for ${host}`);
  if (secure === false && ca !== undefined) throw new TetherError(INVALID_OPTIONS, 'gateway.controlPlane.caFile: set for an http:// URL');
  return { address: `${host}:${parsed.port === '' ? (secure ? '443' : '80') : parsed.port}`, secure };
}

function modeOf(mode: pb.ClusterMode): 'tunnel' | 'sovereign' | null {
  if (mode === pb.ClusterMode.SOVEREIGN) return 'sovereign';
  if (mode === pb.ClusterMode.TUNNEL) return 'tunnel';
  return null;
}

export class ControlPlaneWatch extends EventEmitter<ControlPlaneWatchEvents> {
  readonly #options: ControlPlaneWatchOptions;
  readonly #client: Client;
  readonly #backoff: Backoff;
  readonly #connected: Gauge;
  readonly #updates: Counter;
  readonly #errors: Counter;
  #call: ClientReadableStream<pb.ClusterList> | null = null;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;
  #started = false;
  #last: WatchedCluster[] | null = null;
  #live = false;

  constructor(options: ControlPlaneWatchOptions) {
    super();
    this.#options = options;
    const { address, secure } = target(options.url, options.ca);
    this.#client = new Client(address, secure ? grpcCredentials.createSsl(options.ca === undefined ? null : Buffer.from(options.ca)) : grpcCredentials.createInsecure());
    this.#backoff = new Backoff(options.backoff);
    const registers = [options.registry];
    this.#connected = new Gauge({ name: 'tether_gateway_control_plane_connected', help: '1 while the control plane watch stream is live (a list received on it), else 0.', registers });
    this.#updates = new Counter({ name: 'tether_gateway_control_plane_updates_total', help: 'Cluster lists received from the control plane and applied.', registers });
    this.#errors = new Counter({ name: 'tether_gateway_control_plane_errors_total', help: 'Control plane watch streams that failed or ended, by code.', labelNames: ['code'], registers });
    this.#connected.set(0);
  }

  /** The last list applied (null before the first). */
  get clusters(): readonly WatchedCluster[] | null {
    return this.#last;
  }

  /** A list arrived on the stream open now. */
  get connected(): boolean {
    return this.#live;
  }

  start(): void {
    if (this.#started || this.#closed) return;
    this.#started = true;
    void this.#connect();
  }

  async #connect(): Promise<void> {
    this.#timer = null;
    if (this.#closed) return;
    let token: string;
    try {
      token = (await this.#options.token()).trim();
      if (token === '') throw new Error('the token is empty');
    } catch (reason) {
      this.#failed(new TetherError(ControlPlaneErrorCode.TOKEN_UNREADABLE, `control plane token: ${getErrorMessage(reason)}`, { cause: reason }));
      return;
    }
    if (this.#closed) return;
    const metadata = new Metadata();
    metadata.set('authorization', `Bearer ${token}`);
    const request = create(pb.WatchClustersRequestSchema, { orgs: [...this.#options.orgs], gatewayId: this.#options.gatewayId });
    const call = this.#client.makeServerStreamRequest(
      PATH,
      (value: pb.WatchClustersRequest) => Buffer.from(toBinary(pb.WatchClustersRequestSchema, value)),
      (bytes: Buffer) => fromBinary(pb.ClusterListSchema, bytes),
      request,
      metadata,
    );
    this.#call = call;
    let ended = false;
    const end = (error: TetherError): void => {
      if (ended) return;
      ended = true;
      if (this.#call === call) this.#call = null;
      this.#failed(error);
    };
    call.on('data', (list: pb.ClusterList) => this.#received(list));
    call.on('error', (error: ServiceError) => end(this.#errorOf(error)));
    call.on('status', (result: { code: status; details: string }) => {
      if (result.code === status.OK) end(new TetherError(ControlPlaneErrorCode.UNREACHABLE, 'the control plane ended the watch'));
    });
  }

  #errorOf(error: ServiceError): TetherError {
    const code = error.metadata?.get('tether-code')[0];
    return new TetherError(typeof code === 'string' && code !== '' ? code : ControlPlaneErrorCode.UNREACHABLE, error.details || error.message, { cause: error });
  }

  #received(list: pb.ClusterList): void {
    if (this.#closed) return;
    const clusters: WatchedCluster[] = [];
    for (const cluster of list.clusters) {
      const mode = modeOf(cluster.mode);
      // A mode this gateway does not know is taken as sovereign: refusing early is the safe side.
      clusters.push({ id: cluster.id, org: cluster.org, mode: mode ?? 'sovereign' });
    }
    this.#last = clusters;
    this.#live = true;
    this.#backoff.reset();
    this.#connected.set(1);
    this.#updates.inc();
    this.#options.logger.info({ seq: list.seq, clusters: clusters.length, sovereign: clusters.filter((c) => c.mode === 'sovereign').map((c) => c.id) }, 'control plane cluster list applied');
    this.#options.apply(clusters);
    this.emit('update', clusters);
  }

  #failed(error: TetherError): void {
    this.#live = false;
    this.#connected.set(0);
    if (this.#closed) return;
    this.#errors.inc({ code: error.code });
    const delay = this.#backoff.next();
    const kept = this.#last === null ? 'no list yet (the options\' lists apply)' : `keeping the last list of ${this.#last.length} clusters`;
    this.#options.logger.warn({ code: error.code, err: error, retryInMs: delay }, `control plane watch failed; ${kept}`);
    this.emit('disconnected', error);
    this.#timer = setTimeout(() => void this.#connect(), delay);
  }

  /** Stop watching: the stream is cancelled, no reconnect; the last list stays applied. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    const call = this.#call;
    this.#call = null;
    call?.cancel();
    this.#client.close();
    this.#live = false;
    this.#connected.set(0);
  }
}
