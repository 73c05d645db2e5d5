/** The executor: runs leased runs as local processes, inputs and outputs through signed URLs. */
export { Executor } from './executor.js';
export type { ExecutorOptions, RunHandle } from './executor.js';
export type { ExecutorEvent, ExecutorRun, RunError, RunOutcome, TerminalPhase } from './run.js';
export { ExecutorErrorCode, capMessage } from './errors.js';
export { ExecutorMetrics, executorMetrics } from './metrics.js';
export type { OutputLimitPolicy } from './output-capture.js';
