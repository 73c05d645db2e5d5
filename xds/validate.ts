/**
 * Checks run before a snapshot is published:
 *
 * - `checkConsistency`: referential integrity (go-control-plane's `Consistent()` rules, research
 *   O4): every RDS name a listener reads exists, every cluster a route names exists, every EDS
 *   cluster's load assignment exists; a listener's SDS secrets (over ADS) and the clusters its
 *   jwt_authn fetches remote JWKS through exist.
 * - `validateFor(kind, …)`: what a client of that kind would NACK (research/xds.md (c) for
 *   proxyless gRPC; the structural rules Envoy enforces for Envoy). Each problem names the
 *   resource and the field.
 */
import { isIP } from 'node:net';
import { fromBinary } from '@bufbuild/protobuf';
import { UpstreamTlsContextSchema } from './gen/envoy/extensions/transport_sockets/tls/v3/tls_pb.js';
import { TYPE_PREFIX } from './resource-types.js';
import type { Cluster } from './gen/envoy/config/cluster/v3/cluster_pb.js';
import { Cluster_DiscoveryType, Cluster_LbPolicy } from './gen/envoy/config/cluster/v3/cluster_pb.js';
import type { ConfigSource } from './gen/envoy/config/core/v3/config_source_pb.js';
import type { ClusterLoadAssignment } from './gen/envoy/config/endpoint/v3/endpoint_pb.js';
import type { Listener } from './gen/envoy/config/listener/v3/listener_pb.js';
import type { RouteConfiguration } from './gen/envoy/config/route/v3/route_pb.js';
import type { HttpConnectionManager } from './gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import type { ClientKind } from './client-kind.js';
import { ROUTER_TYPE_URL, clusterRefsOf, connectionManagers, edsNameOf, inlineClusterRefsOf, jwksClusterRefsOf, routeNamesOf, secretRefsOf } from './references.js';
import type { Secret } from './gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js';
import { checkHttpSecurityFilters, checkListenerSecurity } from './validate-downstream.js';
import { RESOURCE_TYPES } from './resource-types.js';
import type { ResourceKind } from './resource-types.js';
import type { EncodedResource, Snapshot } from './snapshot.js';

const UPSTREAM_TLS_TYPE_URL = `${TYPE_PREFIX}envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext`;

export interface Problem {
  kind: ResourceKind;
  name: string;
  /** Field path inside the resource, proto (snake_case) spelling. */
  field: string;
  message: string;
}

export function formatProblem(problem: Problem): string {
  return `${problem.kind} "${problem.name}" ${problem.field}: ${problem.message}`;
}

export function checkConsistency(snapshot: Snapshot): Problem[] {
  const problems: Problem[] = [];
  const routes = new Set(snapshot.messages<RouteConfiguration>('route').map((r) => r.name));
  const clusters = new Set(snapshot.messages<Cluster>('cluster').map((c) => c.name));
  const assignments = new Set(snapshot.messages<ClusterLoadAssignment>('endpoint').map((a) => a.clusterName));
  const secrets = new Set(snapshot.messages<Secret>('secret').map((s) => s.name));
  for (const listener of snapshot.messages<Listener>('listener')) {
    for (const ref of secretRefsOf(listener)) {
      if (!secrets.has(ref.name)) problems.push({ kind: 'listener', name: listener.name, field: ref.field, message: `secret "${ref.name}" is not in the snapshot` });
    }
    for (const ref of jwksClusterRefsOf(listener)) {
      if (!clusters.has(ref.cluster)) problems.push({ kind: 'listener', name: listener.name, field: ref.field, message: `cluster "${ref.cluster}" is not in the snapshot` });
    }
    for (const name of routeNamesOf(listener)) {
      if (!routes.has(name)) problems.push({ kind: 'listener', name: listener.name, field: 'rds.route_config_name', message: `route configuration "${name}" is not in the snapshot` });
    }
    for (const ref of inlineClusterRefsOf(listener)) {
      if (!clusters.has(ref.cluster)) problems.push({ kind: 'listener', name: listener.name, field: ref.field, message: `cluster "${ref.cluster}" is not in the snapshot` });
    }
  }
  for (const routeConfig of snapshot.messages<RouteConfiguration>('route')) {
    for (const ref of clusterRefsOf(routeConfig)) {
      if (!clusters.has(ref.cluster)) problems.push({ kind: 'route', name: routeConfig.name, field: ref.field, message: `cluster "${ref.cluster}" is not in the snapshot` });
    }
  }
  for (const cluster of snapshot.messages<Cluster>('cluster')) {
    const eds = edsNameOf(cluster);
    if (eds !== null && !assignments.has(eds)) problems.push({ kind: 'cluster', name: cluster.name, field: 'eds_cluster_config.service_name', message: `cluster load assignment "${eds}" is not in the snapshot` });
  }
  return problems;
}

