/** The gateway's options, validated once at start (`parseOptions`). */
import { z } from 'zod';
import { DEFAULT_TUNNEL_LIMITS } from './tunnel/index.js';
import { DEFAULT_TOKEN_CACHE } from '../common/verified-token-cache.js';

const address = z.object({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(0) });

const issuer = z
  .object({
    /** Exact `iss`. */
    issuer: z.string().min(1),
    /** Accepted `aud` values (at least one must match). */
    audiences: z.array(z.string()).min(1),
    /** Remote JWKS (fetched and cached by jose). */
    jwksUrl: z.string().url().optional(),
    /** Static public keys as a JWK set. */
    jwks: z.object({ keys: z.array(z.record(z.string(), z.unknown())).min(1) }).optional(),
    algorithms: z.array(z.string()).default(['RS256', 'ES256', 'EdDSA', 'PS256']),
    clockToleranceSec: z.number().min(0).max(300).default(30),
  })
  .refine((i) => (i.jwksUrl === undefined) !== (i.jwks === undefined), { message: 'set exactly one of jwksUrl or jwks' });

export const gatewayOptionsSchema = z.object({
  id: z.string().min(1).default(() => `gw-${process.pid}-${Math.random().toString(36).slice(2, 8)}`),
  /** TLS port: clients (ALPN h2, http/1.1) and, unless `agentListen` is set, agents (ALPN tether-tunnel/1). */
  listen: address.prefault({}),
  /**
   * A TLS port for agents alone (ALPN tether-tunnel/1, client certificates required). When set,
   * `listen` serves clients only and stops asking them for certificates (browsers may prompt).
   */
  agentListen: address.optional(),
  /** Optional cleartext port for local use: HTTP/1.1 and h2c prior knowledge. */
  plainListen: address.optional(),
  /** `host:port` agents should dial to reach this replica (default: the agent port's address, else the TLS port's). */
  advertiseAddress: z.string().optional(),
  /** The other replicas, announced to agents on the control stream. */
  replicas: z.array(z.object({ id: z.string(), address: z.string() })).default([]),
  /** Clients reach cluster `c` at `c.<baseDomain>`. */
  baseDomain: z.string().optional(),
  /** Also accept the `tether-cluster` request header for routing (local use). */
  allowClusterHeader: z.boolean().default(true),
  /** Registered cluster ids: agents of other clusters are refused, requests for others get 404. */
  clusters: z.array(z.string().min(1)).default([]),
  /**
   * Clusters in sovereign mode (README: sovereign mode, the switch): their agents' tunnels are
   * refused at the handshake and their requests answered 403 `CLUSTER_SOVEREIGN`.
   * `Gateway.setSovereignClusters` replaces the list at run time.
   */
  sovereignClusters: z.array(z.string().min(1)).default([]),
  /**
   * Follow the control plane's cluster list and modes (gateway/control-plane-watch.ts): on every
   * list it sends, `clusters` is replaced by its clusters and `sovereignClusters` by its sovereign
   * ones plus those set here. Until the first list the options' lists apply; while disconnected the
   * last list stays (fail-static). The bearer token is read from `tokenFile` at every connect (or
   * comes from `GatewayOptions.controlPlaneToken`); it needs `cluster.watch` on each of `orgs`.
   */
  controlPlane: z
    .object({
      /** The control plane's gRPC API: `https://host:port` (TLS), or `http://` on a loopback host only. */
      url: z.url({ protocol: /^https?$/ }),
      orgs: z.array(z.string().min(1)).min(1),
      tokenFile: z.string().min(1).optional(),
      /** PEM roots for the control plane's certificate (default: Node's). */
      caFile: z.string().min(1).optional(),
      backoff: z
        .object({ initialDelayMs: z.number().int().min(1).default(500), maxDelayMs: z.number().int().min(1).default(30_000) })
        .refine((b) => b.maxDelayMs >= b.initialDelayMs, { message: 'maxDelayMs must be >= initialDelayMs' })
        .prefault({}),
    })
    .optional(),
  /** SPIFFE trust domain agent certificates must name. */
  trustDomain: z.string().min(1),
  /** Revoked certificate serials (lowercase hex). */
  revokedSerials: z.array(z.string()).default([]),
  auth: z.discriminatedUnion('mode', [
    z.object({
      mode: z.literal('jwt'),
      issuers: z.array(issuer).min(1),
      clustersClaim: z.string().default('clusters'),
      /** Verified tokens remembered until their `exp`, at most `maxAgeMs` (common/verified-token-cache.ts); `maxEntries: 0` turns it off. */
      tokenCache: z
        .object({
          maxEntries: z.number().int().min(0).default(DEFAULT_TOKEN_CACHE.maxEntries),
          maxAgeMs: z.number().int().min(0).max(3_600_000).default(DEFAULT_TOKEN_CACHE.maxAgeMs),
          maxTokenBytes: z.number().int().min(0).default(DEFAULT_TOKEN_CACHE.maxTokenBytes),
        })
        .prefault({}),
    }),
    /** Local development only: every request is let through as `anonymous`. */
    z.object({ mode: z.literal('none') }),
  ]),
  limits: z
    .object({
      streamWindowBytes: z.number().int().min(65_535).max(2 ** 31 - 1).default(DEFAULT_TUNNEL_LIMITS.streamWindowBytes),
      connectionWindowBytes: z.number().int().min(65_535).max(2 ** 31 - 1).default(DEFAULT_TUNNEL_LIMITS.connectionWindowBytes),
      maxConcurrentStreams: z.number().int().min(1).default(DEFAULT_TUNNEL_LIMITS.maxConcurrentStreams),
      maxHeaderListBytes: z.number().int().min(1024).default(DEFAULT_TUNNEL_LIMITS.maxHeaderListBytes),
      maxSessionMemoryMiB: z.number().int().min(1).default(DEFAULT_TUNNEL_LIMITS.maxSessionMemoryMiB),
      /** Client request header block limit (431 above it). */
      maxClientHeaderBytes: z.number().int().min(1024).default(32 * 1024),
      /** Client request body limit (413 above it); unlimited when absent. */
      maxRequestBodyBytes: z.number().int().min(0).optional(),
      /** Concurrent streams per client HTTP/2 connection. */
      maxClientStreams: z.number().int().min(1).default(250),
    })
    .refine((l) => l.connectionWindowBytes > l.streamWindowBytes, { message: 'connectionWindowBytes must exceed streamWindowBytes' })
    .prefault({}),
  /**
   * HTTP/1.1 client connections: `connection` (default) binds a connection to one tunnel stream
   * once its first request is authorized and the agent's route allows it (README: connection
   * binding); `request` carries every request as its own tunnel stream.
   */
  binding: z.enum(['connection', 'request']).default('connection'),
  /** A bound connection's authorization is asked again at the first request after this long. */
  bindingReauthorizeMs: z.number().int().min(0).default(10_000),
  /** An idle HTTP/1.1 client connection (keep-alive, bound or not) is closed after this long. */
  clientKeepAliveTimeoutMs: z.number().int().min(1).default(5_000),
  /** An HTTP/1.1 client connection gets this long to send a complete request head (408 HEADERS_TIMEOUT after it). */
  clientHeadersTimeoutMs: z.number().int().min(1).default(30_000),
  /** An HTTP/2 client session with no activity for this long is closed. */
  clientIdleTimeoutMs: z.number().int().min(1).default(120_000),
  /** Time allowed for response headers to come back through the tunnel (504 after it). */
  responseTimeoutMs: z.number().int().min(1).default(60_000),
  pingIntervalMs: z.number().int().min(10).default(5_000),
  pingTimeoutMs: z.number().int().min(10).default(5_000),
  /** Retry-After for 503 NO_TUNNEL answers, seconds. */
  noTunnelRetryAfterSec: z.number().int().min(0).default(1),
  /** Retry delay agents are told when this gateway drains or refuses them, ms. */
  agentRetryAfterMs: z.number().int().min(0).default(1_000),
  admin: address.optional(),
  drainGraceMs: z.number().int().min(0).default(30_000),
});

export type GatewayConfig = z.output<typeof gatewayOptionsSchema>;
export type GatewayConfigInput = z.input<typeof gatewayOptionsSchema>;
