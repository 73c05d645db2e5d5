/**
 * Turning xDS resources into the built-in router's compiled form, refusing (with the field path)
 * whatever it cannot apply. Each `compile*` returns either the compiled value or the problems;
 * the ADS client NACKs a response with any problem and keeps its last good configuration.
 *
 * The lists below ARE the support matrix (README.md restates them): `*_SUPPORTED` fields are
 * implemented, `*_IGNORED` ones are accepted without effect on routing, anything else that is set
 * is refused as `<path>: unsupported`.
 */
import { fromBinary } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import type { Any } from '@bufbuild/protobuf/wkt';
import { Cluster_DiscoveryType, Cluster_LbPolicy, ClusterSchema } from '../../xds/gen/envoy/config/cluster/v3/cluster_pb.js';
import type { Cluster } from '../../xds/gen/envoy/config/cluster/v3/cluster_pb.js';
import type { ConfigSource } from '../../xds/gen/envoy/config/core/v3/config_source_pb.js';
import { HealthStatus } from '../../xds/gen/envoy/config/core/v3/health_check_pb.js';
import { ClusterLoadAssignmentSchema } from '../../xds/gen/envoy/config/endpoint/v3/endpoint_pb.js';
import type { ClusterLoadAssignment } from '../../xds/gen/envoy/config/endpoint/v3/endpoint_pb.js';
import { EndpointSchema, LbEndpointSchema, LocalityLbEndpointsSchema } from '../../xds/gen/envoy/config/endpoint/v3/endpoint_components_pb.js';
import { FilterChainSchema, FilterSchema } from '../../xds/gen/envoy/config/listener/v3/listener_components_pb.js';
import { ListenerSchema } from '../../xds/gen/envoy/config/listener/v3/listener_pb.js';
import type { Listener } from '../../xds/gen/envoy/config/listener/v3/listener_pb.js';
import {
  RetryPolicySchema,
  RouteActionSchema,
  RouteSchema,
  VirtualHostSchema,
  WeightedCluster_ClusterWeightSchema,
  WeightedClusterSchema,
} from '../../xds/gen/envoy/config/route/v3/route_components_pb.js';
import type { RetryPolicy, Route, VirtualHost } from '../../xds/gen/envoy/config/route/v3/route_components_pb.js';
import { RouteConfigurationSchema } from '../../xds/gen/envoy/config/route/v3/route_pb.js';
import type { RouteConfiguration } from '../../xds/gen/envoy/config/route/v3/route_pb.js';
import { HttpConnectionManagerSchema, HttpFilterSchema } from '../../xds/gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import type { HttpConnectionManager } from '../../xds/gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import { UpstreamTlsContextSchema } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/tls_pb.js';
import { HCM_TYPE_URL, ROUTER_TYPE_URL } from '../../xds/references.js';
import { deniedFields, durationMs, join, onlyFields } from './fields.js';
import type { Problem } from './fields.js';
import { compileDownstreamListener, compileHttpSecurityFilters } from './downstream.js';
import type { CompiledDownstream } from './downstream.js';
import { compileRouteMatch } from './matchers.js';

export const HTTP_PROTOCOL_OPTIONS_KEY = 'envoy.extensions.upstreams.http.v3.HttpProtocolOptions';
export const HTTP_PROTOCOL_OPTIONS_TYPE_URL = `type.googleapis.com/${HTTP_PROTOCOL_OPTIONS_KEY}`;
export const UPSTREAM_TLS_TYPE_URL = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext';

/** Retry conditions the router implements (Envoy `x-envoy-retry-on` names). */
export const RETRY_ON = ['5xx', 'gateway-error', 'connect-failure', 'reset', 'refused-stream'] as const;

export type Compiled<T> = { ok: true; value: T } | { ok: false; problems: Problem[] };

/** What a route decision is asked about. Header names are lower case. */
export interface RouteRequest {
  method: string;
  /** `:path`, query included. */
  path: string;
  /** `:authority` (or Host). */
  authority: string;
  headers: Readonly<Record<string, string | readonly string[] | undefined>>;
}

