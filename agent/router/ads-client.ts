/**
 * The built-in router's own ADS client: one State-of-the-World `StreamAggregatedResources` stream
 * to an xDS server. It subscribes to listeners (wildcard), to the route configuration named by
 * the chosen listener's HTTP connection manager, to clusters (wildcard), to the load assignments
 * those clusters read, and (for a downstream front) to the SDS secret its TLS names. Each response is compiled as a whole: if everything in it can
 * be applied it is ACKed and the router gets the new configuration; otherwise it is NACKed with
 * `error_detail` naming the resource and field, and the last good configuration stays.
 * Lost streams are re-opened with jittered backoff (the applied configuration keeps routing
 * meanwhile); on a new stream the client sends the versions it holds.
 */
import { EventEmitter } from 'node:events';
import { create, fromBinary } from '@bufbuild/protobuf';
import { Client, credentials, status as grpcStatus } from '@grpc/grpc-js';
import type { ChannelCredentials, ClientDuplexStream, ServiceError } from '@grpc/grpc-js';
import { Backoff } from '../../common/backoff.js';
import type { BackoffOptions } from '../../common/backoff.js';
import { TetherError } from '../../common/errors.js';
import type { Closable } from '../../common/lifecycle.js';
import { silentLogger } from '../../common/log.js';
import type { Logger } from '../../common/log.js';
import type { Cluster } from '../../xds/gen/envoy/config/cluster/v3/cluster_pb.js';
import { NodeSchema } from '../../xds/gen/envoy/config/core/v3/base_pb.js';
import type { ClusterLoadAssignment } from '../../xds/gen/envoy/config/endpoint/v3/endpoint_pb.js';
import type { Listener } from '../../xds/gen/envoy/config/listener/v3/listener_pb.js';
import type { RouteConfiguration } from '../../xds/gen/envoy/config/route/v3/route_pb.js';
import type { Secret } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js';
import { AggregatedDiscoveryService } from '../../xds/gen/envoy/service/discovery/v3/ads_pb.js';
import { DiscoveryRequestSchema } from '../../xds/gen/envoy/service/discovery/v3/discovery_pb.js';
import type { DiscoveryRequest, DiscoveryResponse } from '../../xds/gen/envoy/service/discovery/v3/discovery_pb.js';
import { methodDefinition } from '../../xds/grpc-service.js';
import { TypeUrl, resourceTypeByUrl } from '../../xds/resource-types.js';
import { compileAssignment, compileCluster, compileListener, compileRouteConfig } from './compile.js';
import type { Compiled, CompiledAssignment, CompiledCluster, CompiledListener, CompiledRouteConfig } from './compile.js';
import { compileSecret } from './downstream-tls.js';
import type { CompiledSecret } from './downstream-tls.js';
import type { Problem } from './fields.js';
import type { Router, RouterConfig } from './router.js';

export const ROUTER_USER_AGENT = 'tether-router';
/** google.rpc.Code INVALID_ARGUMENT, the code of our NACKs' error_detail. */
const INVALID_ARGUMENT = 3;
/** How many problems a NACK names (the rest are counted). */
const MAX_PROBLEMS_SHOWN = 5;

type Kind = 'listener' | 'route' | 'cluster' | 'endpoint' | 'secret';
/** The kinds every router reads (secrets only matter to a front with downstream TLS from SDS). */
type RoutingKind = Exclude<Kind, 'secret'>;

const KIND_OF_URL: Record<string, Kind> = {
  [TypeUrl.listener]: 'listener',
  [TypeUrl.route]: 'route',
  [TypeUrl.cluster]: 'cluster',
  [TypeUrl.endpoint]: 'endpoint',
  [TypeUrl.secret]: 'secret',
};

export interface AdsClientOptions {
  /** `host:port` of the xDS server. */
  target: string;
  /** Where applied configurations go. */
  router: Router;
  nodeId: string;
  /** `node.cluster` (default `tether`). */
  nodeCluster?: string;
  /** The listener to route by; default the first one the server sends. */
  listenerName?: string;
  /**
   * The router's front accepts connections itself (the sovereign front): the chosen listener's
   * PROXY protocol filter, downstream TLS and jwt_authn/rbac filters are compiled (see
   * `CompileListenerOptions`), and the SDS secrets its TLS names are subscribed to.
   */
  downstream?: boolean;
  credentials?: ChannelCredentials;
  backoff?: BackoffOptions;
  logger?: Logger;
}

