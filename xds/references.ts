/**
 * Reading references out of resources: which route configurations a listener names, which
 * clusters a route configuration names, which load assignment a cluster reads. Shared by the
 * consistency check and the per-client validation.
 */
import { fromBinary } from '@bufbuild/protobuf';
import type { Any } from '@bufbuild/protobuf/wkt';
import type { Cluster } from './gen/envoy/config/cluster/v3/cluster_pb.js';
import { Cluster_DiscoveryType } from './gen/envoy/config/cluster/v3/cluster_pb.js';
import type { Listener } from './gen/envoy/config/listener/v3/listener_pb.js';
import type { RouteConfiguration } from './gen/envoy/config/route/v3/route_pb.js';
import { DownstreamTlsContextSchema } from './gen/envoy/extensions/transport_sockets/tls/v3/tls_pb.js';
import { JwtAuthenticationSchema } from './gen/envoy/extensions/filters/http/jwt_authn/v3/config_pb.js';
import { HttpConnectionManagerSchema } from './gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import type { HttpConnectionManager } from './gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import { TYPE_PREFIX } from './resource-types.js';

export const HCM_TYPE_URL = `${TYPE_PREFIX}envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`;
export const ROUTER_TYPE_URL = `${TYPE_PREFIX}envoy.extensions.filters.http.router.v3.Router`;
export const JWT_AUTHN_TYPE_URL = `${TYPE_PREFIX}envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`;
export const RBAC_TYPE_URL = `${TYPE_PREFIX}envoy.extensions.filters.http.rbac.v3.RBAC`;
export const PROXY_PROTOCOL_TYPE_URL = `${TYPE_PREFIX}envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol`;
export const DOWNSTREAM_TLS_TYPE_URL = `${TYPE_PREFIX}envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext`;
/** The filter names Envoy registers these under (also the dynamic-metadata namespace of jwt_authn). */
export const JWT_AUTHN_FILTER = 'envoy.filters.http.jwt_authn';
export const RBAC_FILTER = 'envoy.filters.http.rbac';
export const PROXY_PROTOCOL_FILTER = 'envoy.filters.listener.proxy_protocol';

/** An HTTP connection manager found in a listener, with the field path it sits at. */
export interface FoundHcm {
  hcm: HttpConnectionManager;
  field: string;
}

function decodeHcm(any: Any | undefined): HttpConnectionManager | null {
  if (any === undefined || any.typeUrl !== HCM_TYPE_URL) return null;
  return fromBinary(HttpConnectionManagerSchema, any.value);
}

/** Every HCM in a listener: its API listener and each filter chain's network filters. */
export function connectionManagers(listener: Listener): FoundHcm[] {
  const found: FoundHcm[] = [];
  const api = decodeHcm(listener.apiListener?.apiListener);
  if (api) found.push({ hcm: api, field: 'api_listener.api_listener' });
  const chains = [...listener.filterChains.map((chain, i) => ({ chain, field: `filter_chains[${i}]` }))];
  if (listener.defaultFilterChain) chains.push({ chain: listener.defaultFilterChain, field: 'default_filter_chain' });
  for (const { chain, field } of chains) {
    chain.filters.forEach((filter, j) => {
      if (filter.configType.case !== 'typedConfig') return;
      const hcm = decodeHcm(filter.configType.value);
      if (hcm) found.push({ hcm, field: `${field}.filters[${j}].typed_config` });
    });
  }
  return found;
}

/** Route configuration names a listener reads over RDS. */
export function routeNamesOf(listener: Listener): string[] {
  const names: string[] = [];
  for (const { hcm } of connectionManagers(listener)) {
    if (hcm.routeSpecifier.case === 'rds') names.push(hcm.routeSpecifier.value.routeConfigName);
  }
  return names;
}

