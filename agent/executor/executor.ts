/**
 * The executor: runs leased runs as local processes in the data plane. `start(run)` returns a
 * handle at once; phase events (INITIALIZING, RUNNING, then one of SUCCEEDED, FAILED, TIMED_OUT,
 * ABORTED) go to `onEvent`, shaped like `AgentEvent` of `agent/control-client`, so wiring is
 * `onEvent: (event) => agentClient.report(event)`, `onAssignment: (a) => executor.start(a)`,
 * `onAbort: (id, reason) => executor.abort(id, reason)`, `running: () => executor.running()`.
 *
 * Limits: wall time (`timeoutSec`, default 1 h, capped by `maxTimeoutSec`), stdout+stderr bytes
 * (`maxOutputBytes`, default 10 MiB; policy `fail` = FAILED with EXECUTOR_OUTPUT_LIMIT and the
 * process group killed, `truncate` = logs cut with a note, the run continues). The environment
 * is NOT the agent's: only `baseEnv` (default: PATH, LANG, TZ from the agent) plus the run's env,
 * so the agent's own credentials never reach a task.
 *
 * Logs stay in the data plane at `<workDir>/runs/<runId>/logs/{stdout,stderr}.log`; inputs,
 * outputs and the working folder are removed when the run ends (unless `keepWorkDirs`).
 */
import type { Registry } from 'prom-client';
import type { Closable } from '../../common/lifecycle.js';
import type { Logger } from '../../common/log.js';
import { silentLogger } from '../../common/log.js';
import type { SignedUrlIssuer } from '../dataproxy/dataproxy.js';
import { executorMetrics } from './metrics.js';
import type { ExecutorMetrics } from './metrics.js';
import type { OutputLimitPolicy } from './output-capture.js';
import { RunExecution } from './run.js';
import type { ExecutorEvent, ExecutorRun, RunOutcome } from './run.js';
import type { Phase } from '../../control/phases.js';

export interface ExecutorOptions {
  /** Data-plane folder for run folders and logs. */
  workDir: string;
  /** Signs input links and output upload locations (the agent's `Dataproxy`). */
  urls: SignedUrlIssuer;
  /** Every phase event, in order per run. */
  onEvent: (event: ExecutorEvent) => void;
  defaultTimeoutSec?: number;
  maxTimeoutSec?: number;
  defaultMaxOutputBytes?: number;
  outputLimit?: OutputLimitPolicy;
  /** SIGTERM → SIGKILL grace on timeout and abort; default 5 s. */
  killGraceMs?: number;
  baseEnv?: Readonly<Record<string, string>>;
  keepWorkDirs?: boolean;
  /**
   * Run tasks as this user and group (the agent must be root). Recommended: a task running as the
   * agent's own user could read the agent's signing-key file and certificate key. `workDir` and its
   * ancestors must be traversable by that user; the run's `work/` and `outputs/` are given to it.
   */
  runAs?: { uid: number; gid: number };
  /** Roots (PEM) to trust for an `https:` blob server; default the system's. */
  blobCa?: string;
  /** Cap on error messages sent to the control plane; default 512 bytes. */
  maxErrorBytes?: number;
  registry?: Registry;
  logger?: Logger;
}

export interface RunHandle {
  readonly runId: string;
  /** The last phase emitted. */
  readonly phase: Phase;
  readonly logs: { stdout: string; stderr: string };
  /** Resolves with the outcome once the terminal event has been emitted; never rejects. */
  readonly done: Promise<RunOutcome>;
  abort(reason?: string): void;
}

function defaultBaseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of ['PATH', 'LANG', 'TZ']) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  return env;
}

export class Executor implements Closable {
  readonly #options: ExecutorOptions;
  readonly #runs = new Map<string, RunExecution>();
  readonly #metrics: ExecutorMetrics | null;
  readonly #logger: Logger;
  readonly #baseEnv: Readonly<Record<string, string>>;
  #closing = false;

  constructor(options: ExecutorOptions) {
    this.#options = options;
    this.#metrics = options.registry === undefined ? null : executorMetrics(options.registry);
    this.#logger = options.logger ?? silentLogger();
    this.#baseEnv = options.baseEnv ?? defaultBaseEnv();
  }

  /**
   * Start a run (a control-plane `Assignment` fits). A run already executing here returns its
   * existing handle (a lease offered again after a reconnect does not start it twice).
   */
  start(run: ExecutorRun): RunHandle {
    const existing = this.#runs.get(run.runId);
    if (existing !== undefined) return this.#handle(existing);
    const o = this.#options;
    const maxTimeoutSec = o.maxTimeoutSec ?? 24 * 3600;
    const timeoutSec = run.timeoutSec > 0 ? Math.min(run.timeoutSec, maxTimeoutSec) : (o.defaultTimeoutSec ?? 3600);
    const execution = new RunExecution(run, {
      workDir: o.workDir,
      urls: o.urls,
      emit: o.onEvent,
      timeoutMs: timeoutSec * 1000,
      maxOutputBytes: run.maxOutputBytes > 0 ? run.maxOutputBytes : (o.defaultMaxOutputBytes ?? 10 * 1024 * 1024),
      outputLimit: o.outputLimit ?? 'fail',
      killGraceMs: o.killGraceMs ?? 5_000,
      baseEnv: this.#baseEnv,
      keepWorkDirs: o.keepWorkDirs ?? false,
      maxErrorBytes: o.maxErrorBytes ?? 512,
      runAs: o.runAs ?? null,
      blobCa: o.blobCa,
      metrics: this.#metrics,
      logger: this.#logger,
    });
    this.#runs.set(run.runId, execution);
    void execution.done.then(() => this.#runs.delete(run.runId));
    if (this.#closing) execution.abort('the agent is shutting down');
    return this.#handle(execution);
  }

  #handle(execution: RunExecution): RunHandle {
    return {
      runId: execution.run.runId,
      get phase() {
        return execution.phase;
      },
      logs: execution.logs,
      done: execution.done,
      abort: (reason?: string) => execution.abort(reason),
    };
  }

  /** Abort a run executing here; false when there is none. */
  abort(runId: string, reason?: string): boolean {
    const execution = this.#runs.get(runId);
    if (execution === undefined) return false;
    execution.abort(reason);
    return true;
  }

  /** Ids of runs executing now (for the channel's Hello and heartbeats). */
  running(): string[] {
    return [...this.#runs.keys()];
  }

  get(runId: string): RunHandle | undefined {
    const execution = this.#runs.get(runId);
    return execution === undefined ? undefined : this.#handle(execution);
  }

  /** Take no new runs; let running ones finish within `graceMs`, then abort the rest. */
  async drain(graceMs = 30_000): Promise<void> {
    this.#closing = true;
    const all = Promise.all([...this.#runs.values()].map((execution) => execution.done));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([all, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    await this.close();
  }

  /** Abort every run and wait for their terminal events. */
  async close(): Promise<void> {
    this.#closing = true;
    const runs = [...this.#runs.values()];
    for (const execution of runs) execution.abort('the agent is shutting down');
    await Promise.all(runs.map((execution) => execution.done));
  }
}
