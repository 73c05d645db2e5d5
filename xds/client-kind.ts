/**
 * Telling Envoy from proxyless gRPC by the node's user agent (research/xds.md (c), (f)3): Envoy
 * sends `user_agent_name: "envoy"`; gRPC libraries send names beginning with "gRPC"
 * (e.g. "gRPC Node Pure JS", "gRPC C-core", "gRPC Go").
 */
import type { Node } from './gen/envoy/config/core/v3/base_pb.js';

export type ClientKind = 'envoy' | 'grpc' | 'other';

export const CLIENT_KINDS: readonly ClientKind[] = ['envoy', 'grpc', 'other'];

export function clientKindOf(node: Node | undefined): ClientKind {
  const agent = (node?.userAgentName ?? '').toLowerCase();
  if (agent === 'envoy') return 'envoy';
  if (agent.startsWith('grpc')) return 'grpc';
  return 'other';
}

/** Which validation rules apply to a kind: unknown agents are held to Envoy's rules. */
export function rulesFor(kind: ClientKind): 'envoy' | 'grpc' {
  return kind === 'grpc' ? 'grpc' : 'envoy';
}
