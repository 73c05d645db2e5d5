/**
 * prom-client plumbing. Every component instance owns its own `Registry` (never the global
 * default, which throws on duplicate names when two gateways share a process, as in tests).
 */
import { Counter, Registry, collectDefaultMetrics, type CounterConfiguration } from 'prom-client';

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

/**
 * Counts for a hot path (every chunk, every request): added up in plain numbers and handed to
 * their prom-client counter when it is collected (a scrape, or `get()`). A labelled child's `inc`
 * hashes its labels on every call, which a relay paid per chunk.
 */
export class DeferredCounts<L extends string> {
  private readonly pending = new Map<string, { labels: Partial<Record<L, string>>; value: number }>();

  /** A counter child for `labels` whose `inc` only adds to a number. */
  child(labels: Partial<Record<L, string>>): { inc(value?: number): void } {
    const key = JSON.stringify(labels);
    let entry = this.pending.get(key);
    if (entry === undefined) {
      entry = { labels, value: 0 };
      this.pending.set(key, entry);
    }
    const counted = entry;
    return {
      inc(value = 1) {
        counted.value += value;
      },
    };
  }

  /** Hand what was counted to `counter` (call from its `collect`). */
  flush(counter: { inc(labels: Partial<Record<L, string>>, value: number): void }): void {
    for (const entry of this.pending.values()) {
      if (entry.value === 0) continue;
      counter.inc(entry.labels, entry.value);
      entry.value = 0;
    }
  }
}

/** A counter whose hot-path children are `DeferredCounts`, handed over each time it is collected. */
export function deferredCounter<L extends string>(config: Omit<CounterConfiguration<L>, 'collect'>): { counter: Counter<L>; counts: DeferredCounts<L> } {
  const counts = new DeferredCounts<L>();
  const counter = new Counter<L>({
    ...config,
    collect() {
      counts.flush(this);
    },
  });
  return { counter, counts };
}
