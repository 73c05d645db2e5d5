/**
 * prom-client plumbing. Every component instance owns its own `Registry` (never the global
 * default, which throws on duplicate names when two gateways share a process, as in tests).
 */
import { Registry, collectDefaultMetrics } from 'prom-client';

export interface RegistryOptions {
  /** Labels added to every series of this registry, e.g. `{ component: 'gateway', instance: 'gw-1' }`. */
  defaultLabels?: Record<string, string>;
  /** Also register Node process metrics (CPU, heap, event-loop lag). Default false. */
  processMetrics?: boolean;
}

export function createRegistry(options: RegistryOptions = {}): Registry {
  const registry = new Registry();
  if (options.defaultLabels) registry.setDefaultLabels(options.defaultLabels);
  if (options.processMetrics) collectDefaultMetrics({ register: registry, prefix: 'tether_' });
  return registry;
}

/** Merge several registries into one scrape (for `tether dev`, which runs every part in one process). */
export function mergeRegistries(registries: Registry[]): Registry {
  return Registry.merge(registries);
}
