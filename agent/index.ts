/** The agent: the customer-side end of the tunnel. */
export { Agent, type AgentEvent, type AgentOptions } from './agent.js';
export { agentOptionsSchema, type AgentConfig, type AgentConfigInput } from './options.js';
export { RouteTable, type RouteConfig } from './routes.js';
export { TunnelConnection, type TlsMaterial } from './tunnel-connection.js';
export { AgentMetrics } from './metrics.js';
