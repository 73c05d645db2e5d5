/**
 * `XdsServer`: Envoy v3 xDS over gRPC. ADS and the per-type services (LDS, RDS, CDS, EDS, SDS),
 * each in State-of-the-World and Delta, plus CSDS. Snapshots are published per node group
 * (`nodeGroup(node)`, default: one group for everyone); before a snapshot is published it is
 * checked for referential integrity and validated against the rules of every client kind that
 * would receive it (research/xds.md (c)), and refused with the resource and field named.
 */
import { EventEmitter } from 'node:events';
import { create } from '@bufbuild/protobuf';
import { Server, ServerCredentials, status } from '@grpc/grpc-js';
import type { ServerDuplexStream, ServerUnaryCall, ServiceDefinition, sendUnaryData, UntypedServiceImplementation } from '@grpc/grpc-js';
import type { Registry } from 'prom-client';
import { TetherError } from '../common/errors.js';
import { once } from '../common/lifecycle.js';
import type { Closable } from '../common/lifecycle.js';
import { silentLogger } from '../common/log.js';
import type { Logger } from '../common/log.js';
import { createRegistry } from '../common/metrics.js';
import type { ClientKind } from './client-kind.js';
import { CLIENT_KINDS, rulesFor } from './client-kind.js';
import { clientStatusOf, clientStatusResponse } from './csds.js';
import type { ClientStatus } from './csds.js';
import type { Node } from './gen/envoy/config/core/v3/base_pb.js';
import { AggregatedDiscoveryService } from './gen/envoy/service/discovery/v3/ads_pb.js';
import type { DeltaDiscoveryRequest, DiscoveryRequest } from './gen/envoy/service/discovery/v3/discovery_pb.js';
import { DiscoveryResponseSchema } from './gen/envoy/service/discovery/v3/discovery_pb.js';
import { ClientStatusDiscoveryService } from './gen/envoy/service/status/v3/csds_pb.js';
import type { ClientStatusRequest, ClientStatusResponse } from './gen/envoy/service/status/v3/csds_pb.js';
import { serviceDefinition } from './grpc-service.js';
import { createXdsMetrics } from './metrics.js';
import { decodeDiscoveryRequest } from './request-decoder.js';
import type { XdsMetrics } from './metrics.js';
import { RESOURCE_TYPES, TypeUrl } from './resource-types.js';
import type { ResourceKind, ResourceType } from './resource-types.js';
import { Snapshot } from './snapshot.js';
import type { SnapshotInput } from './snapshot.js';
import { StreamSession } from './stream-session.js';
import type { Protocol, SettleEvent } from './stream-session.js';
import { checkConsistency, formatProblem, validateFor } from './validate.js';
import type { Problem } from './validate.js';

export const DEFAULT_GROUP = '*';

export interface XdsServerOptions {
  /** Registry for the `tether_xds_*` series; a private one when omitted. */
  registry?: Registry;
  logger?: Logger;
  /** Which snapshot group a node reads; groups without a snapshot read DEFAULT_GROUP. */
  nodeGroup?: (node: Node) => string;
  /** Client kinds to validate every snapshot for, connected or not (default: none). */
  validateFor?: ClientKind[];
  /**
   * When a client NACKs the current version of a type, put the group's previous snapshot back
   * (once; the rolled-back-from snapshot is not retried). Default false: NACKs are recorded and
   * the rejected version is not re-sent, but the snapshot stays as published.
   */
  rollbackOnNack?: boolean;
}

/** A snapshot put back after a NACK. */
export interface RollbackEvent {
  group: string;
  /** The NACK that caused it. */
  cause: SettleEvent;
  from: Snapshot;
  to: Snapshot;
}

export interface PublishOptions {
  /** Default DEFAULT_GROUP. */
  group?: string;
  /**
   * Validate for connected client kinds (and `validateFor`). Default true. `false` publishes what a
   * client may NACK; meant for tests and emergencies. Referential integrity is always checked.
   */
  validate?: boolean;
}

export interface ListenOptions {
  host?: string;
  port?: number;
  credentials?: ServerCredentials;
  /** Interval of server keepalive pings (default 60 s). */
  keepaliveMs?: number;
  /** Close connections after this age so clients reconnect (and rebalance); default never. */
  maxConnectionAgeMs?: number;
}

type Duplex<Req> = ServerDuplexStream<Req, Uint8Array>;

export interface XdsServerEvents {
  /** A client ACKed a response. */
  ack: [SettleEvent];
  /** A client NACKed a response (error_detail in `message`). */
  nack: [SettleEvent];
  /** `rollbackOnNack`: the previous snapshot was put back. */
  rollback: [RollbackEvent];
}