export interface AdsEvent {
  kind: Kind;
  version: string;
  nonce: string;
  names: string[];
  /** NACK only: the error_detail message sent. */
  message?: string;
}

export interface AdsClientEvents {
  ack: [AdsEvent];
  nack: [AdsEvent];
  /** A new configuration went to the router. */
  config: [RouterConfig];
  connected: [];
  disconnected: [{ code: number; details: string }];
}

interface TypeState {
  kind: Kind;
  typeUrl: string;
  /** Last applied version ('' before any). */
  version: string;
  /** Nonce of the last response on the current stream. */
  nonce: string;
  /** Subscribed names; null = wildcard. */
  names: string[] | null;
  /** Whether a request for this type went out on the current stream. */
  requested: boolean;
}

type Call = ClientDuplexStream<DiscoveryRequest, DiscoveryResponse>;

export class AdsClient extends EventEmitter<AdsClientEvents> implements Closable {
  readonly #options: AdsClientOptions;
  readonly #logger: Logger;
  readonly #client: Client;
  readonly #backoff: Backoff;
  readonly #types: Record<Kind, TypeState>;
  #call: Call | null = null;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;
  #firstOnStream = true;
  // Applied state.
  #listeners: Listener[] = [];
  #listener: CompiledListener | null = null;
  readonly #routes = new Map<string, CompiledRouteConfig>();
  readonly #clusters = new Map<string, CompiledCluster>();
  readonly #assignments = new Map<string, CompiledAssignment>();
  readonly #secrets = new Map<string, CompiledSecret>();
  #published: RouterConfig | null = null;