export interface RetrySpec {
  /** Total tries, first one included (1 + num_retries). */
  attempts: number;
  perTryTimeoutMs?: number;
  on: ReadonlySet<string>;
}

export interface CompiledRoute {
  /** `virtual_hosts[i].routes[j]` of the route configuration. */
  field: string;
  name: string;
  matches(request: RouteRequest, path: string): boolean;
  /** Weighted targets (one entry for a single cluster); weights sum to `totalWeight`. */
  clusters: Array<{ name: string; weight: number }>;
  totalWeight: number;
  timeoutMs?: number;
  retry?: RetrySpec;
  /** The matched prefix and its replacement (`prefix_rewrite`). */
  rewrite?: { prefix: string; replacement: string };
}

export interface CompiledVirtualHost {
  name: string;
  domains: string[];
  routes: CompiledRoute[];
}

export interface CompiledRouteConfig {
  name: string;
  virtualHosts: CompiledVirtualHost[];
  ignorePort: boolean;
  /** Picks the virtual host for an authority (Envoy's order: exact, *suffix, prefix*, `*`). */
  virtualHostFor(authority: string): CompiledVirtualHost | null;
}

export interface CompiledListener {
  name: string;
  /** The RDS name, or null when the route configuration is inline. */
  rds: string | null;
  inline: CompiledRouteConfig | null;
  stripPort: boolean;
  /**
   * Address, PROXY protocol, TLS and the jwt_authn/rbac filters, for a front that accepts
   * connections itself; compiled only with `{ downstream: true }` (else null).
   */
  downstream: CompiledDownstream | null;
}

export interface CompileListenerOptions {
  /**
   * The router's front accepts connections itself and enforces what the listener says about them
   * (the sovereign front): `listener_filters` (PROXY protocol), the chain's `transport_socket`
   * (DownstreamTlsContext, required) and the jwt_authn and rbac HTTP filters are compiled.
   * Without it they are refused as unsupported: a router behind the tunnel would not apply them.
   */
  downstream?: boolean;
}

export interface Endpoint {
  host: string;
  port: number;
  weight: number;
}

export type UpstreamScheme = 'http' | 'h2c' | 'https';

export interface CompiledCluster {
  name: string;
  scheme: UpstreamScheme;
  /** The load assignment to read over EDS, or null for STATIC/DNS clusters. */
  edsName: string | null;
  /** STATIC/STRICT_DNS/LOGICAL_DNS clusters: their inline endpoints. */
  inlineEndpoints: Endpoint[] | null;
  connectTimeoutMs?: number;
  sni?: string;
}

export interface CompiledAssignment {
  name: string;
  endpoints: Endpoint[];
}

function result<T>(problems: Problem[], value: () => T): Compiled<T> {
  return problems.length > 0 ? { ok: false, problems } : { ok: true, value: value() };
}

// ---- listeners --------------------------------------------------------------------------

const LISTENER_DENIED = ['use_original_dst', 'listener_filters', 'filter_chain_matcher', 'internal_listener', 'udp_listener_config', 'deprecated_v1'];
const FILTER_CHAIN_SUPPORTED = ['filters', 'name', 'metadata', 'transport_socket_connect_timeout'];
const HCM_SUPPORTED = ['rds', 'route_config', 'http_filters', 'strip_any_host_port', 'strip_matching_host_port'];
const HCM_IGNORED = [
  'codec_type', 'stat_prefix', 'common_http_protocol_options', 'http_protocol_options', 'http2_protocol_options', 'server_name',
  'server_header_transformation', 'max_request_headers_kb', 'stream_idle_timeout', 'request_timeout', 'request_headers_timeout',
  'drain_timeout', 'delayed_close_timeout', 'access_log', 'access_log_flush_interval', 'flush_access_log_on_new_request',
  'access_log_options', 'use_remote_address', 'xff_num_trusted_hops', 'skip_xff_append', 'via', 'generate_request_id',
  'preserve_external_request_id', 'always_set_request_id_in_response', 'normalize_path', 'merge_slashes',
  'path_with_escaped_slashes_action', 'upgrade_configs', 'tracing', 'internal_address_config', 'proxy_100_continue',
  'stream_error_on_invalid_http_message', 'strip_trailing_host_dot', 'add_user_agent',
];

