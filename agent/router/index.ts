/** Public surface of the agent's built-in router (xDS-driven). See README.md for what it supports. */
export { Router, IDEMPOTENT_METHODS } from './router.js';
export type { RouteDecision, RouteFailure, Resolution, RouterConfig, RouteRequest } from './router.js';
export { AdsClient, ROUTER_USER_AGENT } from './ads-client.js';
export type { AdsClientOptions, AdsClientEvents, AdsEvent } from './ads-client.js';
export { compileListener, compileRouteConfig, compileCluster, compileAssignment, RETRY_ON } from './compile.js';
export type { RetrySpec, CompiledCluster, Endpoint, UpstreamScheme } from './compile.js';
export type { Problem } from './fields.js';
export { compileRe2 } from './regex.js';
export { staticSnapshot, clusterNameOf, DEFAULT_LISTENER, DEFAULT_ROUTE_CONFIG } from './static-snapshot.js';
export type { StaticRoute, StaticSnapshotOptions } from './static-snapshot.js';
export { StreamRouting, ROUTER_ERROR } from './stream-routing.js';
export type { StreamRoute, StreamRouteResult } from './stream-routing.js';
export { RouterProxy } from './http-proxy.js';
export type { ProxyOptions } from './http-proxy.js';
export { AgentXds } from './agent-xds.js';
export type { AgentXdsOptions } from './agent-xds.js';