export class XdsServer extends EventEmitter<XdsServerEvents> implements Closable {
  readonly registry: Registry;
  readonly metrics: XdsMetrics;
  readonly logger: Logger;
  readonly #nodeGroup: (node: Node) => string;
  readonly #validateFor: ClientKind[];
  readonly #rollbackOnNack: boolean;
  /** Per group, the snapshot before the current one (for rollbackOnNack). */
  readonly #previous = new Map<string, Snapshot>();
  readonly #snapshots = new Map<string, Snapshot>();
  readonly #sessions = new Set<StreamSession>();
  readonly #calls = new Map<StreamSession, Duplex<unknown>>();
  #grpc: Server | null = null;
  #draining = false;

  constructor(options: XdsServerOptions = {}) {
    super();
    this.registry = options.registry ?? createRegistry();
    this.metrics = createXdsMetrics(this.registry);
    this.logger = options.logger ?? silentLogger();
    this.#nodeGroup = options.nodeGroup ?? (() => DEFAULT_GROUP);
    this.#validateFor = options.validateFor ?? [];
    this.#rollbackOnNack = options.rollbackOnNack ?? false;
    for (const kind of CLIENT_KINDS) this.metrics.connectedClients.set({ kind }, 0);
  }

  // ---- snapshots ------------------------------------------------------------------------

  snapshot(group = DEFAULT_GROUP): Snapshot {
    return this.#snapshots.get(group) ?? this.#snapshots.get(DEFAULT_GROUP) ?? EMPTY;
  }