function adsOrSelf(source: ConfigSource | undefined): boolean {
  const which = source?.configSourceSpecifier.case;
  return which === 'ads' || which === 'self';
}

export function compileListener(listener: Listener, options: CompileListenerOptions = {}): Compiled<CompiledListener> {
  const problems: Problem[] = [];
  const downstream = options.downstream === true;
  deniedFields(ListenerSchema, listener, downstream ? LISTENER_DENIED.filter((f) => f !== 'listener_filters') : LISTENER_DENIED, '', problems);
  const outer = downstream ? compileDownstreamListener(listener, problems) : null;
  const found: Array<{ hcm: HttpConnectionManager; field: string }> = [];
  const decode = (any: Any | undefined, field: string): void => {
    if (any === undefined) return;
    if (any.typeUrl !== HCM_TYPE_URL) {
      problems.push({ field, message: `${any.typeUrl} unsupported` });
      return;
    }
    found.push({ hcm: fromBinary(HttpConnectionManagerSchema, any.value), field });
  };
  if (listener.apiListener !== undefined) decode(listener.apiListener.apiListener, 'api_listener.api_listener');
  const chains = listener.filterChains.map((chain, i) => ({ chain, field: `filter_chains[${i}]` }));
  if (listener.defaultFilterChain !== undefined) chains.push({ chain: listener.defaultFilterChain, field: 'default_filter_chain' });
  for (const { chain, field } of chains) {
    onlyFields(FilterChainSchema, chain, downstream ? [...FILTER_CHAIN_SUPPORTED, 'transport_socket'] : FILTER_CHAIN_SUPPORTED, field, problems);
    chain.filters.forEach((filter, j) => {
      const at = `${field}.filters[${j}]`;
      onlyFields(FilterSchema, filter, ['name', 'typed_config'], at, problems);
      if (filter.configType.case === 'typedConfig') decode(filter.configType.value, `${at}.typed_config`);
      else if (filter.configType.case === undefined) problems.push({ field: `${at}.typed_config`, message: 'is required' });
    });
  }
  if (found.length === 0 && problems.length === 0) problems.push({ field: 'filter_chains', message: 'no HTTP connection manager' });
  if (found.length > 1) problems.push({ field: found[1]?.field ?? 'filter_chains', message: 'more than one HTTP connection manager is unsupported' });
  const first = found[0];
  if (first === undefined || problems.length > 0) return { ok: false, problems };
  const { hcm, field } = first;
  onlyFields(HttpConnectionManagerSchema, hcm, [...HCM_SUPPORTED, ...HCM_IGNORED], field, problems);
  hcm.httpFilters.forEach((filter, i) => {
    const at = join(field, `http_filters[${i}]`);
    onlyFields(HttpFilterSchema, filter, ['name', 'typed_config', 'is_optional', 'disabled'], at, problems);
    const typeUrl = filter.configType.case === 'typedConfig' ? filter.configType.value.typeUrl : '';
    if (typeUrl === ROUTER_TYPE_URL) {
      if (i !== hcm.httpFilters.length - 1) problems.push({ field: at, message: 'the router filter must be last' });
    } else if (!downstream && !filter.isOptional && !filter.disabled) {
      problems.push({ field: join(at, 'typed_config'), message: `${typeUrl === '' ? filter.name : typeUrl} unsupported` });
    }
  });
  const filters = downstream ? compileHttpSecurityFilters(hcm, field, problems) : [];
  let rds: string | null = null;
  let inline: CompiledRouteConfig | null = null;
  const spec = hcm.routeSpecifier;
  if (spec.case === 'rds') {
    if (!adsOrSelf(spec.value.configSource)) problems.push({ field: join(field, 'rds.config_source'), message: 'only ads or self is supported' });
    if (spec.value.routeConfigName === '') problems.push({ field: join(field, 'rds.route_config_name'), message: 'is empty' });
    rds = spec.value.routeConfigName;
  } else if (spec.case === 'routeConfig') {
    const compiled = compileRouteConfig(spec.value, join(field, 'route_config'));
    if (compiled.ok) inline = compiled.value;
    else problems.push(...compiled.problems);
  } else {
    problems.push({ field: join(field, 'route_specifier'), message: spec.case === undefined ? 'needs rds or route_config' : 'unsupported' });
  }
  const stripPort = hcm.stripPortMode.case === 'stripAnyHostPort' ? hcm.stripPortMode.value : hcm.stripMatchingHostPort;
  return result(problems, () => ({ name: listener.name, rds, inline, stripPort, downstream: outer === null ? null : { ...outer, filters } }));
}