/** Restricts validation to the resources some client actually receives; null = everything. */
export type InterestFilter = (kind: ResourceKind, name: string) => boolean;

export function validateFor(clientKind: ClientKind, snapshot: Snapshot, interested: InterestFilter | null = null): Problem[] {
  const problems: Problem[] = [];
  for (const type of RESOURCE_TYPES) {
    for (const resource of snapshot.get(type.typeUrl).values()) {
      if (interested !== null && !interested(type.kind, resource.name)) continue;
      problems.push(...problemsOf(clientKind, type.kind, resource));
    }
  }
  return problems;
}

const MEMO = new WeakMap<EncodedResource, { envoy?: Problem[]; grpc?: Problem[] }>();

/** Problems one resource has for a client kind; memoised per resource version (shared objects). */
export function problemsOf(clientKind: ClientKind, kind: ResourceKind, resource: EncodedResource): Problem[] {
  const rules = clientKind === 'grpc' ? 'grpc' : 'envoy';
  let memo = MEMO.get(resource);
  if (memo === undefined) {
    memo = {};
    MEMO.set(resource, memo);
  }
  const cached = memo[rules];
  if (cached !== undefined) return cached;
  const grpc = rules === 'grpc';
  let found: Problem[] = [];
  if (kind === 'listener') found = checkListener(resource.message as Listener, grpc);
  else if (kind === 'route') found = checkRoutes(resource.message as RouteConfiguration, grpc, 'route', resource.name, '');
  else if (kind === 'cluster') found = checkCluster(resource.message as Cluster, grpc);
  else if (kind === 'endpoint') found = checkAssignment(resource.message as ClusterLoadAssignment, grpc);
  memo[rules] = found;
  return found;
}

function adsOrSelf(source: ConfigSource | undefined): boolean {
  const which = source?.configSourceSpecifier.case;
  return which === 'ads' || which === 'self';
}

function checkListener(listener: Listener, grpc: boolean): Problem[] {
  const problems: Problem[] = [];
  const at = (field: string, message: string) => problems.push({ kind: 'listener', name: listener.name, field, message });
  if (listener.apiListener === undefined && listener.address === undefined) at('address', 'a listener needs an address (or an api_listener)');
  if (grpc && listener.apiListener !== undefined) {
    const inner = listener.apiListener.apiListener;
    if (inner === undefined || connectionManagers(listener).every((found) => found.field !== 'api_listener.api_listener')) {
      at('api_listener.api_listener', 'gRPC clients require an HttpConnectionManager here');
    }
  }
  for (const { hcm, field } of connectionManagers(listener)) problems.push(...checkHcm(hcm, grpc, listener.name, field));
  if (!grpc) {
    // Downstream security (PROXY protocol, TLS, jwt_authn, RBAC) as Envoy checks it on load.
    const security = checkListenerSecurity(listener);
    for (const { hcm, field } of connectionManagers(listener)) security.push(...checkHttpSecurityFilters(hcm, field));
    for (const p of security) at(p.field, p.message);
  }
  return problems;
}

function checkHcm(hcm: HttpConnectionManager, grpc: boolean, name: string, field: string): Problem[] {
  const problems: Problem[] = [];
  const at = (sub: string, message: string) => problems.push({ kind: 'listener', name, field: `${field}.${sub}`, message });
  const spec = hcm.routeSpecifier;
  if (spec.case === undefined) at('route_specifier', 'needs rds or route_config');
  if (spec.case === 'scopedRoutes' && grpc) at('scoped_routes', 'gRPC clients support only rds or route_config');
  if (spec.case === 'rds' && grpc && !adsOrSelf(spec.value.configSource)) at('rds.config_source', 'gRPC clients require ads or self');
  if (spec.case === 'rds' && spec.value.routeConfigName === '') at('rds.route_config_name', 'is empty');
  if (spec.case === 'routeConfig') problems.push(...checkRoutes(spec.value, grpc, 'listener', name, `${field}.route_config.`));
  if (hcm.httpFilters.length === 0) at('http_filters', 'needs at least one filter, the router last');
  const seen = new Set<string>();
  hcm.httpFilters.forEach((filter, i) => {
    const typeUrl = filter.configType.case === 'typedConfig' ? filter.configType.value.typeUrl : '';
    const isRouter = typeUrl === ROUTER_TYPE_URL;
    const last = i === hcm.httpFilters.length - 1;
    if (filter.name === '') at(`http_filters[${i}].name`, 'is empty');
    if (seen.has(filter.name)) at(`http_filters[${i}].name`, `duplicate filter name "${filter.name}"`);
    seen.add(filter.name);
    if (last && !isRouter) at(`http_filters[${i}]`, 'the last HTTP filter must be the router');
    if (!last && isRouter) at(`http_filters[${i}]`, 'the router must be the last HTTP filter');
    if (grpc && !isRouter && !filter.isOptional) at(`http_filters[${i}].typed_config`, `gRPC clients do not support ${typeUrl || 'a filter without typed_config'} (mark it is_optional)`);
  });
  if (grpc && hcm.xffNumTrustedHops !== 0) at('xff_num_trusted_hops', 'gRPC clients require 0');
  return problems;
}