  #groupOf(session: StreamSession): string {
    return session.node === undefined ? DEFAULT_GROUP : this.#nodeGroup(session.node);
  }

  #viewOf(session: StreamSession): Snapshot {
    return this.snapshot(this.#groupOf(session));
  }

  /** Sessions that read `group`'s snapshot. */
  #readers(group: string): StreamSession[] {
    return [...this.#sessions].filter((session) => {
      if (session.node === undefined) return false;
      const own = this.#groupOf(session);
      return own === group || (group === DEFAULT_GROUP && !this.#snapshots.has(own));
    });
  }

  /**
   * Build, check and publish a snapshot. Throws (and changes nothing) with
   * `XDS_SNAPSHOT_INCONSISTENT` (a dangling reference) or `XDS_VALIDATION_FAILED` (a connected
   * client kind would reject it); both name the resource and field.
   */
  setSnapshot(input: SnapshotInput | Snapshot, options: PublishOptions = {}): Snapshot {
    const group = options.group ?? DEFAULT_GROUP;
    const snapshot = input instanceof Snapshot ? input : Snapshot.build(input, this.#snapshots.get(group));
    const inconsistent = checkConsistency(snapshot);
    if (inconsistent.length > 0) {
      this.metrics.snapshotsRefused.inc({ reason: 'inconsistent' });
      throw refusal('XDS_SNAPSHOT_INCONSISTENT', 'snapshot refused: dangling references', inconsistent);
    }
    const readers = this.#readers(group);
    if (options.validate !== false) {
      const problems = this.#validate(snapshot, readers);
      if (problems.length > 0) {
        this.metrics.snapshotsRefused.inc({ reason: 'invalid' });
        throw refusal('XDS_VALIDATION_FAILED', 'snapshot refused: a client would reject it', problems);
      }
    }
    const replaced = this.#snapshots.get(group);
    if (replaced !== undefined) this.#previous.set(group, replaced);
    this.#snapshots.set(group, snapshot);
    for (const session of readers) session.onSnapshot(snapshot);
    return snapshot;
  }

  /**
   * Publish the current snapshot of `group` with `changes` added or replaced and `remove` deleted,
   * encoding only those (e.g. one endpoint change). Same checks and errors as `setSnapshot`.
   */
  updateSnapshot(changes: SnapshotInput, options: PublishOptions & { remove?: Partial<Record<ResourceKind, string[]>> } = {}): Snapshot {
    const group = options.group ?? DEFAULT_GROUP;
    return this.setSnapshot(Snapshot.patch(this.snapshot(group), changes, options.remove), options);
  }

  /** Put back the previous snapshot of `group` if the NACKed version is still the current one. */
  #rollback(group: string, cause: SettleEvent): void {
    const current = this.#snapshots.get(group);
    const previous = this.#previous.get(group);
    if (current === undefined || previous === undefined) return;
    if (current.version(TypeUrl[cause.type]) !== cause.version) return; // already replaced
    this.#previous.delete(group); // once: never bounce between two snapshots
    this.#snapshots.set(group, previous);
    this.logger.warn({ group, node: cause.nodeId, type: cause.type, version: cause.version, error: cause.message }, 'xDS NACK: previous snapshot put back');
    const now = performance.now();
    for (const session of this.#readers(group)) session.onSnapshot(previous, now);
    this.emit('rollback', { group, cause, from: current, to: previous });
  }

  /** Problems `snapshot` would cause for the given sessions' kinds (plus `validateFor`). */
  #validate(snapshot: Snapshot, readers: StreamSession[]): Problem[] {
    const problems: Problem[] = [];
    const seen = new Set<string>();
    const add = (list: Problem[]) => {
      for (const problem of list) {
        const key = formatProblem(problem);
        if (!seen.has(key)) {
          seen.add(key);
          problems.push(problem);
        }
      }
    };
    for (const kind of this.#validateFor) add(validateFor(kind, snapshot));
    for (const rules of ['envoy', 'grpc'] as const) {
      const sessions = readers.filter((s) => rulesFor(s.kind) === rules);
      if (sessions.length === 0) continue;
      add(
        validateFor(rules, snapshot, (kind: ResourceKind, name: string) =>
          sessions.some((s) => {
            for (const state of s.states.values()) if (state.type.kind === kind && state.interested(name)) return true;
            return false;
          }),
        ),
      );
    }
    return problems;
  }

  // ---- status ---------------------------------------------------------------------------

  /** Per connected stream: what it subscribes to, ACKed and NACKed. */
  clientStatus(): ClientStatus[] {
    return [...this.#sessions].filter((s) => s.node !== undefined).map((s) => clientStatusOf(s, this.#viewOf(s)));
  }

  csds(request: ClientStatusRequest): ClientStatusResponse {
    return clientStatusResponse(request, this.#sessions, (s) => this.#viewOf(s));
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  // ---- gRPC -----------------------------------------------------------------------------

  #stream<Req>(protocol: Protocol, fixed: ResourceType | null, call: Duplex<Req>): void {
    if (this.#draining) {
      call.emit('error', { code: status.UNAVAILABLE, details: 'xDS server is draining' });
      return;
    }
    const host = {
      snapshotFor: (s: StreamSession) => this.#viewOf(s),
      metrics: this.metrics,
      logger: this.logger,
      identified: (s: StreamSession) => this.metrics.connectedClients.inc({ kind: s.kind }),
      settled: (event: SettleEvent) => {
        this.emit(event.outcome, event);
        if (event.outcome === 'nack' && this.#rollbackOnNack) {
          const group = this.#groupOf(session);
          queueMicrotask(() => this.#rollback(group, event));
        }
      },
    };
    const session = new StreamSession(protocol, fixed, host, {
      write: (bytes) => {
        if (!call.writableEnded && !call.destroyed) call.write(bytes);
      },
      fail: (code, message) => {
        finish();
        call.emit('error', { code, details: message });
      },
    });
    this.#sessions.add(session);
    this.#calls.set(session, call as Duplex<unknown>);
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      session.close();
      this.#sessions.delete(session);
      this.#calls.delete(session);
      if (session.node !== undefined) this.metrics.connectedClients.dec({ kind: session.kind });
    };
    call.on('data', (request: Req) => {
      try {
        if (protocol === 'sotw') session.onSotwRequest(request as DiscoveryRequest);
        else session.onDeltaRequest(request as DeltaDiscoveryRequest);
      } catch (reason) {
        this.logger.error({ err: reason, session: session.id }, 'xDS request handling failed');
        finish();
        call.emit('error', { code: status.INTERNAL, details: 'internal error handling the request' });
      }
    });
    call.on('end', () => {
      finish();
      if (!call.writableEnded) call.end();
    });
    call.on('cancelled', finish);
    call.on('error', finish);
    call.on('close', finish);
  }

  #fetch(type: ResourceType, call: ServerUnaryCall<DiscoveryRequest, unknown>, callback: sendUnaryData<unknown>): void {
    const request = call.request;
    const view = this.snapshot(request.node ? this.#nodeGroup(request.node) : DEFAULT_GROUP);
    const byName = view.get(type.typeUrl);
    const names = request.resourceNames.filter((n) => n !== '*');
    const wildcard = names.length === 0 || request.resourceNames.includes('*');
    const chosen = wildcard ? [...byName.values()] : names.flatMap((n) => byName.get(n) ?? []);
    callback(
      null,
      create(DiscoveryResponseSchema, {
        versionInfo: view.version(type.typeUrl),
        typeUrl: type.typeUrl,
        resources: chosen.map((r) => ({ typeUrl: r.typeUrl, value: r.value })),
      }),
    );
  }

  /** Add the xDS and CSDS services to a grpc-js server someone else owns (the agent does). */
  addTo(server: Server): void {
    const ads: UntypedServiceImplementation = {
      streamAggregatedResources: (call: Duplex<DiscoveryRequest>) => this.#stream('sotw', null, call),
      deltaAggregatedResources: (call: Duplex<DeltaDiscoveryRequest>) => this.#stream('delta', null, call),
    };
    server.addService(withFastSotwDecoding(serviceDefinition(AggregatedDiscoveryService)), ads);
    for (const type of RESOURCE_TYPES) {
      const impl: UntypedServiceImplementation = {};
      for (const method of type.service.methods) {
        if (method.methodKind === 'bidi_streaming') {
          const protocol: Protocol = method.name.startsWith('Delta') ? 'delta' : 'sotw';
          impl[method.localName] = (call: Duplex<DiscoveryRequest>) => this.#stream(protocol, type, call);
        } else if (method.methodKind === 'unary') {
          impl[method.localName] = (call: ServerUnaryCall<DiscoveryRequest, unknown>, cb: sendUnaryData<unknown>) => this.#fetch(type, call, cb);
        }
      }
      server.addService(withFastSotwDecoding(serviceDefinition(type.service)), impl);
    }
    const csds: UntypedServiceImplementation = {
      streamClientStatus: (call: ServerDuplexStream<ClientStatusRequest, ClientStatusResponse>) => {
        call.on('data', (request: ClientStatusRequest) => call.write(this.csds(request)));
        call.on('end', () => call.end());
        call.on('error', () => undefined);
      },
      fetchClientStatus: (call: ServerUnaryCall<ClientStatusRequest, ClientStatusResponse>, cb: sendUnaryData<ClientStatusResponse>) =>
        cb(null, this.csds(call.request)),
    };
    server.addService(serviceDefinition(ClientStatusDiscoveryService), csds);
  }

  /** Serve on host:port (default 127.0.0.1:0); resolves with the bound port. */
  async listen(options: ListenOptions = {}): Promise<{ host: string; port: number }> {
    if (this.#grpc !== null) throw new TetherError('XDS_ALREADY_LISTENING', 'this xDS server is already listening');
    const host = options.host ?? '127.0.0.1';
    // Keepalive pings find clients that vanished without closing (their sessions would linger);
    // an optional maximum connection age rebalances long-lived streams across replicas.
    const server = new Server({
      'grpc.keepalive_time_ms': options.keepaliveMs ?? 60_000,
      'grpc.keepalive_timeout_ms': 20_000,
      'grpc.keepalive_permit_without_calls': 1,
      ...(options.maxConnectionAgeMs === undefined ? {} : { 'grpc.max_connection_age_ms': options.maxConnectionAgeMs }),
    });
    this.addTo(server);
    const address = host.includes(':') ? `[${host}]:${options.port ?? 0}` : `${host}:${options.port ?? 0}`;
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(address, options.credentials ?? ServerCredentials.createInsecure(), (error, bound) => {
        if (error) reject(new TetherError('XDS_LISTEN_FAILED', `cannot listen on ${address}: ${error.message}`, { cause: error }));
        else resolve(bound);
      });
    });
    this.#grpc = server;
    return { host, port };
  }

  #drained: Promise<void> | null = null;

  /** Stop taking streams, end open ones with OK (clients reconnect elsewhere), then close. */
  drain(graceMs = 5000): Promise<void> {
    this.#drained ??= this.#drain(graceMs);
    return this.#drained;
  }

  async #drain(graceMs: number): Promise<void> {
    this.#draining = true;
    const server = this.#grpc;
    for (const call of this.#calls.values()) if (!call.writableEnded) call.end();
    if (server === null) return;
    await new Promise<void>((resolve) => {
      let timer: NodeJS.Timeout | null = setTimeout(() => {
        timer = null;
        server.forceShutdown();
        resolve();
      }, graceMs);
      server.tryShutdown(() => {
        if (timer === null) return;
        clearTimeout(timer);
        timer = null;
        resolve();
      });
    });
    this.#grpc = null;
  }

  close = once(async (): Promise<void> => {
    this.#draining = true;
    for (const session of this.#sessions) session.close();
    this.#grpc?.forceShutdown();
    this.#grpc = null;
    this.#sessions.clear();
    this.#calls.clear();
  });
}

const EMPTY = Snapshot.empty();

/** SotW stream methods decode requests with the caching decoder (see request-decoder.ts). */
function withFastSotwDecoding(definition: ServiceDefinition): ServiceDefinition {
  for (const method of Object.values(definition)) {
    if (method.requestStream && method.responseStream && !method.path.includes('/Delta')) {
      (method as { requestDeserialize: (bytes: Buffer) => unknown }).requestDeserialize = decodeDiscoveryRequest;
    }
  }
  return definition;
}

function refusal(code: string, headline: string, problems: Problem[]): TetherError {
  const shown = problems.slice(0, 10).map(formatProblem);
  const more = problems.length > shown.length ? `; and ${problems.length - shown.length} more` : '';
  return new TetherError(code, `${headline}: ${shown.join('; ')}${more}`, { details: { problems } });
}
