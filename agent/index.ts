/** The agent: the customer-side end of the tunnel. */
export { Agent, type AgentEvent, type AgentEventMap, type AgentOptions, type ModeClaim, type SovereignListenerEvent } from './agent.js';
export { SovereignListenerCode, sovereignOptionsOf } from './sovereign-listener.js';
export { ModeErrorCode, signModeDocument, verifyModeDocument, importCustomerPublicKey, importCustomerPrivateKey, keyThumbprint, MODE_DOCUMENT_TYPE, type ClusterMode, type ModeDocument, type VerifiedModeDocument } from './mode-document.js';
export { FAIL_SAFE_MODE, ModeClaimCode, type ModeAuthority, type ModeChange, type ModeClaimVerdict, type ModeRefusal } from './sovereignty.js';
export { agentOptionsSchema, sovereignListenerSchema, type AgentConfig, type AgentConfigInput, type SovereignListenerConfig } from './options.js';
export { RouteTable, type RouteConfig } from './routes.js';
export { TunnelConnection, type TlsMaterial } from './tunnel-connection.js';
export { AgentMetrics } from './metrics.js';