function checkRoutes(routes: RouteConfiguration, grpc: boolean, kind: ResourceKind, name: string, prefix: string): Problem[] {
  const problems: Problem[] = [];
  const at = (field: string, message: string) => problems.push({ kind, name, field: `${prefix}${field}`, message });
  routes.virtualHosts.forEach((vhost, i) => {
    vhost.domains.forEach((domain, d) => {
      const stars = domain.split('*').length - 1;
      if (domain === '') at(`virtual_hosts[${i}].domains[${d}]`, 'is empty');
      if (grpc && (stars > 1 || (stars === 1 && !domain.startsWith('*') && !domain.endsWith('*')))) {
        at(`virtual_hosts[${i}].domains[${d}]`, `"${domain}": at most one "*", at the start or end`);
      }
    });
    vhost.routes.forEach((route, j) => {
      const field = `virtual_hosts[${i}].routes[${j}]`;
      const path = route.match?.pathSpecifier.case;
      if (path === undefined) at(`${field}.match`, 'needs prefix, path or safe_regex');
      else if (grpc && path !== 'prefix' && path !== 'path' && path !== 'safeRegex') at(`${field}.match`, `gRPC clients do not support ${path}`);
      if (route.action.case === 'route') {
        const action = route.action.value;
        const spec = action.clusterSpecifier;
        if (spec.case === undefined) at(`${field}.route`, 'needs a cluster specifier');
        if (spec.case === 'cluster' && spec.value === '') at(`${field}.route.cluster`, 'is empty');
        if (spec.case === 'weightedClusters') {
          const sum = spec.value.clusters.reduce((total, c) => total + (c.weight ?? 0), 0);
          if (spec.value.clusters.length === 0) at(`${field}.route.weighted_clusters.clusters`, 'is empty');
          if (sum <= 0) at(`${field}.route.weighted_clusters`, 'weights must sum to more than 0');
          if (sum > 0xffffffff) at(`${field}.route.weighted_clusters`, 'weights must sum to at most 4294967295');
        }
        const retry = action.retryPolicy;
        if (grpc && retry !== undefined) {
          if (retry.numRetries !== undefined && retry.numRetries === 0) at(`${field}.route.retry_policy.num_retries`, 'must be more than 0');
          if (retry.retryBackOff !== undefined && retry.retryBackOff.baseInterval === undefined) at(`${field}.route.retry_policy.retry_back_off.base_interval`, 'is required');
        }
      } else if (grpc && route.action.case !== 'nonForwardingAction') {
        at(`${field}.action`, `gRPC clients support only route (found ${route.action.case ?? 'none'})`);
      }
    });
  });
  return problems;
}

function checkCluster(cluster: Cluster, grpc: boolean): Problem[] {
  const problems: Problem[] = [];
  const at = (field: string, message: string) => problems.push({ kind: 'cluster', name: cluster.name, field, message });
  const discovery = cluster.clusterDiscoveryType;
  if (discovery.case === 'type' && discovery.value === Cluster_DiscoveryType.EDS) {
    if (cluster.edsClusterConfig?.edsConfig === undefined) at('eds_cluster_config.eds_config', 'is required for an EDS cluster');
    else if (grpc && !adsOrSelf(cluster.edsClusterConfig.edsConfig)) at('eds_cluster_config.eds_config', 'gRPC clients require ads or self');
    if (grpc && cluster.name.startsWith('xdstp:') && (cluster.edsClusterConfig?.serviceName ?? '') === '') at('eds_cluster_config.service_name', 'is required for an xdstp: cluster name');
  } else if (grpc && discovery.case === 'type' && discovery.value !== Cluster_DiscoveryType.LOGICAL_DNS) {
    at('type', `gRPC clients support EDS, LOGICAL_DNS or aggregate clusters (found ${Cluster_DiscoveryType[discovery.value]})`);
  }
  if (grpc && cluster.loadBalancingPolicy === undefined && cluster.lbPolicy !== Cluster_LbPolicy.ROUND_ROBIN && cluster.lbPolicy !== Cluster_LbPolicy.RING_HASH) {
    at('lb_policy', `gRPC clients support ROUND_ROBIN or RING_HASH (found ${Cluster_LbPolicy[cluster.lbPolicy]})`);
  }
  if (grpc && cluster.lrsServer !== undefined && cluster.lrsServer.configSourceSpecifier.case !== 'self') at('lrs_server', 'gRPC clients require self');
  if (grpc) problems.push(...checkUpstreamTlsForGrpc(cluster));
  return problems;
}

