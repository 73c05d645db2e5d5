/** The operator console (issue 11): pages and actions served by the control plane under `/console/`. */
export { OperatorConsole, FRAGMENT_HEADER } from './operator-console.js';
export type { ConsoleSettings, OperatorConsoleOptions } from './operator-console.js';
export { AgentTracker, REVOKE_OPERATION, REINSTATE_OPERATION } from './agent-tracker.js';
export type { AgentView } from './agent-tracker.js';
export { GatewayMetricsBoard, registrySource, urlSource } from './gateway-metrics.js';
export type { GatewayMetricsSource, ReplicaReading } from './gateway-metrics.js';
export { ConsoleErrorCode } from './errors.js';
export { CONTENT_SECURITY_POLICY, SECURITY_HEADERS } from './security-headers.js';
export { CSRF_HEADER, LOGIN_NONCE_COOKIE, SESSION_COOKIE } from './sessions.js';
