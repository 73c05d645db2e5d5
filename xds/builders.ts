/**
 * Small constructors for the resources tether serves: EDS clusters fed over ADS, load assignments,
 * route configurations with weighted clusters, HTTP listeners for Envoy, API listeners for
 * proxyless gRPC, and TLS secrets. Used by the config-file server, the agent and the tests.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import type { Any } from '@bufbuild/protobuf/wkt';
import { AnySchema } from '@bufbuild/protobuf/wkt';
import { ClusterSchema, Cluster_DiscoveryType, Cluster_LbPolicy } from './gen/envoy/config/cluster/v3/cluster_pb.js';
import type { Cluster } from './gen/envoy/config/cluster/v3/cluster_pb.js';
import { ClusterLoadAssignmentSchema } from './gen/envoy/config/endpoint/v3/endpoint_pb.js';
import type { ClusterLoadAssignment } from './gen/envoy/config/endpoint/v3/endpoint_pb.js';
import { ListenerSchema } from './gen/envoy/config/listener/v3/listener_pb.js';
import type { Listener } from './gen/envoy/config/listener/v3/listener_pb.js';
import { RouteConfigurationSchema } from './gen/envoy/config/route/v3/route_pb.js';
import type { RouteConfiguration } from './gen/envoy/config/route/v3/route_pb.js';
import type { Route } from './gen/envoy/config/route/v3/route_components_pb.js';
import { RouteSchema } from './gen/envoy/config/route/v3/route_components_pb.js';
import { SecretSchema } from './gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js';
import type { Secret } from './gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js';
import { HttpConnectionManagerSchema } from './gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import type { HttpConnectionManager } from './gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import { RouterSchema } from './gen/envoy/extensions/filters/http/router/v3/router_pb.js';
import { HCM_TYPE_URL, ROUTER_TYPE_URL } from './references.js';

function pack(typeUrl: string, value: Uint8Array): Any {
  return create(AnySchema, { typeUrl, value });
}

const ADS = { configSourceSpecifier: { case: 'ads' as const, value: {} } };

export interface ClusterSpec {
  name: string;
  /** The load assignment to read; default the cluster name. */
  serviceName?: string;
  lbPolicy?: 'ROUND_ROBIN' | 'RING_HASH' | 'LEAST_REQUEST' | 'RANDOM' | 'MAGLEV';
  connectTimeoutMs?: number;
}

/** An EDS cluster whose endpoints come over ADS. */
export function edsCluster(spec: ClusterSpec): Cluster {
  const ms = spec.connectTimeoutMs ?? 5000;
  return create(ClusterSchema, {
    name: spec.name,
    clusterDiscoveryType: { case: 'type', value: Cluster_DiscoveryType.EDS },
    edsClusterConfig: { edsConfig: ADS, serviceName: spec.serviceName ?? '' },
    lbPolicy: Cluster_LbPolicy[spec.lbPolicy ?? 'ROUND_ROBIN'],
    connectTimeout: { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 },
  });
}

export interface EndpointSpec {
  address: string;
  port: number;
  weight?: number;
}

/** One locality (weight 1, priority 0) holding the endpoints. */
export function loadAssignment(clusterName: string, endpoints: EndpointSpec[], locality = { region: 'local', zone: 'a' }): ClusterLoadAssignment {
  return create(ClusterLoadAssignmentSchema, {
    clusterName,
    endpoints: [
      {
        locality,
        loadBalancingWeight: 1,
        priority: 0,
        lbEndpoints: endpoints.map((e) => ({
          hostIdentifier: {
            case: 'endpoint' as const,
            value: { address: { address: { case: 'socketAddress' as const, value: { address: e.address, portSpecifier: { case: 'portValue' as const, value: e.port } } } } },
          },
          loadBalancingWeight: e.weight ?? 1,
        })),
      },
    ],
  });
}

export interface RouteSpec {
  prefix?: string;
  path?: string;
  /** A single target cluster… */
  cluster?: string;
  /** …or weighted targets. */
  weighted?: Array<{ cluster: string; weight: number }>;
  timeoutMs?: number;
}

export interface VirtualHostSpec {
  name: string;
  domains: string[];
  routes: RouteSpec[];
}

export function route(spec: RouteSpec): Route {
  const pathSpecifier =
    spec.path !== undefined ? { case: 'path' as const, value: spec.path } : { case: 'prefix' as const, value: spec.prefix ?? '' };
  const clusterSpecifier =
    spec.weighted !== undefined
      ? { case: 'weightedClusters' as const, value: { clusters: spec.weighted.map((w) => ({ name: w.cluster, weight: w.weight })) } }
      : { case: 'cluster' as const, value: spec.cluster ?? '' };
  const timeout = spec.timeoutMs === undefined ? undefined : { seconds: BigInt(Math.floor(spec.timeoutMs / 1000)), nanos: (spec.timeoutMs % 1000) * 1e6 };
  return create(RouteSchema, { match: { pathSpecifier }, action: { case: 'route', value: { clusterSpecifier, timeout } } });
}

export function routeConfiguration(name: string, virtualHosts: VirtualHostSpec[]): RouteConfiguration {
  return create(RouteConfigurationSchema, {
    name,
    virtualHosts: virtualHosts.map((v) => ({ name: v.name, domains: v.domains, routes: v.routes.map(route) })),
  });
}

/** An HCM reading `routeConfigName` over ADS, with the router as its only HTTP filter. */
export function connectionManager(routeConfigName: string, statPrefix = 'http'): HttpConnectionManager {
  return create(HttpConnectionManagerSchema, {
    statPrefix,
    routeSpecifier: { case: 'rds', value: { routeConfigName, configSource: ADS } },
    httpFilters: [{ name: 'envoy.filters.http.router', configType: { case: 'typedConfig', value: pack(ROUTER_TYPE_URL, toBinary(RouterSchema, create(RouterSchema))) } }],
  });
}

/** A listener for Envoy: address:port, one filter chain with the HCM. */
export function httpListener(name: string, address: string, port: number, routeConfigName: string): Listener {
  return create(ListenerSchema, {
    name,
    address: { address: { case: 'socketAddress', value: { address, portSpecifier: { case: 'portValue', value: port } } } },
    filterChains: [
      {
        filters: [{ name: 'envoy.filters.network.http_connection_manager', configType: { case: 'typedConfig', value: pack(HCM_TYPE_URL, toBinary(HttpConnectionManagerSchema, connectionManager(routeConfigName))) } }],
      },
    ],
  });
}

/** A client-side API listener, as proxyless gRPC reads for `xds:///name`. */
export function apiListener(name: string, routeConfigName: string): Listener {
  return create(ListenerSchema, {
    name,
    apiListener: { apiListener: pack(HCM_TYPE_URL, toBinary(HttpConnectionManagerSchema, connectionManager(routeConfigName))) },
  });
}

/** A TLS certificate secret (PEM strings inline). */
export function tlsSecret(name: string, certificateChainPem: string, privateKeyPem: string): Secret {
  return create(SecretSchema, {
    name,
    type: {
      case: 'tlsCertificate',
      value: {
        certificateChain: { specifier: { case: 'inlineString', value: certificateChainPem } },
        privateKey: { specifier: { case: 'inlineString', value: privateKeyPem } },
      },
    },
  });
}