/**
 * gRPC clients take TLS material only from the bootstrap's certificate-provider instances (A29):
 * SDS and inline certificates are NACKed, and a CA provider instance is required.
 */
function checkUpstreamTlsForGrpc(cluster: Cluster): Problem[] {
  const socket = cluster.transportSocket;
  if (socket === undefined || socket.configType.case !== 'typedConfig') return [];
  const any = socket.configType.value;
  if (any.typeUrl !== UPSTREAM_TLS_TYPE_URL) return [{ kind: 'cluster', name: cluster.name, field: 'transport_socket.typed_config', message: `gRPC clients support only UpstreamTlsContext (found ${any.typeUrl})` }];
  const tls = fromBinary(UpstreamTlsContextSchema, any.value);
  const common = tls.commonTlsContext;
  const problems: Problem[] = [];
  const at = (field: string, message: string) =>
    problems.push({ kind: 'cluster', name: cluster.name, field: `transport_socket.typed_config.common_tls_context${field === '' ? '' : `.${field}`}`, message });
  if (common === undefined) {
    at('', 'is required (with a CA certificate provider instance)');
    return problems;
  }
  if (common.tlsCertificateSdsSecretConfigs.length > 0) at('tls_certificate_sds_secret_configs', 'gRPC clients do not use SDS; use tls_certificate_provider_instance');
  if (common.tlsCertificates.length > 0) at('tls_certificates', 'gRPC clients do not take inline certificates; use tls_certificate_provider_instance');
  const validation = common.validationContextType;
  if (validation.case === 'validationContextSdsSecretConfig') at('validation_context_sds_secret_config', 'gRPC clients do not use SDS');
  const ca =
    validation.case === 'validationContext'
      ? validation.value.caCertificateProviderInstance
      : validation.case === 'combinedValidationContext'
        ? validation.value.defaultValidationContext?.caCertificateProviderInstance
        : undefined;
  if (ca === undefined) at('validation_context.ca_certificate_provider_instance', 'gRPC clients require a CA certificate provider instance');
  return problems;
}

function checkAssignment(assignment: ClusterLoadAssignment, grpc: boolean): Problem[] {
  const problems: Problem[] = [];
  const at = (field: string, message: string) => problems.push({ kind: 'endpoint', name: assignment.clusterName, field, message });
  const addresses = new Set<string>();
  const priorities = new Set<number>();
  const weights = new Map<number, number>();
  assignment.endpoints.forEach((locality, i) => {
    priorities.add(locality.priority);
    weights.set(locality.priority, (weights.get(locality.priority) ?? 0) + (locality.loadBalancingWeight ?? 0));
    if (grpc && locality.locality === undefined) at(`endpoints[${i}].locality`, 'is required by gRPC clients');
    locality.lbEndpoints.forEach((lbEndpoint, j) => {
      const field = `endpoints[${i}].lb_endpoints[${j}].endpoint.address.socket_address`;
      if (lbEndpoint.hostIdentifier.case !== 'endpoint') return;
      const address = lbEndpoint.hostIdentifier.value.address?.address;
      if (address?.case !== 'socketAddress') {
        at(field, 'a socket_address is required');
        return;
      }
      const socket = address.value;
      if (isIP(socket.address) === 0) at(`${field}.address`, `"${socket.address}" is not an IP address literal`);
      if (socket.portSpecifier.case !== 'portValue') at(`${field}.port_value`, 'is required');
      const key = `${socket.address}:${socket.portSpecifier.value ?? ''}`;
      if (grpc && addresses.has(key)) at(field, `duplicate endpoint ${key}`);
      addresses.add(key);
    });
  });
  const sorted = [...priorities].sort((a, b) => a - b);
  if (grpc && sorted.some((p, i) => p !== i)) at('endpoints[].priority', `priorities must be contiguous from 0 (found ${sorted.join(', ')})`);
  for (const [priority, sum] of weights) {
    if (grpc && sum > 0xffffffff) at('endpoints[].load_balancing_weight', `priority ${priority}: locality weights sum above 4294967295`);
  }
  return problems;
}
