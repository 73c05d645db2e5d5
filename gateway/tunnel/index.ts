/** The tunnel protocol: the only part of `gateway/` the agent imports. */
export * from './protocol.js';
export * from './control.js';
export * from './codes.js';
export { PingKeeper, type LivenessOptions } from './liveness.js';
export { relay, type ByteCounter } from './relay.js';
