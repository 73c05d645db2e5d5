/**
 * Structured logging (pino) and named debug tracers.
 *
 * Every component takes a `Logger` in its options and defaults to `createLogger(name)`. The level
 * comes from `TETHER_LOG_LEVEL` (default `info`; the test suite sets `silent`).
 *
 * Tracers are named debug channels, off by default, enabled with `TETHER_TRACE=a,b,-c` (`all`
 * enables every tracer, `-name` excludes one). A tracer line is a debug record with a `tracer`
 * field, emitted even when the level is above debug, so that turning on one tracer does not flood
 * the log with every other debug line. Build expensive diagnostics only when `isTracerEnabled()`.
 */
import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

/** Create a root logger named after a component (`gateway`, `agent`, …). */
export function createLogger(name: string, level?: string): Logger {
  const wanted = level ?? process.env.TETHER_LOG_LEVEL ?? 'info';
  return pino({ name, level: LEVELS.has(wanted) ? wanted : 'info', base: { pid: process.pid } });
}

/** A logger that writes nothing; for tests and library callers that want quiet. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

interface TraceSettings {
  all: boolean;
  enabled: Set<string>;
  disabled: Set<string>;
}

let settings: TraceSettings = parseTraceSpec(process.env.TETHER_TRACE ?? '');

export function parseTraceSpec(spec: string): TraceSettings {
  const result: TraceSettings = { all: false, enabled: new Set(), disabled: new Set() };
  for (const raw of spec.split(',')) {
    const name = raw.trim();
    if (name === '') continue;
    if (name === 'all') result.all = true;
    else if (name.startsWith('-')) result.disabled.add(name.slice(1));
    else result.enabled.add(name);
  }
  return result;
}

/** Replace the tracer selection at run time (the CLI's `--trace`, and tests). */
export function setTraceSpec(spec: string): void {
  settings = parseTraceSpec(spec);
}

export function isTracerEnabled(tracer: string): boolean {
  if (settings.disabled.has(tracer)) return false;
  return settings.all || settings.enabled.has(tracer);
}

/** Emit one tracer line through `logger` when `tracer` is enabled. */
export function trace(logger: Logger, tracer: string, msg: string, fields?: Record<string, unknown>): void {
  if (!isTracerEnabled(tracer)) return;
  const record = { tracer, ...fields };
  // Tracer output must show even at the default info level: log at the logger's own level floor.
  if (logger.isLevelEnabled('debug')) logger.debug(record, msg);
  else if (logger.level !== 'silent') logger.info(record, msg);
}