  constructor(options: AdsClientOptions) {
    super();
    this.#options = options;
    this.#logger = options.logger ?? silentLogger();
    this.#backoff = new Backoff({ initialDelayMs: 200, maxDelayMs: 10_000, ...options.backoff });
    this.#client = new Client(options.target, options.credentials ?? credentials.createInsecure(), {
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
    });
    const state = (kind: Kind, typeUrl: string, names: string[] | null): TypeState => ({ kind, typeUrl, version: '', nonce: '', names, requested: false });
    this.#types = {
      listener: state('listener', TypeUrl.listener, null),
      route: state('route', TypeUrl.route, []),
      cluster: state('cluster', TypeUrl.cluster, null),
      endpoint: state('endpoint', TypeUrl.endpoint, []),
      secret: state('secret', TypeUrl.secret, []),
    };
  }

  /** Open the stream (and keep it open until close()). */
  start(): void {
    if (this.#closed) throw new TetherError('ROUTER_ADS_CLOSED', 'this ADS client is closed');
    if (this.#call === null && this.#timer === null) this.#connect();
  }

  /** Applied type versions (for status and tests). */
  versions(): Record<RoutingKind, string> {
    return { listener: this.#types.listener.version, route: this.#types.route.version, cluster: this.#types.cluster.version, endpoint: this.#types.endpoint.version };
  }

  /** The applied SDS version ('' before any; only a downstream router subscribes to secrets). */
  get secretVersion(): string {
    return this.#types.secret.version;
  }

  /** Names currently subscribed for a type (null = wildcard). */
  subscribed(kind: Kind): string[] | null {
    return this.#types[kind].names === null ? null : [...(this.#types[kind].names ?? [])];
  }

  #connect(): void {
    this.#timer = null;
    if (this.#closed) return;
    const method = AggregatedDiscoveryService.methods.find((m) => m.localName === 'streamAggregatedResources');
    if (method === undefined) throw new Error('ADS method missing from the generated service');
    const def = methodDefinition(method);
    const call = this.#client.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize) as Call;
    this.#call = call;
    this.#firstOnStream = true;
    for (const state of Object.values(this.#types)) {
      state.nonce = '';
      state.requested = false;
    }
    let ended = false;
    const end = (code: number, details: string): void => {
      if (ended) return;
      ended = true;
      if (this.#call === call) this.#call = null;
      if (this.#closed) return;
      this.emit('disconnected', { code, details });
      const delay = this.#backoff.next();
      this.#logger.warn({ code, details, delayMs: delay }, 'ADS stream lost; reconnecting');
      this.#timer = setTimeout(() => this.#connect(), delay);
    };
    call.on('data', (response: DiscoveryResponse) => {
      if (this.#call !== call) return;
      this.#backoff.reset();
      try {
        this.#onResponse(response);
      } catch (reason) {
        this.#logger.error({ err: reason }, 'ADS response handling failed');
      }
    });
    call.on('error', (error: ServiceError) => end(error.code, error.details));
    call.on('end', () => end(grpcStatus.OK, 'stream ended by the server'));
    call.on('status', (s: { code: number; details: string }) => end(s.code, s.details));
    // Wildcard types first; named types once there are names (also after a reconnect).
    this.#request(this.#types.cluster);
    this.#request(this.#types.listener);
    if ((this.#types.endpoint.names ?? []).length > 0) this.#request(this.#types.endpoint);
    if ((this.#types.route.names ?? []).length > 0) this.#request(this.#types.route);
    if ((this.#types.secret.names ?? []).length > 0) this.#request(this.#types.secret);
    this.emit('connected');
  }

  #request(state: TypeState, errorMessage?: string): void {
    const call = this.#call;
    if (call === null || call.writableEnded) return;
    const request = create(DiscoveryRequestSchema, {
      versionInfo: state.version,
      responseNonce: state.nonce,
      typeUrl: state.typeUrl,
      resourceNames: state.names ?? [],
      ...(errorMessage === undefined ? {} : { errorDetail: { code: INVALID_ARGUMENT, message: errorMessage } }),
      ...(this.#firstOnStream
        ? {
            node: create(NodeSchema, {
              id: this.#options.nodeId,
              cluster: this.#options.nodeCluster ?? 'tether',
              userAgentName: ROUTER_USER_AGENT,
              userAgentVersionType: { case: 'userAgentVersion', value: '1' },
            }),
          }
        : {}),
    });
    this.#firstOnStream = false;
    state.requested = true;
    call.write(request);
  }

  #onResponse(response: DiscoveryResponse): void {
    const kind = KIND_OF_URL[response.typeUrl];
    if (kind === undefined) {
      this.#logger.warn({ typeUrl: response.typeUrl }, 'ADS response of a type never asked for; ignored');
      return;
    }
    const state = this.#types[kind];
    state.nonce = response.nonce;
    const names = response.resources.map(() => '');
    const problems: string[] = [];
    const decoded: unknown[] = [];
    const type = resourceTypeByUrl(response.typeUrl);
    response.resources.forEach((any, i) => {
      if (any.typeUrl !== response.typeUrl || type === undefined) {
        problems.push(`resources[${i}]: type ${any.typeUrl} in a ${response.typeUrl} response`);
        return;
      }
      try {
        decoded.push(fromBinary(type.schema, any.value));
      } catch {
        problems.push(`resources[${i}]: cannot be decoded`);
      }
    });
    let apply: (() => void) | null = null;
    if (problems.length === 0) {
      const outcome = this.#compile(kind, decoded, names);
      if (outcome.ok) apply = outcome.apply;
      else problems.push(...outcome.problems);
    }
    const event = { kind, version: response.versionInfo, nonce: response.nonce, names: names.filter((n) => n !== '') };
    if (apply === null) {
      const shown = problems.slice(0, MAX_PROBLEMS_SHOWN).join('; ');
      const message = problems.length > MAX_PROBLEMS_SHOWN ? `${shown}; and ${problems.length - MAX_PROBLEMS_SHOWN} more` : shown;
      this.#logger.warn({ kind, version: response.versionInfo, error: message }, 'xDS response NACKed');
      this.#request(state, message);
      this.emit('nack', { ...event, message });
      return;
    }
    apply();
    state.version = response.versionInfo;
    this.#request(state);
    this.emit('ack', event);
    this.#resubscribe();
    this.#publish();
  }

  /** Compile every resource of a response; `apply` commits them (nothing changes before). */
  #compile(kind: Kind, decoded: unknown[], names: string[]): { ok: true; apply: () => void } | { ok: false; problems: string[] } {
    const problems: string[] = [];
    const seen = new Set<string>();
    const each = <M, C>(label: string, nameOf: (m: M) => string, compile: (m: M) => Compiled<C>): Array<[string, C]> => {
      const out: Array<[string, C]> = [];
      decoded.forEach((message, i) => {
        const name = nameOf(message as M);
        names[i] = name;
        if (seen.has(name)) problems.push(`${label} "${name}": appears twice in one response`);
        seen.add(name);
        const compiled = compile(message as M);
        if (compiled.ok) out.push([name, compiled.value]);
        else problems.push(...compiled.problems.map((p: Problem) => `${label} "${name}" ${p.field}: ${p.message}`));
      });
      return out;
    };
    switch (kind) {
      case 'listener': {
        const listeners = decoded as Listener[];
        const wanted = this.#options.listenerName;
        const chosen = wanted === undefined ? listeners[0] : listeners.find((l) => l.name === wanted);
        // Only the listener the router uses is compiled (and can be NACKed); others are not applied.
        const options = { downstream: this.#options.downstream === true };
        const compiled = each<Listener, CompiledListener | null>('listener', (l) => l.name, (l) => (l === chosen ? compileListener(l, options) : { ok: true, value: null }));
        if (problems.length > 0) return { ok: false, problems };
        const listener = compiled.find(([name]) => name === chosen?.name)?.[1] ?? null;
        return {
          ok: true,
          apply: () => {
            this.#listeners = listeners;
            this.#listener = listener;
          },
        };
      }
      case 'route': {
        const compiled = each<RouteConfiguration, CompiledRouteConfig>('route_configuration', (r) => r.name, (r) => compileRouteConfig(r));
        if (problems.length > 0) return { ok: false, problems };
        return { ok: true, apply: () => compiled.forEach(([name, value]) => this.#routes.set(name, value)) };
      }
      case 'cluster': {
        const compiled = each<Cluster, CompiledCluster>('cluster', (c) => c.name, compileCluster);
        if (problems.length > 0) return { ok: false, problems };
        return {
          ok: true,
          apply: () => {
            this.#clusters.clear();
            for (const [name, value] of compiled) this.#clusters.set(name, value);
          },
        };
      }
      case 'endpoint': {
        const compiled = each<ClusterLoadAssignment, CompiledAssignment>('cluster_load_assignment', (a) => a.clusterName, compileAssignment);
        if (problems.length > 0) return { ok: false, problems };
        return { ok: true, apply: () => compiled.forEach(([name, value]) => this.#assignments.set(name, value)) };
      }
      case 'secret': {
        const compiled = each<Secret, CompiledSecret>('secret', (c) => c.name, compileSecret);
        if (problems.length > 0) return { ok: false, problems };
        return { ok: true, apply: () => compiled.forEach(([name, value]) => this.#secrets.set(name, value)) };
      }
    }
  }

  /** Follow references: the listener's RDS name, the clusters' EDS names. */
  #resubscribe(): void {
    const rds = this.#listener?.rds;
    this.#setNames(this.#types.route, rds === null || rds === undefined ? [] : [rds], this.#routes);
    const eds = [...new Set([...this.#clusters.values()].flatMap((c) => (c.edsName === null ? [] : [c.edsName])))].sort();
    this.#setNames(this.#types.endpoint, eds, this.#assignments);
    const certificate = this.#listener?.downstream?.tls.certificate;
    this.#setNames(this.#types.secret, certificate !== undefined && 'sds' in certificate ? [certificate.sds] : [], this.#secrets);
  }

  #setNames(state: TypeState, names: string[], held: Map<string, unknown>): void {
    for (const name of held.keys()) if (!names.includes(name)) held.delete(name);
    const before = state.names ?? [];
    if (before.length === names.length && before.every((n, i) => n === names[i])) return;
    state.names = names;
    // Unsubscribing from everything on a type never asked for needs no request.
    if (names.length > 0 || state.requested) this.#request(state);
  }

  #publish(): void {
    const listener = this.#listener;
    if (listener === null) return;
    const routeConfig = listener.inline ?? (listener.rds === null ? null : (this.#routes.get(listener.rds) ?? null));
    const v = this.versions();
    const sds = this.#types.secret.version;
    const config: RouterConfig = {
      version: `lds=${v.listener} rds=${v.route} cds=${v.cluster} eds=${v.endpoint}${sds === '' ? '' : ` sds=${sds}`}`,
      listener,
      routeConfig,
      clusters: new Map(this.#clusters),
      assignments: new Map(this.#assignments),
      secrets: new Map(this.#secrets),
    };
    this.#published = config;
    this.#options.router.update(config);
    this.emit('config', config);
  }

  /** The last configuration given to the router. */
  get published(): RouterConfig | null {
    return this.#published;
  }

  /** The listeners of the last applied LDS response (names, for status). */
  get listenerNames(): string[] {
    return this.#listeners.map((l) => l.name);
  }

  /** The stream is state only; draining it is closing it. */
  drain(): Promise<void> {
    return this.close();
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      if (this.#timer !== null) clearTimeout(this.#timer);
      this.#timer = null;
      const call = this.#call;
      this.#call = null;
      if (call !== null) {
        call.end();
        call.cancel();
      }
      this.#client.close();
    }
    return Promise.resolve();
  }
}
