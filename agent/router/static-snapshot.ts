/**
 * The agent's static route table (`[{ prefix, upstream }]`, agent/routes.ts) as an xDS snapshot,
 * so the agent can serve it from its embedded `XdsServer` to the built-in router and to an Envoy:
 * one HTTP listener, one route configuration (virtual host `*`, longest prefix first, as
 * `RouteTable` matches), one cluster per distinct upstream origin. IP-literal upstreams become EDS
 * clusters with a load assignment; host names become STRICT_DNS clusters (EDS endpoints must be IP
 * literals). `h2c://` sets explicit HTTP/2 protocol options, `https://` an UpstreamTlsContext
 * with the host as SNI. A path in the upstream URL becomes a `prefix_rewrite`.
 */
import { isIP } from 'node:net';
import { create, toBinary } from '@bufbuild/protobuf';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { AnySchema } from '@bufbuild/protobuf/wkt';
import { TetherError } from '../../common/errors.js';
import { ClusterSchema, Cluster_DiscoveryType, Cluster_LbPolicy } from '../../xds/gen/envoy/config/cluster/v3/cluster_pb.js';
import type { Cluster } from '../../xds/gen/envoy/config/cluster/v3/cluster_pb.js';
import { UpstreamTlsContextSchema } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/tls_pb.js';
import { edsCluster, httpListener, loadAssignment, routeConfiguration } from '../../xds/builders.js';
import type { SnapshotInput } from '../../xds/snapshot.js';
import { HTTP_PROTOCOL_OPTIONS_KEY, HTTP_PROTOCOL_OPTIONS_TYPE_URL, UPSTREAM_TLS_TYPE_URL } from './compile.js';

export interface StaticRoute {
  prefix: string;
  upstream: string;
}

export interface StaticSnapshotOptions {
  /** Listener name (default `tether-agent`). */
  listenerName?: string;
  /** Route configuration name (default `tether-agent-routes`). */
  routeConfigName?: string;
  /** Where an Envoy reading this snapshot listens (default 127.0.0.1:10000). */
  listenAddress?: string;
  listenPort?: number;
  connectTimeoutMs?: number;
}

export const DEFAULT_LISTENER = 'tether-agent';
export const DEFAULT_ROUTE_CONFIG = 'tether-agent-routes';

/** `HttpProtocolOptions{explicit_http_config{http2_protocol_options{}}}`, encoded by hand (type not generated). */
function http2Options(): Uint8Array {
  const inner = new BinaryWriter().tag(2, WireType.LengthDelimited).bytes(new Uint8Array()).finish();
  return new BinaryWriter().tag(3, WireType.LengthDelimited).bytes(inner).finish();
}

function defaultPort(url: URL): number {
  if (url.port !== '') return Number(url.port);
  return url.protocol === 'https:' ? 443 : 80;
}

/** Cluster name for an upstream origin, readable and stable: `http_127.0.0.1_8080`. */
export function clusterNameOf(url: URL): string {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return `${url.protocol.replace(':', '')}_${host}_${defaultPort(url)}`;
}

export function staticSnapshot(routes: readonly StaticRoute[], options: StaticSnapshotOptions = {}): SnapshotInput {
  const listenerName = options.listenerName ?? DEFAULT_LISTENER;
  const routeConfigName = options.routeConfigName ?? DEFAULT_ROUTE_CONFIG;
  const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
  const clusters = new Map<string, Cluster>();
  const endpoints: SnapshotInput['endpoints'] = [];
  const parsed = routes.map((r, i) => {
    let url: URL;
    try {
      url = new URL(r.upstream);
    } catch {
      throw new TetherError('ROUTER_STATIC_ROUTE_INVALID', `routes[${i}].upstream: bad URL ${r.upstream}`);
    }
    if (!['http:', 'https:', 'h2c:'].includes(url.protocol)) throw new TetherError('ROUTER_STATIC_ROUTE_INVALID', `routes[${i}].upstream: unsupported scheme ${url.protocol}`);
    if (!r.prefix.startsWith('/')) throw new TetherError('ROUTER_STATIC_ROUTE_INVALID', `routes[${i}].prefix: must start with /`);
    return { prefix: r.prefix, url, cluster: clusterNameOf(url) };
  });
  for (const { url, cluster: name } of parsed) {
    if (clusters.has(name)) continue;
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const port = defaultPort(url);
    let cluster: Cluster;
    if (isIP(host) !== 0) {
      cluster = edsCluster({ name, connectTimeoutMs });
      endpoints.push(loadAssignment(name, [{ address: host, port }]));
    } else {
      cluster = create(ClusterSchema, {
        name,
        clusterDiscoveryType: { case: 'type', value: Cluster_DiscoveryType.STRICT_DNS },
        lbPolicy: Cluster_LbPolicy.ROUND_ROBIN,
        connectTimeout: { seconds: BigInt(Math.floor(connectTimeoutMs / 1000)), nanos: (connectTimeoutMs % 1000) * 1e6 },
        loadAssignment: loadAssignment(name, [{ address: host, port }]),
      });
    }
    if (url.protocol === 'h2c:') {
      cluster.typedExtensionProtocolOptions[HTTP_PROTOCOL_OPTIONS_KEY] = create(AnySchema, { typeUrl: HTTP_PROTOCOL_OPTIONS_TYPE_URL, value: http2Options() });
    }
    if (url.protocol === 'https:') {
      const tls = create(UpstreamTlsContextSchema, { sni: host });
      cluster.transportSocket = {
        $typeName: 'envoy.config.core.v3.TransportSocket',
        name: 'envoy.transport_sockets.tls',
        configType: { case: 'typedConfig', value: create(AnySchema, { typeUrl: UPSTREAM_TLS_TYPE_URL, value: toBinary(UpstreamTlsContextSchema, tls) }) },
      };
    }
    clusters.set(name, cluster);
  }
  // Longest prefix first: Envoy takes the first matching route, RouteTable the longest prefix.
  const ordered = [...parsed].sort((a, b) => b.prefix.length - a.prefix.length);
  const config = routeConfiguration(routeConfigName, [{ name: 'agent', domains: ['*'], routes: ordered.map((r) => ({ prefix: r.prefix, cluster: r.cluster })) }]);
  const virtualHost = config.virtualHosts[0];
  ordered.forEach((r, i) => {
    const base = r.url.pathname.replace(/\/$/, '');
    const action = virtualHost?.routes[i]?.action;
    if (base !== '' && action?.case === 'route') action.value.prefixRewrite = `${base}${r.prefix}`;
  });
  return {
    listeners: [httpListener(listenerName, options.listenAddress ?? '127.0.0.1', options.listenPort ?? 10_000, routeConfigName)],
    routes: [config],
    clusters: [...clusters.values()],
    endpoints,
  };
}
