/** Public surface of the xDS component. */
export { XdsServer, DEFAULT_GROUP } from './server.js';
export type { XdsServerOptions, XdsServerEvents, PublishOptions, ListenOptions, RollbackEvent } from './server.js';
export type { SettleEvent } from './stream-session.js';
export { Snapshot, EncodedResource } from './snapshot.js';
export type { SnapshotInput } from './snapshot.js';
export { TypeUrl, RESOURCE_TYPES, resourceType, resourceTypeByUrl } from './resource-types.js';
export type { ResourceKind, ResourceType } from './resource-types.js';
export { clientKindOf } from './client-kind.js';
export type { ClientKind } from './client-kind.js';
export { checkConsistency, validateFor, formatProblem } from './validate.js';
export type { Problem } from './validate.js';
export type { ClientStatus, ResourceClientStatus } from './csds.js';
export { serviceDefinition, methodDefinition, methodPath, serializerFor, deserializerFor } from './grpc-service.js';
export { ConfigFileSource, parseXdsConfig, configToSnapshotInput, XdsConfigSchema } from './config-file.js';
export type { XdsConfig, ConfigFileEvents } from './config-file.js';
export { edsCluster, loadAssignment, route, routeConfiguration, connectionManager, httpListener, apiListener, tlsSecret, sovereignListener, jwksCluster, DEFAULT_JWT_PROVIDER, DEFAULT_PAYLOAD_KEY } from './builders.js';
export type { ClusterSpec, EndpointSpec, RouteSpec, VirtualHostSpec, SovereignListenerSpec, PrincipalSpec, PermissionSpec } from './builders.js';
export {
  HCM_TYPE_URL,
  ROUTER_TYPE_URL,
  JWT_AUTHN_TYPE_URL,
  RBAC_TYPE_URL,
  PROXY_PROTOCOL_TYPE_URL,
  DOWNSTREAM_TLS_TYPE_URL,
  JWT_AUTHN_FILTER,
  RBAC_FILTER,
  PROXY_PROTOCOL_FILTER,
  connectionManagers,
  routeNamesOf,
  clusterRefsOf,
  edsNameOf,
  secretRefsOf,
  jwksClusterRefsOf,
} from './references.js';