// ---- route configurations ---------------------------------------------------------------

const ROUTE_CONFIG_SUPPORTED = ['name', 'virtual_hosts', 'ignore_port_in_host_matching'];
const ROUTE_CONFIG_IGNORED = ['validate_clusters', 'max_direct_response_body_size_bytes', 'metadata'];
const VHOST_SUPPORTED = ['name', 'domains', 'routes', 'retry_policy'];
const VHOST_IGNORED = ['metadata', 'per_request_buffer_limit_bytes'];
const ROUTE_SUPPORTED = ['name', 'match', 'route'];
const ROUTE_IGNORED = ['metadata', 'decorator', 'stat_prefix', 'tracing', 'per_request_buffer_limit_bytes'];
const ACTION_SUPPORTED = ['cluster', 'weighted_clusters', 'timeout', 'retry_policy', 'prefix_rewrite'];
const ACTION_IGNORED = ['cluster_not_found_response_code', 'hash_policy', 'upgrade_configs'];
const RETRY_SUPPORTED = ['retry_on', 'num_retries', 'per_try_timeout'];
const RETRY_IGNORED = ['retry_back_off', 'retry_host_predicate', 'host_selection_retry_max_attempts'];

/** The virtual host selection order of Envoy (domain rules of RouteConfiguration). */
function domainIndex(vhosts: CompiledVirtualHost[]): (host: string) => CompiledVirtualHost | null {
  const exact = new Map<string, CompiledVirtualHost>();
  const suffixes: Array<{ suffix: string; vhost: CompiledVirtualHost }> = [];
  const prefixes: Array<{ prefix: string; vhost: CompiledVirtualHost }> = [];
  let star: CompiledVirtualHost | null = null;
  for (const vhost of vhosts) {
    for (const raw of vhost.domains) {
      const domain = raw.toLowerCase();
      if (domain === '*') star = vhost;
      else if (domain.startsWith('*')) suffixes.push({ suffix: domain.slice(1), vhost });
      else if (domain.endsWith('*')) prefixes.push({ prefix: domain.slice(0, -1), vhost });
      else exact.set(domain, vhost);
    }
  }
  suffixes.sort((a, b) => b.suffix.length - a.suffix.length);
  prefixes.sort((a, b) => b.prefix.length - a.prefix.length);
  return (host) => {
    const found = exact.get(host);
    if (found !== undefined) return found;
    // A wildcard stands for at least one character.
    for (const { suffix, vhost } of suffixes) if (host.length > suffix.length && host.endsWith(suffix)) return vhost;
    for (const { prefix, vhost } of prefixes) if (host.length > prefix.length && host.startsWith(prefix)) return vhost;
    return star;
  };
}

function stripPortOf(authority: string): string {
  if (authority.startsWith('[')) {
    const end = authority.indexOf(']');
    return end < 0 ? authority : authority.slice(0, end + 1);
  }
  const colon = authority.lastIndexOf(':');
  return colon >= 0 && authority.indexOf(':') === colon ? authority.slice(0, colon) : authority;
}

