/** Public surface of the xDS component. */
export { XdsServer, DEFAULT_GROUP } from './server.js';
export type { XdsServerOptions, XdsServerEvents, PublishOptions, ListenOptions } from './server.js';
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
