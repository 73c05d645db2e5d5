/**
 * Small constructors for the resources tether serves: EDS clusters fed over ADS, load assignments,
 * route configurations with weighted clusters, HTTP listeners for Envoy, API listeners for
 * proxyless gRPC, TLS secrets, and the sovereign listener (PROXY protocol, downstream TLS,
 * jwt_authn, RBAC) with the cluster its remote JWKS is fetched through. Used by the config-file
 * server, the agent and the tests.
 */
import { isIP } from 'node:net';
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
import { ProxyProtocolSchema } from './gen/envoy/extensions/filters/listener/proxy_protocol/v3/proxy_protocol_pb.js';
import { JwtAuthenticationSchema, RemoteJwksSchema } from './gen/envoy/extensions/filters/http/jwt_authn/v3/config_pb.js';
import { ApiVersion } from './gen/envoy/config/core/v3/config_source_pb.js';
import { DataSourceSchema, TransportSocketSchema } from './gen/envoy/config/core/v3/base_pb.js';
import { ProxyProtocolConfig_Version } from './gen/envoy/config/core/v3/proxy_protocol_pb.js';
import type { JwtProvider } from './gen/envoy/extensions/filters/http/jwt_authn/v3/config_pb.js';
import { RBACSchema as RbacFilterSchema } from './gen/envoy/extensions/filters/http/rbac/v3/rbac_pb.js';
import { RBAC_Action } from './gen/envoy/config/rbac/v3/rbac_pb.js';
import type { Permission, Principal } from './gen/envoy/config/rbac/v3/rbac_pb.js';
import { PermissionSchema, PrincipalSchema } from './gen/envoy/config/rbac/v3/rbac_pb.js';
import { DownstreamTlsContextSchema, UpstreamTlsContextSchema } from './gen/envoy/extensions/transport_sockets/tls/v3/tls_pb.js';
import { TlsParameters_TlsProtocol } from './gen/envoy/extensions/transport_sockets/tls/v3/common_pb.js';
import { HttpConnectionManager_CodecType } from './gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import {
  DOWNSTREAM_TLS_TYPE_URL,
  HCM_TYPE_URL,
  JWT_AUTHN_FILTER,
  JWT_AUTHN_TYPE_URL,
  PROXY_PROTOCOL_FILTER,
  PROXY_PROTOCOL_TYPE_URL,
  RBAC_FILTER,
  RBAC_TYPE_URL,
  ROUTER_TYPE_URL,
} from './references.js';
import { TYPE_PREFIX } from './resource-types.js';

function pack(typeUrl: string, value: Uint8Array): Any {
  return create(AnySchema, { typeUrl, value });
}

const ADS = { configSourceSpecifier: { case: 'ads' as const, value: {} } };