export function compileRouteConfig(config: RouteConfiguration, at = ''): Compiled<CompiledRouteConfig> {
  const problems: Problem[] = [];
  onlyFields(RouteConfigurationSchema, config, [...ROUTE_CONFIG_SUPPORTED, ...ROUTE_CONFIG_IGNORED], at, problems);
  const seen = new Map<string, string>();
  const virtualHosts = config.virtualHosts.map((vhost, i) => compileVirtualHost(vhost, join(at, `virtual_hosts[${i}]`), problems, seen));
  const ignorePort = config.ignorePortInHostMatching;
  const pick = domainIndex(virtualHosts);
  return result(problems, () => ({
    name: config.name,
    virtualHosts,
    ignorePort,
    virtualHostFor(authority: string) {
      // As Envoy: the whole authority (port included) unless the port is to be ignored.
      const host = authority.toLowerCase();
      return pick(ignorePort ? stripPortOf(host) : host);
    },
  }));
}

function compileVirtualHost(vhost: VirtualHost, at: string, problems: Problem[], seen: Map<string, string>): CompiledVirtualHost {
  onlyFields(VirtualHostSchema, vhost, [...VHOST_SUPPORTED, ...VHOST_IGNORED], at, problems);
  if (vhost.domains.length === 0) problems.push({ field: join(at, 'domains'), message: 'is empty' });
  vhost.domains.forEach((domain, k) => {
    const field = join(at, `domains[${k}]`);
    const stars = domain.split('*').length - 1;
    if (domain === '' || stars > 1 || (stars === 1 && domain !== '*' && !domain.startsWith('*') && !domain.endsWith('*'))) {
      problems.push({ field, message: `"${domain}" is not a valid domain (one * at the start or end)` });
    }
    const lower = domain.toLowerCase();
    const other = seen.get(lower);
    if (other !== undefined) problems.push({ field, message: `"${domain}" is also a domain of virtual host "${other}"` });
    seen.set(lower, vhost.name);
  });
  const vhostRetry = vhost.retryPolicy === undefined ? undefined : compileRetry(vhost.retryPolicy, join(at, 'retry_policy'), problems);
  const routes = vhost.routes.flatMap((route, j) => {
    const compiled = compileRoute(route, join(at, `routes[${j}]`), vhostRetry, problems);
    return compiled === null ? [] : [compiled];
  });
  return { name: vhost.name, domains: [...vhost.domains], routes };
}

function compileRetry(policy: RetryPolicy, at: string, problems: Problem[]): RetrySpec {
  onlyFields(RetryPolicySchema, policy, [...RETRY_SUPPORTED, ...RETRY_IGNORED], at, problems);
  const on = new Set<string>();
  for (const token of policy.retryOn.split(',').map((t) => t.trim()).filter((t) => t !== '')) {
    if ((RETRY_ON as readonly string[]).includes(token)) on.add(token);
    else problems.push({ field: join(at, 'retry_on'), message: `"${token}" unsupported` });
  }
  const retries = policy.numRetries ?? 1;
  const perTry = durationMs(policy.perTryTimeout);
  return { attempts: 1 + retries, ...(perTry === undefined || perTry === 0 ? {} : { perTryTimeoutMs: perTry }), on };
}

