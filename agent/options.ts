/** The agent's options, validated once at start (`parseOptions`). */
import { isIP } from 'node:net';
import { z } from 'zod';
import { DEFAULT_TUNNEL_LIMITS } from '../gateway/tunnel/index.js';
import type { PermissionSpec, PrincipalSpec } from '../xds/builders.js';
import { listenAddressProblem } from './router/listen-address.js';

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

/** `a.b.c.d/n` or `v6::/n` (or a bare address: one host). */
function isCidr(block: string): boolean {
  const slash = block.indexOf('/');
  const address = slash < 0 ? block : block.slice(0, slash);
  const family = isIP(address);
  if (family === 0) return false;
  if (slash < 0) return true;
  const bits = block.slice(slash + 1);
  return /^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128);
}

const cidr = z.string().refine(isCidr, 'expected an IP address or CIDR block (10.0.0.0/8)');
const claimPath = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

/** RBAC principals as xds/builders.ts `PrincipalSpec` (JWT claims, client and peer addresses, and/or). */
const principalSpec: z.ZodType<PrincipalSpec> = z.lazy(() =>
  z.union([
    z.strictObject({ any: z.literal(true) }),
    z.strictObject({ claim: claimPath, equals: z.string() }),
    z.strictObject({ claim: claimPath, includes: z.string() }),
    z.strictObject({ remoteIp: cidr }),
    z.strictObject({ directRemoteIp: cidr }),
    z.strictObject({ and: z.array(principalSpec).min(1) }),
    z.strictObject({ or: z.array(principalSpec).min(1) }),
  ]),
);

const permissionSpec: z.ZodType<PermissionSpec> = z.union([z.strictObject({ any: z.literal(true) }), z.strictObject({ pathPrefix: z.string().startsWith('/') }), z.strictObject({ path: z.string().startsWith('/') })]);

const staticRoute = z.strictObject({ prefix: z.string().startsWith('/'), upstream: z.string().min(1) });

/**
 * The sovereign listener the agent serves while the customer's mode is sovereign (README:
 * sovereign mode, the listener), as the customer's operator sets it: where it listens, the
 * customer's certificate, the customer's identity provider, RBAC, PROXY protocol from the load
 * balancer, and its routes. Compiled into the xDS listener of xds/builders.ts `sovereignListener`.
 */
export const sovereignListenerSchema = z.strictObject({
  /** The xDS listener's name (its route configuration is `<name>-routes`). */
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, "_", "." and "-" only').default('sovereign'),
  /** Loopback or an in-cluster (private) address literal, never a wildcard: the load balancer's side only. */
  address: z.string().superRefine((host, context) => {
    const problem = listenAddressProblem(host);
    if (problem !== null) context.addIssue({ code: 'custom', message: problem });
  }),
  /** 0 picks a free port (`agent.sovereignAddress` tells which). */
  port: z.number().int().min(0).max(65535).default(0),
  /** The customer's server certificate (PEM chain) and key files; read when the listener starts. */
  tls: z.strictObject({ certFile: z.string().min(1), keyFile: z.string().min(1), minVersion: z.enum(['TLSv1_2', 'TLSv1_3']).default('TLSv1_2') }),
  /** The customer's identity provider: tokens must carry this issuer and one of the audiences. */
  jwt: z.strictObject({
    provider: z.string().min(1).default('customer-idp'),
    issuer: z.string().min(1),
    audiences: z.array(z.string().min(1)).min(1),
    /** A JWKS URL (fetched and cached), a JWKS file read when the listener starts, or the JWKS itself. */
    jwks: z.union([
      z.strictObject({ uri: z.url({ protocol: /^https?$/ }), timeoutMs: z.number().int().min(1).optional(), cacheDurationMs: z.number().int().min(0).optional() }),
      z.strictObject({ file: z.string().min(1) }),
      z.strictObject({ keys: z.array(z.record(z.string(), z.unknown())).min(1) }),
    ]),
    /** Pass the verified token upstream (default: the authorization header is removed). */
    forward: z.boolean().default(false),
    claimToHeaders: z.array(z.strictObject({ claim: z.string().min(1), header: z.string().regex(/^[a-z0-9-]+$/, 'a lower-case header name') })).default([]),
    /** Path prefixes that require a valid token. */
    requirePrefixes: z.array(z.string().startsWith('/')).min(1).default(['/']),
    /** At most 60 s: what the router accepts (a larger skew would be NACKed when the listener starts). */
    clockSkewSeconds: z.number().int().min(0).max(60).optional(),
    /** Verified tokens the router remembers (jwt_cache_config; default 100; 0 verifies every request). */
    cacheSize: z.number().int().min(0).max(100_000).optional(),
  }),
  /** ALLOW (default): a request no policy matches is refused 403; DENY: one a policy matches is. */
  rbac: z.strictObject({
    action: z.enum(['ALLOW', 'DENY']).default('ALLOW'),
    policies: z.record(z.string().min(1), z.strictObject({ principals: z.array(principalSpec).min(1), permissions: z.array(permissionSpec).min(1).optional() })),
  }),
  /** PROXY protocol from the load balancer: required by default (the real client address for RBAC and the access log). */
  proxyProtocol: z
    .strictObject({ required: z.boolean().default(true), versions: z.array(z.enum(['v1', 'v2'])).min(1).default(['v1', 'v2']) })
    .prefault({}),
  /** `tunnel`: the same routes as the tunnel side (`routes`); or routes of its own. */
  routes: z.union([z.literal('tunnel'), z.array(staticRoute).min(1)]).default('tunnel'),
  /** The built-in router's front: deadlines and limits (agent/router/sovereign-front.ts). */
  front: z
    .strictObject({
      proxyHeaderTimeoutMs: z.number().int().min(1),
      handshakeTimeoutMs: z.number().int().min(1),
      idleTimeoutMs: z.number().int().min(1),
      readyTimeoutMs: z.number().int().min(1),
      defaultTimeoutMs: z.number().int().min(1),
      maxHeaderBytes: z.number().int().min(1024),
    })
    .partial()
    .optional(),
});

export type SovereignListenerConfig = z.output<typeof sovereignListenerSchema>;

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
      /** Grace for in-flight streams when a switch to sovereign drains the tunnels (and a switch to tunnel the sovereign listener). */
      drainGraceMs: z.number().int().min(0).default(10_000),
      /**
       * The sovereign listener the agent serves itself while the mode is sovereign (fail-safe
       * included) and stops on a signed switch to tunnel. Needs `xds` (the built-in router serves
       * it; without `useBuiltInRouter` it is published over ADS for an Envoy).
       */
      listener: sovereignListenerSchema.optional(),
    })
    .refine((s) => (s.customerKey === undefined) !== (s.customerKeyFile === undefined), { message: 'set exactly one of customerKey or customerKeyFile' })
    .optional(),
}).superRefine((options, context) => {
  if (options.sovereignty?.listener !== undefined && options.xds === undefined) {
    context.addIssue({ code: 'custom', path: ['sovereignty', 'listener'], message: "needs the xds option: the agent's xDS server publishes the listener and its built-in router (or an Envoy) serves it" });
  }
});

export type AgentConfig = z.output<typeof agentOptionsSchema>;
export type AgentConfigInput = z.input<typeof agentOptionsSchema>;
