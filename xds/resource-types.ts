/**
 * The five resource types this server serves: type URL, message schema, per-type service, and
 * the facts the protocol attaches to each (full state in SotW, wildcard allowed, push order).
 */
import type { DescMessage, DescService } from '@bufbuild/protobuf';
import { ClusterSchema } from './gen/envoy/config/cluster/v3/cluster_pb.js';
import { ClusterLoadAssignmentSchema } from './gen/envoy/config/endpoint/v3/endpoint_pb.js';
import { ListenerSchema } from './gen/envoy/config/listener/v3/listener_pb.js';
import { RouteConfigurationSchema } from './gen/envoy/config/route/v3/route_pb.js';
import { SecretSchema } from './gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js';
import { ClusterDiscoveryService } from './gen/envoy/service/cluster/v3/cds_pb.js';
import { EndpointDiscoveryService } from './gen/envoy/service/endpoint/v3/eds_pb.js';
import { ListenerDiscoveryService } from './gen/envoy/service/listener/v3/lds_pb.js';
import { RouteDiscoveryService } from './gen/envoy/service/route/v3/rds_pb.js';
import { SecretDiscoveryService } from './gen/envoy/service/secret/v3/sds_pb.js';

export const TYPE_PREFIX = 'type.googleapis.com/';

export const TypeUrl = {
  cluster: `${TYPE_PREFIX}envoy.config.cluster.v3.Cluster`,
  endpoint: `${TYPE_PREFIX}envoy.config.endpoint.v3.ClusterLoadAssignment`,
  listener: `${TYPE_PREFIX}envoy.config.listener.v3.Listener`,
  route: `${TYPE_PREFIX}envoy.config.route.v3.RouteConfiguration`,
  secret: `${TYPE_PREFIX}envoy.extensions.transport_sockets.tls.v3.Secret`,
} as const;

export type ResourceKind = keyof typeof TypeUrl;

export interface ResourceType {
  kind: ResourceKind;
  typeUrl: string;
  schema: DescMessage;
  /** The per-type (non-ADS) service. */
  service: DescService;
  /** SotW responses carry the complete set; absence means deletion (research/xds.md R1). */
  fullStateInSotw: boolean;
  /** Legacy (empty-list) wildcard applies (W1). */
  legacyWildcard: boolean;
}

/** Push order on ADS, make-before-break (O1): clusters, endpoints, listeners, routes, secrets. */
export const RESOURCE_TYPES: readonly ResourceType[] = [
  { kind: 'cluster', typeUrl: TypeUrl.cluster, schema: ClusterSchema, service: ClusterDiscoveryService, fullStateInSotw: true, legacyWildcard: true },
  { kind: 'endpoint', typeUrl: TypeUrl.endpoint, schema: ClusterLoadAssignmentSchema, service: EndpointDiscoveryService, fullStateInSotw: false, legacyWildcard: false },
  { kind: 'listener', typeUrl: TypeUrl.listener, schema: ListenerSchema, service: ListenerDiscoveryService, fullStateInSotw: true, legacyWildcard: true },
  { kind: 'route', typeUrl: TypeUrl.route, schema: RouteConfigurationSchema, service: RouteDiscoveryService, fullStateInSotw: false, legacyWildcard: false },
  { kind: 'secret', typeUrl: TypeUrl.secret, schema: SecretSchema, service: SecretDiscoveryService, fullStateInSotw: false, legacyWildcard: false },
];

const BY_URL = new Map(RESOURCE_TYPES.map((type) => [type.typeUrl, type]));
const BY_KIND = new Map(RESOURCE_TYPES.map((type) => [type.kind, type]));

export function resourceTypeByUrl(typeUrl: string): ResourceType | undefined {
  return BY_URL.get(typeUrl);
}

export function resourceType(kind: ResourceKind): ResourceType {
  const type = BY_KIND.get(kind);
  if (!type) throw new Error(`unknown resource kind ${kind}`);
  return type;
}