function compileRoute(route: Route, at: string, vhostRetry: RetrySpec | undefined, problems: Problem[]): CompiledRoute | null {
  onlyFields(RouteSchema, route, [...ROUTE_SUPPORTED, ...ROUTE_IGNORED], at, problems);
  const match = route.match;
  if (match === undefined) {
    problems.push({ field: join(at, 'match'), message: 'is required' });
    return null;
  }
  const compiledMatch = compileRouteMatch(match, join(at, 'match'), problems);
  const prefix = compiledMatch?.prefix ?? null;
  if (route.action.case !== 'route') {
    if (route.action.case === undefined) problems.push({ field: join(at, 'route'), message: 'is required' });
    return null; // other actions were reported by onlyFields
  }
  const action = route.action.value;
  const actionAt = join(at, 'route');
  onlyFields(RouteActionSchema, action, [...ACTION_SUPPORTED, ...ACTION_IGNORED], actionAt, problems);
  let clusters: Array<{ name: string; weight: number }> = [];
  const cs = action.clusterSpecifier;
  if (cs.case === 'cluster') {
    if (cs.value === '') problems.push({ field: join(actionAt, 'cluster'), message: 'is empty' });
    clusters = [{ name: cs.value, weight: 1 }];
  } else if (cs.case === 'weightedClusters') {
    const wat = join(actionAt, 'weighted_clusters');
    onlyFields(WeightedClusterSchema, cs.value, ['clusters', 'total_weight', 'runtime_key_prefix'], wat, problems);
    clusters = cs.value.clusters.map((c, k) => {
      onlyFields(WeightedCluster_ClusterWeightSchema, c, ['name', 'weight'], join(wat, `clusters[${k}]`), problems);
      if (c.name === '') problems.push({ field: join(wat, `clusters[${k}].name`), message: 'is empty' });
      return { name: c.name, weight: c.weight ?? 0 };
    });
    const sum = clusters.reduce((s, c) => s + c.weight, 0);
    if (clusters.length === 0) problems.push({ field: join(wat, 'clusters'), message: 'is empty' });
    else if (sum <= 0) problems.push({ field: wat, message: 'weights must sum to more than 0' });
    else if (sum > 0xffffffff) problems.push({ field: wat, message: 'weights must sum to at most 4294967295' });
  } else if (cs.case === undefined) {
    problems.push({ field: actionAt, message: 'needs cluster or weighted_clusters' });
  }
  let rewrite: CompiledRoute['rewrite'];
  if (action.prefixRewrite !== '') {
    if (prefix === null) problems.push({ field: join(actionAt, 'prefix_rewrite'), message: 'is supported only with a prefix match' });
    else rewrite = { prefix, replacement: action.prefixRewrite };
  }
  const timeoutMs = durationMs(action.timeout);
  const retry = action.retryPolicy === undefined ? vhostRetry : compileRetry(action.retryPolicy, join(actionAt, 'retry_policy'), problems);
  if (compiledMatch === null) return null;
  return {
    field: at.replace(/^.*?(virtual_hosts\[)/, '$1'),
    name: route.name,
    matches: compiledMatch.matches,
    clusters: clusters.filter((c) => c.weight > 0),
    totalWeight: clusters.reduce((s, c) => s + c.weight, 0),
    ...(timeoutMs === undefined || timeoutMs === 0 ? {} : { timeoutMs }),
    ...(retry === undefined || retry.on.size === 0 ? {} : { retry }),
    ...(rewrite === undefined ? {} : { rewrite }),
  };
}

// ---- clusters -----------------------------------------------------------------------------

const CLUSTER_SUPPORTED = ['name', 'type', 'eds_cluster_config', 'connect_timeout', 'lb_policy', 'load_assignment', 'http2_protocol_options', 'typed_extension_protocol_options', 'transport_socket'];
const CLUSTER_IGNORED = [
  'alt_stat_name', 'http_protocol_options', 'common_http_protocol_options', 'upstream_http_protocol_options', 'dns_refresh_rate',
  'dns_failure_refresh_rate', 'respect_dns_ttl', 'dns_lookup_family', 'circuit_breakers', 'outlier_detection',
  'per_connection_buffer_limit_bytes', 'metadata', 'common_lb_config', 'round_robin_lb_config', 'upstream_connection_options',
  'close_connections_on_host_health_failure', 'ignore_health_on_host_removal', 'track_cluster_stats', 'track_timeout_budgets',
  'wait_for_warm_on_init', 'max_requests_per_connection', 'cleanup_interval',
];

/**
 * `HttpProtocolOptions` (not in the generated subset) read by hand: field 3 `explicit_http_config`
 * holding field 1 (HTTP/1.1) or 2 (HTTP/2). Anything else (auto, use-downstream, filters) is refused.
 */
function protocolOf(any: Any, at: string, problems: Problem[]): 'http1' | 'h2' | null {
  if (any.typeUrl !== HTTP_PROTOCOL_OPTIONS_TYPE_URL) {
    problems.push({ field: at, message: `${any.typeUrl} unsupported` });
    return null;
  }
  let protocol: 'http1' | 'h2' | null = null;
  try {
    const reader = new BinaryReader(any.value);
    while (reader.pos < reader.len) {
      const [field, wire] = reader.tag();
      if (field === 3 && wire === WireType.LengthDelimited) {
        const inner = new BinaryReader(reader.bytes());
        while (inner.pos < inner.len) {
          const [f, w] = inner.tag();
          if (f === 1 && w === WireType.LengthDelimited) protocol = 'http1';
          else if (f === 2 && w === WireType.LengthDelimited) protocol = 'h2';
          else problems.push({ field: join(at, 'explicit_http_config.http3_protocol_options'), message: 'unsupported' });
          inner.skip(w);
        }
      } else if (field === 1 || field === 2) {
        reader.skip(wire); // common / upstream HTTP options: no effect on routing
      } else {
        const names: Record<number, string> = { 4: 'use_downstream_protocol_config', 5: 'auto_config', 6: 'http_filters', 7: 'header_validation_config' };
        problems.push({ field: join(at, names[field] ?? `field ${field}`), message: 'unsupported' });
        reader.skip(wire);
      }
    }
  } catch {
    problems.push({ field: at, message: 'cannot be decoded' });
  }
  return protocol;
}

function endpointsOf(assignment: ClusterLoadAssignment, at: string, problems: Problem[]): Endpoint[] {
  onlyFields(ClusterLoadAssignmentSchema, assignment, ['cluster_name', 'endpoints', 'policy'], at, problems);
  if ((assignment.policy?.dropOverloads.length ?? 0) > 0) problems.push({ field: join(at, 'policy.drop_overloads'), message: 'unsupported' });
  // The lowest priority with a usable endpoint serves (Envoy's failover without overprovisioning).
  const byPriority = new Map<number, Endpoint[]>();
  assignment.endpoints.forEach((locality, i) => {
    const lat = join(at, `endpoints[${i}]`);
    onlyFields(LocalityLbEndpointsSchema, locality, ['locality', 'lb_endpoints', 'load_balancing_weight', 'priority', 'metadata', 'proximity'], lat, problems);
    locality.lbEndpoints.forEach((lb, j) => {
      const eat = join(lat, `lb_endpoints[${j}]`);
      onlyFields(LbEndpointSchema, lb, ['endpoint', 'health_status', 'load_balancing_weight', 'metadata'], eat, problems);
      if (lb.hostIdentifier.case !== 'endpoint') return;
      const endpoint = lb.hostIdentifier.value;
      onlyFields(EndpointSchema, endpoint, ['address', 'hostname', 'health_check_config', 'additional_addresses'], join(eat, 'endpoint'), problems);
      const address = endpoint.address?.address;
      if (address?.case !== 'socketAddress') {
        problems.push({ field: join(eat, 'endpoint.address'), message: 'only socket_address is supported' });
        return;
      }
      const port = address.value.portSpecifier;
      if (port.case !== 'portValue') {
        problems.push({ field: join(eat, 'endpoint.address.socket_address.port_value'), message: 'is required' });
        return;
      }
      const usable = lb.healthStatus === HealthStatus.UNKNOWN || lb.healthStatus === HealthStatus.HEALTHY || lb.healthStatus === HealthStatus.DEGRADED;
      if (!usable) return;
      const list = byPriority.get(locality.priority) ?? [];
      list.push({ host: address.value.address, port: port.value, weight: lb.loadBalancingWeight ?? 1 });
      byPriority.set(locality.priority, list);
    });
  });
  const priorities = [...byPriority.keys()].sort((a, b) => a - b);
  return byPriority.get(priorities[0] ?? 0) ?? [];
}

export function compileAssignment(assignment: ClusterLoadAssignment): Compiled<CompiledAssignment> {
  const problems: Problem[] = [];
  const endpoints = endpointsOf(assignment, '', problems);
  return result(problems, () => ({ name: assignment.clusterName, endpoints }));
}

export function compileCluster(cluster: Cluster): Compiled<CompiledCluster> {
  const problems: Problem[] = [];
  onlyFields(ClusterSchema, cluster, [...CLUSTER_SUPPORTED, ...CLUSTER_IGNORED], '', problems);
  if (cluster.lbPolicy !== Cluster_LbPolicy.ROUND_ROBIN) problems.push({ field: 'lb_policy', message: `${Cluster_LbPolicy[cluster.lbPolicy] ?? cluster.lbPolicy} unsupported` });
  let edsName: string | null = null;
  let inlineEndpoints: Endpoint[] | null = null;
  const discovery = cluster.clusterDiscoveryType;
  if (discovery.case === 'type' || discovery.case === undefined) {
    const type = discovery.value ?? Cluster_DiscoveryType.STATIC;
    if (type === Cluster_DiscoveryType.EDS) {
      if (!adsOrSelf(cluster.edsClusterConfig?.edsConfig)) problems.push({ field: 'eds_cluster_config.eds_config', message: 'only ads or self is supported' });
      const serviceName = cluster.edsClusterConfig?.serviceName ?? '';
      edsName = serviceName === '' ? cluster.name : serviceName;
    } else if (type === Cluster_DiscoveryType.STATIC || type === Cluster_DiscoveryType.STRICT_DNS || type === Cluster_DiscoveryType.LOGICAL_DNS) {
      if (cluster.loadAssignment === undefined) problems.push({ field: 'load_assignment', message: 'is required for a STATIC or DNS cluster' });
      else inlineEndpoints = endpointsOf(cluster.loadAssignment, 'load_assignment', problems);
    } else {
      problems.push({ field: 'type', message: `${Cluster_DiscoveryType[type] ?? type} unsupported` });
    }
  }
  let scheme: UpstreamScheme = 'http';
  if (cluster.http2ProtocolOptions !== undefined) scheme = 'h2c';
  for (const [key, any] of Object.entries(cluster.typedExtensionProtocolOptions)) {
    const at = `typed_extension_protocol_options["${key}"]`;
    if (key !== HTTP_PROTOCOL_OPTIONS_KEY) {
      problems.push({ field: at, message: 'unsupported' });
      continue;
    }
    const protocol = protocolOf(any, at, problems);
    if (protocol === 'h2') scheme = 'h2c';
    if (protocol === 'http1') scheme = 'http';
  }
  let sni: string | undefined;
  const socket = cluster.transportSocket;
  if (socket !== undefined) {
    const any = socket.configType.case === 'typedConfig' ? socket.configType.value : undefined;
    if (any?.typeUrl !== UPSTREAM_TLS_TYPE_URL) problems.push({ field: 'transport_socket', message: `${any?.typeUrl ?? socket.name} unsupported` });
    else {
      const tls = fromBinary(UpstreamTlsContextSchema, any.value);
      onlyFields(UpstreamTlsContextSchema, tls, ['sni', 'common_tls_context'], 'transport_socket.typed_config', problems);
      const common = tls.commonTlsContext;
      if (common !== undefined && (common.tlsCertificates.length > 0 || common.validationContextType.case !== undefined || common.tlsCertificateSdsSecretConfigs.length > 0)) {
        problems.push({ field: 'transport_socket.typed_config.common_tls_context', message: 'only system roots and no client certificate are supported' });
      }
      if (tls.sni !== '') sni = tls.sni;
      // HTTP/2 over TLS is negotiated by ALPN; the URL says https either way.
      scheme = 'https';
    }
  }
  const connectTimeoutMs = durationMs(cluster.connectTimeout);
  return result(problems, () => ({
    name: cluster.name,
    scheme,
    edsName,
    inlineEndpoints,
    ...(connectTimeoutMs === undefined ? {} : { connectTimeoutMs }),
    ...(sni === undefined ? {} : { sni }),
  }));
}
