/** The gateway: the vendor-edge end of the tunnel. */
export { Gateway, type GatewayOptions } from './gateway.js';
export { gatewayOptionsSchema, type GatewayConfig, type GatewayConfigInput } from './options.js';
export { ClientAuthenticator, claimAuthorizer, type Authorizer, type ClientIdentity } from './client-auth.js';
export type { AgentCheck, AgentPeer } from './tunnel-acceptor.js';
export type { ServerTls } from './front-door.js';
export { GatewayMetrics } from './metrics.js';
export * as tunnel from './tunnel/index.js';
export { ControlPlaneWatch, ControlPlaneErrorCode, type WatchedCluster } from './control-plane-watch.js';
export { accessAuthorizer, type AccessCheck, type AccessAuthorizerOptions } from './access-authorizer.js';
