/** The agent's options, validated once at start (`parseOptions`). */
import { z } from 'zod';
import { DEFAULT_TUNNEL_LIMITS } from '../gateway/tunnel/index.js';

const limits = z
  .object({
    streamWindowBytes: z.number().int().min(65_535).max(2 ** 31 - 1).default(DEFAULT_TUNNEL_LIMITS.streamWindowBytes),
    connectionWindowBytes: z.number().int().min(65_535).max(2 ** 31 - 1).default(DEFAULT_TUNNEL_LIMITS.connectionWindowBytes),
    maxConcurrentStreams: z.number().int().min(1).default(DEFAULT_TUNNEL_LIMITS.maxConcurrentStreams),
    maxHeaderListBytes: z.number().int().min(1024).default(DEFAULT_TUNNEL_LIMITS.maxHeaderListBytes),
    maxSessionMemoryMiB: z.number().int().min(1).default(DEFAULT_TUNNEL_LIMITS.maxSessionMemoryMiB),
  })
  .refine((l) => l.connectionWindowBytes > l.streamWindowBytes, { message: 'connectionWindowBytes must exceed streamWindowBytes' })
  .prefault({});

export const agentOptionsSchema = z.object({
  /** Seed gateway addresses (`host:port`); more replicas are learned from the control stream. */
  gateways: z.array(z.string().regex(/^(\[[^\]]+\]|[^:\s]+):\d{1,5}$/, 'expected host:port')).min(1),
  /** TLS server name to verify on the gateways' certificates (default: the host of each address). */
  serverName: z.string().optional(),
  connectionsPerGateway: z.number().int().min(1).max(16).default(2),
  /** `binding` (default `connection`): README, connection binding. */
  routes: z
    .array(z.object({ prefix: z.string().startsWith('/'), upstream: z.string(), binding: z.enum(['connection', 'request']).optional(), forwardCredential: z.boolean().optional() }))
    .default([]),
  /** `host:port` targets a CONNECT stream may reach. */
  tcpTargets: z.array(z.string()).default([]),
  upstreamTimeoutMs: z.number().int().min(1).default(30_000),
  /** PEM trust bundle for `https://` upstreams (default: Node's bundled CAs). */
  upstreamCa: z.string().optional(),
  pingIntervalMs: z.number().int().min(10).default(5_000),
  pingTimeoutMs: z.number().int().min(10).default(5_000),
  handshakeTimeoutMs: z.number().int().min(10).default(10_000),
  backoff: z
    .object({
      initialDelayMs: z.number().min(0).default(500),
      multiplier: z.number().min(1).default(1.6),
      maxDelayMs: z.number().min(0).default(30_000),
      jitter: z.number().min(0).max(1).default(0.3),
    })
    .prefault({}),
  limits,
  /** Metrics and health listener; loopback or an in-cluster address only (I1). Omit to disable. */
  admin: z.object({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(0) }).optional(),
  /**
   * The agent's xDS side (agent/router): an embedded xDS server on a loopback address serving
   * `routes` as a snapshot (for the built-in router and an Envoy), and with `useBuiltInRouter`
   * the router that then routes tunnelled streams instead of the static table.
   */
  xds: z
    .object({
      listen: z
        .object({
          host: z.string().refine((h) => /^127\./.test(h) || h === '::1' || h === 'localhost', 'must be a loopback address').default('127.0.0.1'),
          port: z.number().int().min(0).max(65535).default(0),
        })
        .prefault({}),
      useBuiltInRouter: z.boolean().default(true),
    })
    .optional(),
  /** Drain grace on shutdown. */
  drainGraceMs: z.number().int().min(0).default(30_000),
  /**
   * The customer's approval of the cluster's mode (README: sovereign mode, the switch). Absent:
   * the agent is in tunnel mode, as before. Present: the mode is the customer-signed document in
   * `modeFile`, verified with the pinned public key; with no valid document the agent is sovereign
   * (opens no tunnel) until one says `tunnel`. The control plane can change neither.
   */
  sovereignty: z
    .object({
      /** The cluster this agent serves; a document for another cluster is refused. */
      clusterId: z.string().min(1),
      /** The customer's public key: SPKI PEM, or a public JWK (Ed25519 or P-256). */
      customerKey: z.union([z.string().min(1), z.record(z.string(), z.unknown())]).optional(),
      /** Or a file holding it (PEM or JWK JSON). */
      customerKeyFile: z.string().min(1).optional(),
      /** The signed mode document (compact JWS), written by the customer's operator. */
      modeFile: z.string().min(1),
      /** Where the highest accepted `seq` is kept across restarts (the replay guard); default: memory only. */
      stateFile: z.string().min(1).optional(),
      /** The mode file is re-read this often besides file-change notices. */
      pollMs: z.number().int().min(10).max(600_000).default(2_000),
      /** Grace for in-flight streams when a switch to sovereign drains the tunnels. */
      drainGraceMs: z.number().int().min(0).default(10_000),
    })
    .refine((s) => (s.customerKey === undefined) !== (s.customerKeyFile === undefined), { message: 'set exactly one of customerKey or customerKeyFile' })
    .optional(),
});

export type AgentConfig = z.output<typeof agentOptionsSchema>;
export type AgentConfigInput = z.input<typeof agentOptionsSchema>;
