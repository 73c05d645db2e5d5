/**
 * The declarative file `tether xds --config F` serves: services (a cluster and its endpoints),
 * route configurations (virtual hosts, routes, weights), listeners (Envoy listeners with an
 * address, or gRPC API listeners without one). It is parsed (YAML), checked field by field, turned
 * into a snapshot and published; the file is watched and every edit goes through the same checks.
 * A bad edit is refused with a message naming file, resource and field, and the last good
 * configuration keeps serving.
 *
 * ```yaml
 * services:
 *   - name: web
 *     endpoints: [{ address: 10.0.0.7, port: 8080 }]
 * routes:
 *   - name: main
 *     virtualHosts:
 *       - name: all
 *         domains: ["*"]
 *         routes:
 *           - prefix: /
 *             weighted: [{ cluster: web, weight: 90 }, { cluster: web-canary, weight: 10 }]
 * listeners:
 *   - { name: ingress, address: 0.0.0.0, port: 10000, routes: main }   # Envoy
 *   - { name: "web.internal:80", routes: main }                         # proxyless gRPC (xds:///web.internal:80)
 * ```
 */
import { EventEmitter } from 'node:events';
import { watch } from 'node:fs';
import type { FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { TetherError, getErrorMessage } from '../common/errors.js';
import { once } from '../common/lifecycle.js';
import type { Closable } from '../common/lifecycle.js';
import type { Logger } from '../common/log.js';
import { parseOptions } from '../common/options.js';
import { apiListener, edsCluster, httpListener, loadAssignment, routeConfiguration } from './builders.js';
import type { XdsServer } from './server.js';
import type { Snapshot, SnapshotInput } from './snapshot.js';

const name = z.string().min(1);
const port = z.number().int().min(1).max(65535);

const RouteSchema = z
  .strictObject({
    prefix: z.string().optional(),
    path: z.string().optional(),
    cluster: name.optional(),
    weighted: z.array(z.strictObject({ cluster: name, weight: z.number().int().min(0) })).min(1).optional(),
    timeoutMs: z.number().int().min(0).optional(),
  })
  .refine((r) => (r.cluster === undefined) !== (r.weighted === undefined), { message: 'give exactly one of cluster or weighted' })
  .refine((r) => !(r.prefix !== undefined && r.path !== undefined), { message: 'give prefix or path, not both' });

export const XdsConfigSchema = z.strictObject({
  services: z
    .array(
      z.strictObject({
        name,
        lbPolicy: z.enum(['ROUND_ROBIN', 'RING_HASH', 'LEAST_REQUEST', 'RANDOM', 'MAGLEV']).optional(),
        connectTimeoutMs: z.number().int().min(0).optional(),
        endpoints: z.array(z.strictObject({ address: z.string().min(1), port, weight: z.number().int().min(1).optional() })),
      }),
    )
    .default([]),
  routes: z
    .array(
      z.strictObject({
        name,
        virtualHosts: z.array(z.strictObject({ name, domains: z.array(z.string().min(1)).min(1), routes: z.array(RouteSchema).min(1) })).min(1),
      }),
    )
    .default([]),
  listeners: z
    .array(z.strictObject({ name, address: z.string().min(1).optional(), port: port.optional(), routes: name }))
    .default([]),
});

export type XdsConfig = z.output<typeof XdsConfigSchema>;

/** Parse and check file text; throws `XDS_CONFIG_INVALID` naming the file and field. */
export function parseXdsConfig(text: string, file = 'config'): XdsConfig {
  let data: unknown;
  try {
    data = parseYaml(text) ?? {};
  } catch (reason) {
    throw new TetherError('XDS_CONFIG_INVALID', `${file}: not valid YAML: ${getErrorMessage(reason)}`, { cause: reason });
  }
  try {
    const config = parseOptions(XdsConfigSchema, data, 'config');
    for (const [i, listener] of config.listeners.entries()) {
      if ((listener.address === undefined) !== (listener.port === undefined)) {
        throw new TetherError('XDS_CONFIG_INVALID', `config.listeners[${i}]: give both address and port (an Envoy listener) or neither (a gRPC API listener)`);
      }
    }
    return config;
  } catch (reason) {
    const error = TetherError.from(reason);
    throw new TetherError('XDS_CONFIG_INVALID', `${file}: ${error.rawMessage}`, { cause: reason });
  }
}

export function configToSnapshotInput(config: XdsConfig): SnapshotInput {
  return {
    clusters: config.services.map((s) => edsCluster({ name: s.name, ...(s.lbPolicy ? { lbPolicy: s.lbPolicy } : {}), ...(s.connectTimeoutMs === undefined ? {} : { connectTimeoutMs: s.connectTimeoutMs }) })),
    endpoints: config.services.map((s) => loadAssignment(s.name, s.endpoints)),
    routes: config.routes.map((r) =>
      routeConfiguration(
        r.name,
        r.virtualHosts.map((v) => ({
          name: v.name,
          domains: v.domains,
          routes: v.routes.map((route) => ({
            ...(route.path === undefined ? { prefix: route.prefix ?? '/' } : { path: route.path }),
            ...(route.cluster === undefined ? {} : { cluster: route.cluster }),
            ...(route.weighted === undefined ? {} : { weighted: route.weighted }),
            ...(route.timeoutMs === undefined ? {} : { timeoutMs: route.timeoutMs }),
          })),
        })),
      ),
    ),
    listeners: config.listeners.map((l) => (l.address !== undefined && l.port !== undefined ? httpListener(l.name, l.address, l.port, l.routes) : apiListener(l.name, l.routes))),
  };
}

export interface ConfigFileEvents {
  /** A new configuration is serving. */
  loaded: [Snapshot];
  /** An edit was refused; the previous configuration keeps serving. */
  rejected: [TetherError];
}

/**
 * Serves `file` through `server`: `start()` loads it (throwing if the first load fails), then
 * watches it and reloads on change.
 */
export class ConfigFileSource extends EventEmitter<ConfigFileEvents> implements Closable {
  readonly file: string;
  #watcher: FSWatcher | null = null;
  #timer: NodeJS.Timeout | null = null;
  #loading: Promise<void> = Promise.resolve();
  #lastText: string | null = null;

  constructor(
    file: string,
    private readonly server: XdsServer,
    private readonly logger: Logger,
    /** Quiet period after a change event before reading (editors write in several steps). */
    private readonly settleMs = 50,
  ) {
    super();
    this.file = resolve(file);
  }

  /** Read, check and publish the file. Throws on a bad file (and publishes nothing). */
  async load(): Promise<Snapshot> {
    const text = await readFile(this.file, 'utf8').catch((reason: unknown) => {
      throw new TetherError('XDS_CONFIG_UNREADABLE', `cannot read ${this.file}: ${getErrorMessage(reason)}`, { cause: reason });
    });
    const config = parseXdsConfig(text, this.file);
    let snapshot: Snapshot;
    try {
      snapshot = this.server.setSnapshot(configToSnapshotInput(config));
    } catch (reason) {
      const error = TetherError.from(reason);
      throw new TetherError(error.code, `${this.file}: ${error.rawMessage}`, { cause: reason, ...(error.details ? { details: { ...error.details } } : {}) });
    }
    this.#lastText = text;
    return snapshot;
  }

  async start(): Promise<Snapshot> {
    const snapshot = await this.load();
    this.emit('loaded', snapshot);
    // Watch the directory: editors often replace the file (rename), which ends a file watch.
    this.#watcher = watch(dirname(this.file), (_event, changed) => {
      if (changed !== null && changed !== basename(this.file)) return;
      if (this.#timer !== null) clearTimeout(this.#timer);
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.#loading = this.#loading.then(() => this.#reload());
      }, this.settleMs);
    });
    return snapshot;
  }

  async #reload(): Promise<void> {
    const text = await readFile(this.file, 'utf8').catch(() => null);
    if (text === null || text === this.#lastText) return;
    try {
      const snapshot = await this.load();
      this.logger.info({ file: this.file }, 'xDS config reloaded');
      this.emit('loaded', snapshot);
    } catch (reason) {
      const error = TetherError.from(reason);
      this.#lastText = text; // do not re-report the same bad text
      this.logger.error({ file: this.file, code: error.code, problem: error.rawMessage }, 'xDS config edit refused; the last good configuration keeps serving');
      this.emit('rejected', error);
    }
  }

  drain = once(async (): Promise<void> => this.close());

  close = once(async (): Promise<void> => {
    this.#watcher?.close();
    this.#watcher = null;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    await this.#loading;
  });
}