function duration(ms: number): { seconds: bigint; nanos: number } {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

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

// ---- the sovereign listener ----------------------------------------------------------------

/** Who a policy admits (Envoy RBAC principals). Several in one policy: any of them. */
export type PrincipalSpec =
  | { any: true }
  /** A JWT claim (a key, or a path of keys into nested objects) whose value is exactly `equals`. */
  | { claim: string | string[]; equals: string }
  /** A JWT claim holding a list (e.g. roles) that contains `includes`. */
  | { claim: string | string[]; includes: string }
  /** The client address (from PROXY protocol) in a CIDR block. */
  | { remoteIp: string }
  /** The directly connected peer (the load balancer) in a CIDR block. */
  | { directRemoteIp: string }
  | { and: PrincipalSpec[] }
  | { or: PrincipalSpec[] };

/** What a policy admits to (Envoy RBAC permissions). Several in one policy: any of them. */
export type PermissionSpec = { any: true } | { pathPrefix: string } | { path: string };

export interface SovereignListenerSpec {
  name: string;
  /** Where the listener listens: loopback or an in-cluster address. */
  address: string;
  port: number;
  /** The RouteConfiguration read over ADS. */
  routeConfigName: string;
  /** The customer's server certificate: inline PEM, or an SDS secret (over ADS) by name. */
  tls: { certificateChainPem: string; privateKeyPem: string } | { sdsSecretName: string };
  /** Lowest TLS version; default TLSv1_2 (never lower). */
  minTlsVersion?: 'TLSv1_2' | 'TLSv1_3';
  /** ALPN offered; default `['h2', 'http/1.1']` (the built-in router negotiates http/1.1). */
  alpnProtocols?: string[];
  jwt: {
    /** Provider name; default `customer-idp`. */
    provider?: string;
    issuer: string;
    audiences: string[];
    /** Remote JWKS (fetched through `cluster`, which the snapshot must hold, see `jwksCluster`) or a JWKS JSON inline. */
    jwks: { remote: { uri: string; cluster: string; timeoutMs?: number; cacheDurationMs?: number } } | { local: string };
    /** Pass the verified token upstream (default false: the `authorization` header is removed). */
    forward?: boolean;
    claimToHeaders?: Array<{ claim: string; header: string }>;
    /** Path prefixes that require a valid token; default `['/']`. */
    requirePrefixes?: string[];
    clockSkewSeconds?: number;
    /** Metadata key the verified payload is stored under for RBAC; default `jwt_payload`. */
    payloadInMetadata?: string;
    /**
     * Verified tokens the router (or Envoy) remembers, skipping the signature check for a token
     * seen before (`jwt_cache_config.jwt_cache_size`); default 100, Envoy's own default; 0 leaves
     * `jwt_cache_config` out (every request verified).
     */
    cacheSize?: number;
  };
  /** RBAC rules; ALLOW by default (a request no policy matches is refused). */
  rbac: { action?: 'ALLOW' | 'DENY'; policies: Record<string, { principals: PrincipalSpec[]; permissions?: PermissionSpec[] }> };
  /** Refuse PROXY protocol v1 or v2 (default: both accepted). */
  disallowProxyVersions?: Array<'V1' | 'V2'>;
  /**
   * Accept connections without a PROXY header (Envoy's `allow_requests_without_proxy_protocol`;
   * the connected peer is then the client). Default false: a connection without one is refused.
   */
  allowWithoutProxyProtocol?: boolean;
}

export const DEFAULT_JWT_PROVIDER = 'customer-idp';
export const DEFAULT_PAYLOAD_KEY = 'jwt_payload';

function cidr(block: string): { addressPrefix: string; prefixLen: number } {
  const slash = block.indexOf('/');
  const address = slash < 0 ? block : block.slice(0, slash);
  const bits = slash < 0 ? (address.includes(':') ? 128 : 32) : Number(block.slice(slash + 1));
  return { addressPrefix: address, prefixLen: bits };
}

function principal(spec: PrincipalSpec, payloadKey: string): Principal {
  if ('any' in spec) return create(PrincipalSchema, { identifier: { case: 'any', value: true } });
  if ('remoteIp' in spec) return create(PrincipalSchema, { identifier: { case: 'remoteIp', value: cidr(spec.remoteIp) } });
  if ('directRemoteIp' in spec) return create(PrincipalSchema, { identifier: { case: 'directRemoteIp', value: cidr(spec.directRemoteIp) } });
  if ('and' in spec) return create(PrincipalSchema, { identifier: { case: 'andIds', value: { ids: spec.and.map((p) => principal(p, payloadKey)) } } });
  if ('or' in spec) return create(PrincipalSchema, { identifier: { case: 'orIds', value: { ids: spec.or.map((p) => principal(p, payloadKey)) } } });
  const keys = typeof spec.claim === 'string' ? [spec.claim] : spec.claim;
  const exact = (value: string) => ({ matchPattern: { case: 'stringMatch' as const, value: { matchPattern: { case: 'exact' as const, value } } } });
  const value = 'equals' in spec ? exact(spec.equals) : { matchPattern: { case: 'listMatch' as const, value: { matchPattern: { case: 'oneOf' as const, value: exact(spec.includes) } } } };
  return create(PrincipalSchema, {
    identifier: {
      case: 'metadata',
      value: { filter: JWT_AUTHN_FILTER, path: [payloadKey, ...keys].map((key) => ({ segment: { case: 'key' as const, value: key } })), value },
    },
  });
}

function permission(spec: PermissionSpec): Permission {
  if ('any' in spec) return create(PermissionSchema, { rule: { case: 'any', value: true } });
  const pattern = 'pathPrefix' in spec ? { case: 'prefix' as const, value: spec.pathPrefix } : { case: 'exact' as const, value: spec.path };
  return create(PermissionSchema, { rule: { case: 'urlPath', value: { rule: { case: 'path', value: { matchPattern: pattern } } } } });
}

/**
 * The listener Envoy (or the built-in router's sovereign front) is given for a sovereign cluster:
 * the PROXY protocol listener filter (v1 and v2, required), one filter chain whose transport
 * socket is a DownstreamTlsContext with the customer's certificate (TLS 1.2+), and an HCM with
 * jwt_authn → rbac → router, reading its routes over ADS. `use_remote_address` makes Envoy take
 * the client address from the connection (as PROXY protocol restored it), never from a header.
 */
export function sovereignListener(spec: SovereignListenerSpec): Listener {
  const providerName = spec.jwt.provider ?? DEFAULT_JWT_PROVIDER;
  const payloadKey = spec.jwt.payloadInMetadata ?? DEFAULT_PAYLOAD_KEY;
  const jwks = spec.jwt.jwks;
  const jwksSourceSpecifier: JwtProvider['jwksSourceSpecifier'] =
    'remote' in jwks
      ? {
          case: 'remoteJwks',
          value: create(RemoteJwksSchema, {
            httpUri: { uri: jwks.remote.uri, httpUpstreamType: { case: 'cluster', value: jwks.remote.cluster }, timeout: duration(jwks.remote.timeoutMs ?? 5000) },
            cacheDuration: duration(jwks.remote.cacheDurationMs ?? 600_000),
          }),
        }
      : { case: 'localJwks', value: create(DataSourceSchema, { specifier: { case: 'inlineString', value: jwks.local } }) };
  const jwtAuthn = create(JwtAuthenticationSchema, {
    providers: {
      [providerName]: {
        issuer: spec.jwt.issuer,
        audiences: spec.jwt.audiences,
        jwksSourceSpecifier,
        forward: spec.jwt.forward ?? false,
        payloadInMetadata: payloadKey,
        claimToHeaders: (spec.jwt.claimToHeaders ?? []).map((c) => ({ claimName: c.claim, headerName: c.header })),
        ...(spec.jwt.clockSkewSeconds === undefined ? {} : { clockSkewSeconds: spec.jwt.clockSkewSeconds }),
        ...(spec.jwt.cacheSize === 0 ? {} : { jwtCacheConfig: { jwtCacheSize: spec.jwt.cacheSize ?? 100 } }),
      },
    },
    rules: (spec.jwt.requirePrefixes ?? ['/']).map((prefix) => ({
      match: { pathSpecifier: { case: 'prefix' as const, value: prefix } },
      requirementType: { case: 'requires' as const, value: { requiresType: { case: 'providerName' as const, value: providerName } } },
    })),
  });
  const rbac = create(RbacFilterSchema, {
    rules: {
      action: spec.rbac.action === 'DENY' ? RBAC_Action.DENY : RBAC_Action.ALLOW,
      policies: Object.fromEntries(
        Object.entries(spec.rbac.policies).map(([name, policy]) => [
          name,
          { principals: policy.principals.map((p) => principal(p, payloadKey)), permissions: (policy.permissions ?? [{ any: true }]).map(permission) },
        ]),
      ),
    },
  });
  const hcm = create(HttpConnectionManagerSchema, {
    statPrefix: 'sovereign',
    codecType: HttpConnectionManager_CodecType.AUTO,
    useRemoteAddress: true,
    routeSpecifier: { case: 'rds', value: { routeConfigName: spec.routeConfigName, configSource: ADS } },
    httpFilters: [
      { name: JWT_AUTHN_FILTER, configType: { case: 'typedConfig', value: pack(JWT_AUTHN_TYPE_URL, toBinary(JwtAuthenticationSchema, jwtAuthn)) } },
      { name: RBAC_FILTER, configType: { case: 'typedConfig', value: pack(RBAC_TYPE_URL, toBinary(RbacFilterSchema, rbac)) } },
      { name: 'envoy.filters.http.router', configType: { case: 'typedConfig', value: pack(ROUTER_TYPE_URL, toBinary(RouterSchema, create(RouterSchema))) } },
    ],
  });
  const minimum = spec.minTlsVersion === 'TLSv1_3' ? TlsParameters_TlsProtocol.TLSv1_3 : TlsParameters_TlsProtocol.TLSv1_2;
  const certificate =
    'sdsSecretName' in spec.tls
      ? { tlsCertificateSdsSecretConfigs: [{ name: spec.tls.sdsSecretName, sdsConfig: { ...ADS, resourceApiVersion: ApiVersion.V3 } }] }
      : {
          tlsCertificates: [
            {
              certificateChain: { specifier: { case: 'inlineString' as const, value: spec.tls.certificateChainPem } },
              privateKey: { specifier: { case: 'inlineString' as const, value: spec.tls.privateKeyPem } },
            },
          ],
        };
  const tls = create(DownstreamTlsContextSchema, {
    commonTlsContext: { tlsParams: { tlsMinimumProtocolVersion: minimum }, alpnProtocols: spec.alpnProtocols ?? ['h2', 'http/1.1'], ...certificate },
  });
  const proxyProtocol = create(ProxyProtocolSchema, {
    disallowedVersions: (spec.disallowProxyVersions ?? []).map((v) => (v === 'V1' ? ProxyProtocolConfig_Version.V1 : ProxyProtocolConfig_Version.V2)),
    allowRequestsWithoutProxyProtocol: spec.allowWithoutProxyProtocol ?? false,
  });
  return create(ListenerSchema, {
    name: spec.name,
    address: { address: { case: 'socketAddress', value: { address: spec.address, portSpecifier: { case: 'portValue', value: spec.port } } } },
    listenerFilters: [{ name: PROXY_PROTOCOL_FILTER, configType: { case: 'typedConfig', value: pack(PROXY_PROTOCOL_TYPE_URL, toBinary(ProxyProtocolSchema, proxyProtocol)) } }],
    filterChains: [
      {
        transportSocket: { name: 'envoy.transport_sockets.tls', configType: { case: 'typedConfig', value: pack(DOWNSTREAM_TLS_TYPE_URL, toBinary(DownstreamTlsContextSchema, tls)) } },
        filters: [{ name: 'envoy.filters.network.http_connection_manager', configType: { case: 'typedConfig', value: pack(HCM_TYPE_URL, toBinary(HttpConnectionManagerSchema, hcm)) } }],
      },
    ],
  });
}

/**
 * The cluster Envoy fetches a remote JWKS through (`remote_jwks.http_uri.cluster`): STRICT_DNS to
 * the URI's host and port, with TLS (SNI = host) for https. The built-in router fetches the URI
 * itself and does not route through this cluster.
 */
export function jwksCluster(name: string, uri: string, connectTimeoutMs = 5000): Cluster {
  const url = new URL(uri);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = url.port !== '' ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
  const cluster = create(ClusterSchema, {
    name,
    clusterDiscoveryType: { case: 'type', value: isIP(host) === 0 ? Cluster_DiscoveryType.STRICT_DNS : Cluster_DiscoveryType.STATIC },
    lbPolicy: Cluster_LbPolicy.ROUND_ROBIN,
    connectTimeout: duration(connectTimeoutMs),
    loadAssignment: loadAssignment(name, [{ address: host, port }]),
  });
  if (url.protocol === 'https:') {
    const tls = create(UpstreamTlsContextSchema, { sni: host });
    cluster.transportSocket = create(TransportSocketSchema, {
      name: 'envoy.transport_sockets.tls',
      configType: { case: 'typedConfig', value: pack(`${TYPE_PREFIX}envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext`, toBinary(UpstreamTlsContextSchema, tls)) },
    });
  }
  return cluster;
}
