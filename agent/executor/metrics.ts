/** Executor metrics (registered on the registry passed in). */
import { Counter, Gauge } from 'prom-client';
import type { Registry } from 'prom-client';

export class ExecutorMetrics {
  /** Runs that reached a terminal phase, by phase and error code (`OK` for success). */
  readonly finished: Counter<'phase' | 'code'>;
  /** Runs executing now. */
  readonly running: Gauge;
  /** Bytes of inputs downloaded (`in`) and outputs uploaded (`out`). */
  readonly transferBytes: Counter<'direction'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.finished = new Counter({ name: 'tether_executor_runs_finished_total', help: 'Runs that reached a terminal phase, by phase and error code.', labelNames: ['phase', 'code'], registers });
    this.running = new Gauge({ name: 'tether_executor_running_runs', help: 'Runs executing now.', registers });
    this.transferBytes = new Counter({ name: 'tether_executor_transfer_bytes_total', help: 'Input bytes downloaded (in) and output bytes uploaded (out) through signed URLs.', labelNames: ['direction'], registers });
  }
}

/** One metrics object per registry (two executors sharing a registry share the series). */
const byRegistry = new WeakMap<Registry, ExecutorMetrics>();

export function executorMetrics(registry: Registry): ExecutorMetrics {
  let metrics = byRegistry.get(registry);
  if (metrics === undefined) {
    metrics = new ExecutorMetrics(registry);
    byRegistry.set(registry, metrics);
  }
  return metrics;
}
