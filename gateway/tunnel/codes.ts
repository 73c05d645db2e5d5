/**
 * Stable error codes of the tunnel's data path and the HTTP status each one answers with. The
 * code travels in the `tether-error` response header (and in the gateway's error metric).
 */
export const TunnelCodes = {
  /** The request names no cluster, or one the gateway does not know. */
  UNKNOWN_CLUSTER: 404,
  /** No bearer token, or one that failed verification. */
  UNAUTHENTICATED: 401,
  /** The identity may not reach that cluster. */
  FORBIDDEN: 403,
  /**
   * The cluster is in sovereign mode: reached only through the customer's own load balancer,
   * never through this gateway. Final (no Retry-After; 403, which clients do not retry, rather
   * than 421, which they may); the `tether-cluster-mode: sovereign` field names the mode.
   */
  CLUSTER_SOVEREIGN: 403,
  /** No live tunnel connection for the cluster on this replica. */
  NO_TUNNEL: 503,
  /** Every tunnel connection of the cluster is at the agent's concurrent-stream limit. */
  TUNNEL_BUSY: 503,
  /** The agent could not connect to the upstream (refused, unreachable, TLS failure). */
  UPSTREAM_REFUSED: 502,
  /** The upstream broke the exchange (reset, protocol error) before a response. */
  UPSTREAM_ERROR: 502,
  /** The upstream did not answer in time (agent side). */
  UPSTREAM_TIMEOUT: 504,
  /** No response headers came back through the tunnel in time (gateway side). */
  TUNNEL_TIMEOUT: 504,
  /** The tunnel stream was reset or its connection lost before a response. */
  TUNNEL_STREAM_RESET: 502,
  /** The request body exceeds the configured limit. */
  BODY_TOO_LARGE: 413,
  /** The request header block exceeds the configured limit. */
  HEADERS_TOO_LARGE: 431,
  /** An HTTP/1.1 client did not complete a request head within `clientHeadersTimeoutMs`. */
  HEADERS_TIMEOUT: 408,
  /** The client's identity was revoked at this gateway (`Gateway.revokeSubjects`). */
  IDENTITY_REVOKED: 401,
  /** The token that opened a bound connection expired; the connection closes. */
  BINDING_EXPIRED: 401,
  /**
   * A request on a bound HTTP/2 connection for another authority, token, cluster or route than
   * the one the connection was bound to: 421, which clients retry on a new connection (RFC 9110
   * §15.5.20), where it is admitted on its own.
   */
  BINDING_MISMATCH: 421,
  /** Malformed request (bad HTTP/1.1 framing, bad CONNECT target, …). */
  BAD_REQUEST: 400,
  /** The agent has no route for the request path. */
  NO_ROUTE: 404,
  /** A CONNECT target the agent's route table does not allow. */
  TCP_TARGET_FORBIDDEN: 403,
  /** The agent's router has no endpoint for the route's cluster (unknown cluster or none healthy). */
  NO_UPSTREAM: 503,
  /** The agent's built-in router has no configuration yet. */
  ROUTER_NOT_READY: 503,
} as const;

export type TunnelCode = keyof typeof TunnelCodes;

export function statusOf(code: string): number {
  return (TunnelCodes as Record<string, number>)[code] ?? 502;
}

/** Codes the gateway sends in a `refused` control message when it rejects an agent's handshake. */
export const RefusalCodes = {
  /** The SPIFFE id names a cluster the gateway does not know. */
  CLUSTER_NOT_REGISTERED: 'CLUSTER_NOT_REGISTERED',
  /** The gateway is draining; try another replica or later. */
  GATEWAY_DRAINING: 'GATEWAY_DRAINING',
  /** The cluster is in sovereign mode: this gateway carries no tunnel for it. */
  CLUSTER_SOVEREIGN: 'CLUSTER_SOVEREIGN',
  /** Peer verification failed for a reason without a more specific code. */
  AGENT_REFUSED: 'AGENT_REFUSED',
} as const;