/** Cluster names a route configuration sends traffic to, with field paths. */
export function clusterRefsOf(routes: RouteConfiguration, prefix = ''): Array<{ cluster: string; field: string }> {
  const refs: Array<{ cluster: string; field: string }> = [];
  routes.virtualHosts.forEach((vhost, i) => {
    vhost.routes.forEach((route, j) => {
      if (route.action.case !== 'route') return;
      const spec = route.action.value.clusterSpecifier;
      const field = `${prefix}virtual_hosts[${i}].routes[${j}].route`;
      if (spec.case === 'cluster') refs.push({ cluster: spec.value, field: `${field}.cluster` });
      if (spec.case === 'weightedClusters') {
        spec.value.clusters.forEach((weighted, k) => refs.push({ cluster: weighted.name, field: `${field}.weighted_clusters.clusters[${k}].name` }));
      }
    });
  });
  return refs;
}

/** Cluster names referenced by inline route configurations of a listener. */
export function inlineClusterRefsOf(listener: Listener): Array<{ cluster: string; field: string }> {
  const refs: Array<{ cluster: string; field: string }> = [];
  for (const { hcm, field } of connectionManagers(listener)) {
    if (hcm.routeSpecifier.case === 'routeConfig') refs.push(...clusterRefsOf(hcm.routeSpecifier.value, `${field}.route_config.`));
  }
  return refs;
}

export function isEdsCluster(cluster: Cluster): boolean {
  return cluster.clusterDiscoveryType.case === 'type' && cluster.clusterDiscoveryType.value === Cluster_DiscoveryType.EDS;
}

/** The ClusterLoadAssignment name an EDS cluster reads (service_name, else the cluster name). */
export function edsNameOf(cluster: Cluster): string | null {
  if (!isEdsCluster(cluster)) return null;
  const serviceName = cluster.edsClusterConfig?.serviceName ?? '';
  return serviceName === '' ? cluster.name : serviceName;
}

/** A named reference with the field path it sits at. */
export interface FieldRef {
  name: string;
  field: string;
}

/**
 * SDS secrets a listener's downstream TLS reads from this server (`sds_config` ads or self; an
 * unset `sds_config` names a static secret of Envoy's bootstrap, which no snapshot holds).
 */
export function secretRefsOf(listener: Listener): FieldRef[] {
  const refs: FieldRef[] = [];
  const chains = listener.filterChains.map((chain, i) => ({ chain, field: `filter_chains[${i}]` }));
  if (listener.defaultFilterChain) chains.push({ chain: listener.defaultFilterChain, field: 'default_filter_chain' });
  for (const { chain, field } of chains) {
    const socket = chain.transportSocket;
    if (socket?.configType.case !== 'typedConfig' || socket.configType.value.typeUrl !== DOWNSTREAM_TLS_TYPE_URL) continue;
    let configs;
    try {
      configs = fromBinary(DownstreamTlsContextSchema, socket.configType.value.value).commonTlsContext?.tlsCertificateSdsSecretConfigs ?? [];
    } catch {
      continue; // undecodable: the validation reports it
    }
    configs.forEach((config, k) => {
      const which = config.sdsConfig?.configSourceSpecifier.case;
      if (which === 'ads' || which === 'self') {
        refs.push({ name: config.name, field: `${field}.transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[${k}].name` });
      }
    });
  }
  return refs;
}

/** Clusters the listener's jwt_authn filters fetch remote JWKS through (`remote_jwks.http_uri.cluster`). */
export function jwksClusterRefsOf(listener: Listener): Array<{ cluster: string; field: string }> {
  const refs: Array<{ cluster: string; field: string }> = [];
  for (const { hcm, field } of connectionManagers(listener)) {
    hcm.httpFilters.forEach((filter, i) => {
      if (filter.configType.case !== 'typedConfig' || filter.configType.value.typeUrl !== JWT_AUTHN_TYPE_URL) return;
      let config;
      try {
        config = fromBinary(JwtAuthenticationSchema, filter.configType.value.value);
      } catch {
        return;
      }
      for (const [name, provider] of Object.entries(config.providers)) {
        const source = provider.jwksSourceSpecifier;
        const upstream = source.case === 'remoteJwks' ? source.value.httpUri?.httpUpstreamType : undefined;
        if (upstream?.case === 'cluster') {
          refs.push({ cluster: upstream.value, field: `${field}.http_filters[${i}].typed_config.providers["${name}"].remote_jwks.http_uri.cluster` });
        }
      }
    });
  }
  return refs;
}
