/**
 * `tether control --config F`: the file (YAML or JSON) and its schema. Relative paths are taken
 * from the file's folder. The KEK comes from `store.keyFile`, else `TETHER_CONTROL_KEK`.
 *
 * ```yaml
 * org: acme
 * store: { path: ./control.db, keyFile: ./control-kek.json }
 * grpc: { host: 127.0.0.1, port: 7443, tls: { cert: ./server.pem, key: ./server-key.pem } }
 * http: { host: 127.0.0.1, port: 7080 }
 * auth:
 *   issuers:
 *     - { issuer: "https://login.example.com", audience: tether }
 * bootstrapAdmins: [alice@example.com]
 * identity: { caDir: ./ca }        # serve the workload identity exchange
 * ```
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { getErrorMessage, TetherError } from '../common/errors.js';
import { INVALID_OPTIONS, parseOptions } from '../common/options.js';

const tlsSchema = z.object({ cert: z.string().min(1), key: z.string().min(1) });

const listenerSchema = (port: number) =>
  z.object({
    host: z.string().default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(port),
    tls: tlsSchema.optional(),
  });

export const controlConfigSchema = z.object({
  org: z.string().min(1).default('default'),
  store: z.object({
    path: z.string().min(1),
    keyFile: z.string().min(1).optional(),
    /** How often the key file is re-read (new KEKs, a new primary); default 10 s. */
    keyReloadMs: z.number().int().min(100).default(10_000),
  }),
  grpc: listenerSchema(7443).default({ host: '127.0.0.1', port: 7443 }),
  http: listenerSchema(7080).extend({ enabled: z.boolean().default(true) }).default({ host: '127.0.0.1', port: 7080, enabled: true }),
  auth: z.object({
    issuers: z
      .array(
        z.object({
          issuer: z.string().min(1),
          audience: z.string().min(1),
          groupsClaim: z.string().optional(),
          /** A JWKS file instead of discovery. */
          jwksFile: z.string().optional(),
          algorithms: z.array(z.string()).optional(),
        }),
      )
      .min(1),
  }),
  /** Subjects granted org Admin at start (idempotent). */
  bootstrapAdmins: z.array(z.string().min(1)).default([]),
  /** The workload identity exchange: the CA (`tether certs init` folder) that signs agents' certificates. */
  identity: z.object({ caDir: z.string().min(1), certificateTtlMs: z.number().int().positive().optional() }).optional(),
  /**
   * The agents' channel listener: mutual TLS, client certificates from the identity CA. Needs
   * `identity`. Without `tls`, a server certificate for `host` (and `dnsNames`) is issued from that CA.
   */
  agents: z
    .object({
      host: z.string().default('127.0.0.1'),
      port: z.number().int().min(0).max(65535).default(7444),
      tls: tlsSchema.optional(),
      dnsNames: z.array(z.string()).default(['localhost']),
      heartbeatIntervalMs: z.number().int().min(100).default(10_000),
      leaseMs: z.number().int().min(100).default(30_000),
      pollMs: z.number().int().min(50).default(2_000),
      capacity: z.number().int().min(1).default(4),
    })
    .optional(),
  /** Operators' /metrics, /healthz, /readyz (loopback by default). */
  admin: z.object({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(0) }).optional(),
  /** Accept file:// input/output URIs (dev only). */
  allowFileUris: z.boolean().default(false),
  /** The gateways' watch: how often open streams re-read the list, so changes other replicas made on the same store reach them (ms). */
  gatewayWatch: z.object({ pollMs: z.number().int().min(100).default(5_000) }).default({ pollMs: 5_000 }),
  scheduler: z.object({ enabled: z.boolean().default(true), maxWaitMs: z.number().int().min(100).default(30_000) }).default({ enabled: true, maxWaitMs: 30_000 }),
  /**
   * The operator console under `/console/` on the JSON/HTTP API's port (control/console/). Its
   * tunnels page reads each gateway replica's metrics from `gateways` (the control plane has no
   * other way to know them); `tether dev` adds its in-process gateway by itself.
   */
  console: z
    .object({
      enabled: z.boolean().default(true),
      refreshMs: z.number().int().min(250).max(60_000).default(2_000),
      sampleMs: z.number().int().min(1_000).max(300_000).default(15_000),
      sessionTtlMs: z.number().int().min(60_000).max(7 * 24 * 3_600_000).default(8 * 3_600_000),
      gateways: z.array(z.object({ name: z.string().min(1).max(128), metricsUrl: z.url({ protocol: /^https?$/ }) })).default([]),
    })
    .default({ enabled: true, refreshMs: 2_000, sampleMs: 15_000, sessionTtlMs: 8 * 3_600_000, gateways: [] }),
});

export type ControlConfig = z.output<typeof controlConfigSchema>;
export type ControlConfigInput = z.input<typeof controlConfigSchema>;

export function parseControlConfig(input: unknown, baseDir = process.cwd()): ControlConfig {
  const config = parseOptions(controlConfigSchema, input, 'control');
  const at = (path: string): string => resolve(baseDir, path);
  return {
    ...config,
    store: { ...config.store, path: config.store.path === ':memory:' ? ':memory:' : at(config.store.path), keyFile: config.store.keyFile === undefined ? undefined : at(config.store.keyFile) },
    grpc: { ...config.grpc, tls: config.grpc.tls === undefined ? undefined : { cert: at(config.grpc.tls.cert), key: at(config.grpc.tls.key) } },
    http: { ...config.http, tls: config.http.tls === undefined ? undefined : { cert: at(config.http.tls.cert), key: at(config.http.tls.key) } },
    auth: { issuers: config.auth.issuers.map((issuer) => ({ ...issuer, jwksFile: issuer.jwksFile === undefined ? undefined : at(issuer.jwksFile) })) },
    identity: config.identity === undefined ? undefined : { ...config.identity, caDir: at(config.identity.caDir) },
    agents: config.agents === undefined ? undefined : { ...config.agents, tls: config.agents.tls === undefined ? undefined : { cert: at(config.agents.tls.cert), key: at(config.agents.tls.key) } },
  };
}

export async function loadControlConfig(path: string): Promise<ControlConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (reason) {
    throw new TetherError(INVALID_OPTIONS, `cannot read config ${path}: ${getErrorMessage(reason)}`, { cause: reason });
  }
  let input: unknown;
  try {
    input = parseYaml(text);
  } catch (reason) {
    throw new TetherError(INVALID_OPTIONS, `config ${path} is not YAML/JSON: ${getErrorMessage(reason)}`, { cause: reason });
  }
  return parseControlConfig(input, dirname(resolve(path)));
}
