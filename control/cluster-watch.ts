/**
 * The gateways' watch (`tether.gateway.v1.ClusterWatchService/WatchClusters`, gateway/proto/): a
 * gateway replica opens one server stream, authenticated with its bearer token like every API call
 * and authorised with `cluster.watch` on each org it asks for (the Gateway role; audited once per
 * stream, refusals included). It gets the orgs' whole cluster list with each cluster's mode at
 * once, and again after every registration, mode change or deletion in this process, and, for
 * changes another control-plane process made on the same store, at the next `pollMs` re-read
 * (identical lists are not sent twice). Every later list asks the RBAC graph again: a gateway
 * whose binding was removed gets PERMISSION_DENIED at the next change or re-read. The stream ends with UNAUTHENTICATED when the caller's
 * token expires (the gateway reconnects with a fresh one), and with UNAVAILABLE when the control
 * plane drains.
 */
import { create } from '@bufbuild/protobuf';
import { Metadata, status } from '@grpc/grpc-js';
import type { ServerWritableStream, UntypedServiceImplementation } from '@grpc/grpc-js';
import { Counter, Gauge } from 'prom-client';
import type { Registry } from 'prom-client';
import { TetherError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import * as gw from '../gateway/gen/tether/gateway/v1/cluster_watch_pb.js';
import { grpcStatusFor } from './api-status.js';
import { publicMessage } from './api-dispatch.js';
import type { Authenticator } from './auth.js';
import { ControlErrorCode } from './errors.js';
import { CODE_TRAILER } from './grpc-api.js';
import type { Caller, ControlService } from './service.js';
import type { ClusterRecord } from './store/repository.js';

export { ClusterWatchService } from '../gateway/gen/tether/gateway/v1/cluster_watch_pb.js';

const OPERATION = 'ClusterWatchService.WatchClusters';
/** setTimeout's ceiling; a token valid for longer is checked again at the next change anyway. */
const MAX_TIMER_MS = 2 ** 31 - 1;

type Call = ServerWritableStream<gw.WatchClustersRequest, gw.ClusterList>;

export interface ClusterWatchOptions {
  service: ControlService;
  authenticator: Authenticator;
  logger: Logger;
  metrics: Registry;
  /**
   * How often open streams re-read their orgs' lists (and the caller's rights) even without a
   * change in this process: replicas sharing a store see each other's changes within this (5 s).
   */
  pollMs?: number;
  now?: () => number;
}

function refuse(call: Call, reason: unknown): void {
  const error = TetherError.from(reason);
  const trailer = new Metadata();
  trailer.set(CODE_TRAILER, error.code);
  call.emit('error', { code: grpcStatusFor(error.code), details: `[${error.code}] ${publicMessage(error)}`, metadata: trailer });
}

function listMessage(clusters: readonly ClusterRecord[], seq: number): gw.ClusterList {
  return create(gw.ClusterListSchema, {
    seq: String(seq),
    clusters: clusters.map((cluster) => ({
      id: cluster.id,
      org: cluster.org,
      mode: cluster.mode === 'sovereign' ? gw.ClusterMode.SOVEREIGN : gw.ClusterMode.TUNNEL,
    })),
  });
}

/** One gateway's stream. */
class WatchStream {
  #seq = 0;
  #last = '';
  #closed = false;
  #timer: NodeJS.Timeout | null = null;
  /** Lists are read and sent one at a time, in order. */
  #queue: Promise<void> = Promise.resolve();

  constructor(
    readonly call: Call,
    readonly caller: Caller,
    readonly orgs: readonly string[],
    private readonly watch: ClusterWatch,
    now: number,
  ) {
    if (caller.expiresAt !== undefined) {
      const left = Math.max(0, Math.min(caller.expiresAt - now, MAX_TIMER_MS));
      this.#timer = setTimeout(() => this.fail(new TetherError(ControlErrorCode.UNAUTHENTICATED, 'the watch token expired; reconnect with a fresh one')), left);
    }
  }

  send(clusters: readonly ClusterRecord[]): void {
    if (this.#closed) return;
    const key = JSON.stringify(clusters.map((cluster) => [cluster.id, cluster.org, cluster.mode]).sort());
    if (key === this.#last) return;
    this.#last = key;
    this.#seq += 1;
    this.call.write(listMessage(clusters, this.#seq));
    this.watch.sent.inc();
  }

  refresh(): void {
    this.#queue = this.#queue.then(async () => {
      if (this.#closed) return;
      try {
        this.send(await this.watch.service.watchedClusters(this.caller, this.orgs));
      } catch (reason) {
        this.fail(reason);
      }
    });
  }

  fail(reason: unknown): void {
    if (this.#closed) return;
    this.watch.logger.info({ gateway: this.call.request.gatewayId, principal: this.caller.name, code: TetherError.from(reason).code }, 'gateway watch ended');
    refuse(this.call, reason);
    this.close();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.watch.forget(this);
  }
}

/** Serves the gateways' watch streams of one control-plane process. */
export class ClusterWatch {
  readonly service: ControlService;
  readonly logger: Logger;
  readonly sent: Counter;
  readonly #authenticator: Authenticator;
  readonly #now: () => number;
  readonly #streams = new Set<WatchStream>();
  readonly #watchers: Gauge;
  readonly #unsubscribe: () => void;
  readonly #pollMs: number;
  #poll: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(options: ClusterWatchOptions) {
    this.service = options.service;
    this.logger = options.logger;
    this.#authenticator = options.authenticator;
    this.#now = options.now ?? Date.now;
    this.#pollMs = options.pollMs ?? 5_000;
    this.#watchers = new Gauge({ name: 'tether_control_gateway_watchers', help: 'Gateway watch streams open now.', registers: [options.metrics] });
    this.sent = new Counter({ name: 'tether_control_gateway_watch_lists_total', help: 'Cluster lists sent to watching gateways.', registers: [options.metrics] });
    this.#unsubscribe = this.service.onRunChange((change) => {
      if (change.kind !== 'cluster') return;
      for (const stream of this.#streams) stream.refresh();
    });
  }

  implementation(): UntypedServiceImplementation {
    return { watchClusters: (call: Call) => void this.#open(call) };
  }

  async #open(call: Call): Promise<void> {
    const header = call.metadata.get('authorization')[0];
    let caller: Caller;
    try {
      caller = await this.#authenticator.authenticate(typeof header === 'string' ? header : undefined);
    } catch (reason) {
      const error = TetherError.from(reason, ControlErrorCode.UNAUTHENTICATED);
      await this.service.auditRefusal('anonymous', OPERATION, error.code).catch(() => {});
      refuse(call, error);
      return;
    }
    const orgs = [...new Set(call.request.orgs)];
    let clusters: ClusterRecord[];
    try {
      clusters = await this.service.watchClusters(caller, orgs);
    } catch (reason) {
      refuse(call, reason);
      return;
    }
    if (this.#closed || call.cancelled) {
      if (this.#closed) refuse(call, new TetherError(ControlErrorCode.UNAVAILABLE, 'the control plane is shutting down'));
      return;
    }
    const stream = new WatchStream(call, caller, orgs, this, this.#now());
    this.#streams.add(stream);
    this.#watchers.set(this.#streams.size);
    this.#poll ??= setInterval(() => {
      for (const open of this.#streams) open.refresh();
    }, this.#pollMs);
    call.on('cancelled', () => stream.close());
    call.on('close', () => stream.close());
    this.logger.info({ gateway: call.request.gatewayId, principal: caller.name, orgs }, 'gateway watching clusters');
    stream.send(clusters);
    // A change between the first read and the subscription above is not lost: read once more.
    stream.refresh();
  }

  forget(stream: WatchStream): void {
    this.#streams.delete(stream);
    this.#watchers.set(this.#streams.size);
    if (this.#streams.size === 0 && this.#poll !== null) {
      clearInterval(this.#poll);
      this.#poll = null;
    }
  }

  /** End every stream (UNAVAILABLE: gateways keep their lists and reconnect) and stop listening. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unsubscribe();
    if (this.#poll !== null) clearInterval(this.#poll);
    this.#poll = null;
    for (const stream of [...this.#streams]) stream.fail(new TetherError(ControlErrorCode.UNAVAILABLE, 'the control plane is shutting down'));
  }
}
