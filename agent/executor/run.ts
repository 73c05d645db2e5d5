/**
 * One run from lease to terminal phase:
 *
 *   INITIALIZING  prepare `<workDir>/runs/<runId>/{inputs,outputs,work,logs}`, fetch each input
 *                 through a signed download link into `inputs/<name>` (streaming)
 *   RUNNING       spawn `command args` (no shell) in `work/`, own process group, env = base env +
 *                 task/run env + TETHER_INPUTS_DIR / TETHER_OUTPUTS_DIR / TETHER_RUN_ID; stdout and
 *                 stderr to `logs/` under the output cap
 *   terminal      exit 0 → upload every top-level entry of `outputs/` through signed upload
 *                 locations (with MD5) → SUCCEEDED with output name → URI; otherwise FAILED,
 *                 TIMED_OUT or ABORTED with a short error
 *
 * The wall-time limit covers the whole run (inputs, process, outputs). Timeout and abort send
 * SIGTERM to the process group and SIGKILL after the grace; whenever the main process exits, the
 * rest of its group is killed, so no child outlives the run.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { chown, lstat, mkdir, readdir, rm } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { getErrorCode, isTetherError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { Phase } from '../../control/phases.js';
import { downloadToFile, fileMd5, uploadFile } from '../dataproxy/blob-client.js';
import type { SignedUrlIssuer } from '../dataproxy/dataproxy.js';
import { capMessage, ExecutorErrorCode } from './errors.js';
import type { ExecutorMetrics } from './metrics.js';
import { OutputCapture } from './output-capture.js';
import type { OutputLimitPolicy } from './output-capture.js';
import { signalGroup } from './process-group.js';

/** What a leased run looks like; a `control` `Assignment` message fits as it is. */
export interface ExecutorRun {
  runId: string;
  scope?: { org: string; project: string; domain: string } | undefined;
  command: string;
  args: readonly string[];
  /** The task's environment with the run's over it. */
  env: Readonly<Record<string, string>>;
  /** Input name → URI (`tether-blob://…`). */
  inputs: Readonly<Record<string, string>>;
  /** Where outputs go (`tether-blob://<bucket>/<prefix>`); empty = `runs/<project>/<domain>/<runId>`. */
  outputPrefix: string;
  /** Wall-time limit in seconds; 0 = the executor's default. */
  timeoutSec: number;
  /** Cap on stdout+stderr bytes; 0 = the executor's default. */
  maxOutputBytes: number;
}

export interface RunError {
  code: string;
  message: string;
  kind: 'USER' | 'SYSTEM' | 'UNKNOWN';
}

/** Shaped like the `AgentEvent` of `agent/control-client`: pass it to `AgentClient.report()` as it is. */
export interface ExecutorEvent {
  runId: string;
  phase: Phase;
  occurredAt: number;
  message?: string;
  error?: RunError | null;
  outputs?: Record<string, string>;
}

export type TerminalPhase = typeof Phase.SUCCEEDED | typeof Phase.FAILED | typeof Phase.ABORTED | typeof Phase.TIMED_OUT;

export interface RunOutcome {
  runId: string;
  phase: TerminalPhase;
  error: RunError | null;
  outputs: Record<string, string>;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** stdout+stderr bytes kept in the logs. */
  outputBytes: number;
  truncated: boolean;
  logs: { stdout: string; stderr: string };
}

export interface RunSettings {
  workDir: string;
  urls: SignedUrlIssuer;
  emit: (event: ExecutorEvent) => void;
  timeoutMs: number;
  maxOutputBytes: number;
  outputLimit: OutputLimitPolicy;
  killGraceMs: number;
  baseEnv: Readonly<Record<string, string>>;
  keepWorkDirs: boolean;
  maxErrorBytes: number;
  runAs: { uid: number; gid: number } | null;
  /** Roots for an `https:` blob server. */
  blobCa: string | undefined;
  metrics: ExecutorMetrics | null;
  logger: Logger;
}

const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const OUTPUT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const MAX_OUTPUTS = 128;
const MAX_OUTPUT_FILES = 10_000;

class RunFailure extends Error {
  readonly phase: TerminalPhase;
  readonly error: RunError;
  constructor(phase: TerminalPhase, code: string, message: string, kind: RunError['kind']) {
    super(message);
    this.phase = phase;
    this.error = { code, message, kind };
  }
}

/** "CODE" of a failure, for messages: a TetherError's code or the errno, never its free text. */
function reasonCode(reason: unknown): string {
  if (isTetherError(reason)) return reason.code;
  return getErrorCode(reason) ?? 'error';
}

export class RunExecution {
  readonly run: ExecutorRun;
  readonly done: Promise<RunOutcome>;
  readonly #settings: RunSettings;
  readonly #abort = new AbortController();
  /** Why the run is being stopped (first reason wins). */
  #stop: RunFailure | null = null;
  #child: ChildProcess | null = null;
  #killTimer: NodeJS.Timeout | null = null;
  #deadline: NodeJS.Timeout | null = null;
  #phase: Phase = Phase.QUEUED;
  readonly #dir: string;

  constructor(run: ExecutorRun, settings: RunSettings) {
    this.run = run;
    this.#settings = settings;
    this.#dir = join(settings.workDir, 'runs', RUN_ID.test(run.runId) ? run.runId : '_invalid');
    this.done = this.#execute();
  }

  get phase(): Phase {
    return this.#phase;
  }

  get logs(): { stdout: string; stderr: string } {
    return { stdout: join(this.#dir, 'logs', 'stdout.log'), stderr: join(this.#dir, 'logs', 'stderr.log') };
  }

  /** Stop the run: ABORTED with `reason` (capped). Idempotent; no effect once terminal. */
  abort(reason = 'aborted'): void {
    this.#halt(new RunFailure(Phase.ABORTED, ExecutorErrorCode.ABORTED, capMessage(reason === '' ? 'aborted' : reason, this.#settings.maxErrorBytes), 'USER'));
  }

  #halt(failure: RunFailure): void {
    if (this.#stop !== null || this.#isTerminal()) return;
    this.#stop = failure;
    this.#abort.abort(failure);
    this.#terminate();
  }

  #isTerminal(): boolean {
    return this.#phase === Phase.SUCCEEDED || this.#phase === Phase.FAILED || this.#phase === Phase.ABORTED || this.#phase === Phase.TIMED_OUT;
  }

  /** SIGTERM the group now, SIGKILL after the grace. */
  #terminate(): void {
    const pid = this.#child?.pid;
    if (pid === undefined || this.#child?.exitCode !== null || this.#child.signalCode !== null) return;
    signalGroup(pid, 'SIGTERM');
    this.#killTimer ??= setTimeout(() => signalGroup(pid, 'SIGKILL'), this.#settings.killGraceMs);
  }

  #emit(phase: Phase, extra: Omit<ExecutorEvent, 'runId' | 'phase' | 'occurredAt'> = {}): void {
    this.#phase = phase;
    try {
      this.#settings.emit({ runId: this.run.runId, phase, occurredAt: Date.now(), ...extra });
    } catch (reason) {
      this.#settings.logger.error({ err: reason, runId: this.run.runId }, 'phase event callback failed');
    }
  }

  async #execute(): Promise<RunOutcome> {
    const outcome: RunOutcome = {
      runId: this.run.runId,
      phase: Phase.SUCCEEDED,
      error: null,
      outputs: {},
      exitCode: null,
      signal: null,
      outputBytes: 0,
      truncated: false,
      logs: this.logs,
    };
    const settings = this.#settings;
    this.#deadline = setTimeout(() => {
      this.#halt(new RunFailure(Phase.TIMED_OUT, ExecutorErrorCode.TIMEOUT, `the run exceeded its time limit of ${Math.round(settings.timeoutMs / 100) / 10} s`, 'USER'));
    }, settings.timeoutMs);
    try {
      if (!RUN_ID.test(this.run.runId)) throw new RunFailure(Phase.FAILED, ExecutorErrorCode.BAD_RUN, 'the run id cannot name a work folder', 'SYSTEM');
      this.#emit(Phase.INITIALIZING, { message: 'fetching inputs' });
      await this.#prepare();
      await this.#fetchInputs();
      this.#checkStopped();
      await this.#runProcess(outcome);
      this.#checkStopped();
      outcome.outputs = await this.#uploadOutputs();
      this.#checkStopped();
    } catch (reason) {
      const failure = this.#stop ?? (reason instanceof RunFailure ? reason : new RunFailure(Phase.FAILED, 'INTERNAL', capMessage(`executor failure: ${reasonCode(reason)}`, settings.maxErrorBytes), 'SYSTEM'));
      if (!(reason instanceof RunFailure) && this.#stop === null) settings.logger.error({ err: reason, runId: this.run.runId }, 'executor failure');
      outcome.phase = failure.phase;
      outcome.error = { ...failure.error, message: capMessage(failure.error.message, settings.maxErrorBytes) };
      outcome.outputs = {};
    } finally {
      if (this.#deadline !== null) clearTimeout(this.#deadline);
      if (this.#killTimer !== null) clearTimeout(this.#killTimer);
      this.#deadline = this.#killTimer = null;
    }
    await this.#cleanup();
    settings.metrics?.finished.inc({ phase: phaseName(outcome.phase), code: outcome.error?.code ?? 'OK' });
    if (outcome.phase === Phase.SUCCEEDED) this.#emit(Phase.SUCCEEDED, { outputs: outcome.outputs, message: `exited with code 0; ${Object.keys(outcome.outputs).length} output(s)` });
    else this.#emit(outcome.phase, { error: outcome.error, message: outcome.error?.message ?? '' });
    return outcome;
  }

  #checkStopped(): void {
    if (this.#stop !== null) throw this.#stop;
  }

  #path(...parts: string[]): string {
    return join(this.#dir, ...parts);
  }

  async #prepare(): Promise<void> {
    try {
      await rm(this.#dir, { recursive: true, force: true });
      for (const folder of ['inputs', 'outputs', 'work', 'logs']) await mkdir(this.#path(folder), { recursive: true, mode: 0o755 });
      const runAs = this.#settings.runAs;
      // The task's user may write only its working folder and its outputs.
      if (runAs !== null) for (const folder of ['outputs', 'work']) await chown(this.#path(folder), runAs.uid, runAs.gid);
    } catch (reason) {
      throw new RunFailure(Phase.FAILED, ExecutorErrorCode.WORKDIR_FAILED, `could not prepare the run folder (${reasonCode(reason)})`, 'SYSTEM');
    }
  }

  async #fetchInputs(): Promise<void> {
    for (const [name, uri] of Object.entries(this.run.inputs)) {
      this.#checkStopped();
      if (!OUTPUT_NAME.test(name)) throw new RunFailure(Phase.FAILED, ExecutorErrorCode.INPUT_FAILED, `input name ${JSON.stringify(name.slice(0, 64))} cannot name a file`, 'USER');
      try {
        const link = await this.#settings.urls.createDownloadLink({ uri });
        const { size } = await downloadToFile(link.signedUrl, this.#path('inputs', name), { signal: this.#abort.signal, ...this.#tls() });
        this.#settings.metrics?.transferBytes.inc({ direction: 'in' }, size);
      } catch (reason) {
        this.#checkStopped();
        throw new RunFailure(Phase.FAILED, ExecutorErrorCode.INPUT_FAILED, `input "${name}" could not be fetched (${reasonCode(reason)})`, isTetherError(reason) && reason.code.startsWith('DATAPROXY_') ? 'USER' : 'SYSTEM');
      }
    }
  }

  async #runProcess(outcome: RunOutcome): Promise<void> {
    const settings = this.#settings;
    const env: Record<string, string> = {
      ...settings.baseEnv,
      ...this.run.env,
      TETHER_RUN_ID: this.run.runId,
      TETHER_INPUTS_DIR: this.#path('inputs'),
      TETHER_OUTPUTS_DIR: this.#path('outputs'),
    };
    const capture = new OutputCapture(settings.maxOutputBytes, settings.outputLimit, () => {
      this.#halt(new RunFailure(Phase.FAILED, ExecutorErrorCode.OUTPUT_LIMIT, `stdout and stderr exceeded the output limit of ${settings.maxOutputBytes} bytes`, 'USER'));
    });
    const runAs = settings.runAs === null ? {} : { uid: settings.runAs.uid, gid: settings.runAs.gid };
    const child = spawn(this.run.command, [...this.run.args], { cwd: this.#path('work'), env, detached: true, shell: false, stdio: ['ignore', 'pipe', 'pipe'], windowsHide: true, ...runAs });
    this.#child = child;
    const logs = this.logs;
    capture.attach(child.stdout as NonNullable<typeof child.stdout>, logs.stdout);
    capture.attach(child.stderr as NonNullable<typeof child.stderr>, logs.stderr);
    const result = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; spawnError: unknown }>((resolve) => {
      let spawnError: unknown = null;
      child.once('spawn', () => {
        settings.metrics?.running.inc();
        // An abort or timeout that came while starting: no RUNNING after ABORTING.
        if (this.#stop !== null) this.#terminate();
        else this.#emit(Phase.RUNNING, { message: 'process started' });
      });
      child.once('error', (reason) => {
        spawnError = reason;
      });
      child.once('exit', () => {
        // The main process is gone: nothing else of its group may outlive the run.
        if (child.pid !== undefined) signalGroup(child.pid, 'SIGKILL');
      });
      child.once('close', (code: number | null, signal: NodeJS.Signals | null) => resolve({ code, signal, spawnError }));
    });
    if (child.pid !== undefined && result.spawnError === null) settings.metrics?.running.dec();
    await capture.close();
    outcome.exitCode = result.code;
    outcome.signal = result.signal;
    outcome.outputBytes = capture.bytes;
    outcome.truncated = capture.exceeded;
    this.#checkStopped();
    if (result.spawnError !== null) {
      throw new RunFailure(Phase.FAILED, ExecutorErrorCode.SPAWN_FAILED, `the command could not be started (${reasonCode(result.spawnError)})`, 'USER');
    }
    if (result.code !== 0) {
      if (result.signal !== null) throw new RunFailure(Phase.FAILED, ExecutorErrorCode.KILLED, `the process was killed by ${result.signal}`, 'USER');
      throw new RunFailure(Phase.FAILED, ExecutorErrorCode.EXIT_CODE, `the process exited with code ${String(result.code)}`, 'USER');
    }
  }

  /** Top-level files and folders of `outputs/`, uploaded under the output prefix. */
  async #uploadOutputs(): Promise<Record<string, string>> {
    const prefix = this.#outputPrefix();
    const root = this.#path('outputs');
    const entries = await readdir(root, { withFileTypes: true });
    if (entries.length > MAX_OUTPUTS) throw new RunFailure(Phase.FAILED, ExecutorErrorCode.OUTPUT_INVALID, `the run wrote ${entries.length} outputs; the limit is ${MAX_OUTPUTS}`, 'USER');
    const outputs: Record<string, string> = {};
    let files = 0;
    for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (!OUTPUT_NAME.test(entry.name)) throw new RunFailure(Phase.FAILED, ExecutorErrorCode.OUTPUT_INVALID, `output name ${JSON.stringify(entry.name.slice(0, 64))} is not allowed (letters, digits, ".", "_", "-")`, 'USER');
      const path = join(root, entry.name);
      if (entry.isFile()) {
        files += 1;
        outputs[entry.name] = await this.#upload(path, `${prefix}/${entry.name}`);
      } else if (entry.isDirectory()) {
        for (const file of await this.#walk(path)) {
          files += 1;
          if (files > MAX_OUTPUT_FILES) throw new RunFailure(Phase.FAILED, ExecutorErrorCode.OUTPUT_INVALID, `the run wrote more than ${MAX_OUTPUT_FILES} output files`, 'USER');
          await this.#upload(file, `${prefix}/${relative(root, file).split(sep).join('/')}`);
        }
        outputs[entry.name] = `${prefix}/${entry.name}/`;
      } else {
        throw new RunFailure(Phase.FAILED, ExecutorErrorCode.OUTPUT_INVALID, `output "${entry.name}" is not a regular file or folder (symlinks are not followed)`, 'USER');
      }
    }
    return outputs;
  }

  async #walk(dir: string): Promise<string[]> {
    const out: string[] = [];
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) out.push(...(await this.#walk(path)));
      else if (entry.isFile()) out.push(path);
      else throw new RunFailure(Phase.FAILED, ExecutorErrorCode.OUTPUT_INVALID, `output "${relative(this.#path('outputs'), path).slice(0, 128)}" is not a regular file (symlinks are not followed)`, 'USER');
    }
    return out;
  }

  #tls(): { ca?: string } {
    return this.#settings.blobCa === undefined ? {} : { ca: this.#settings.blobCa };
  }

  #outputPrefix(): string {
    const prefix = this.run.outputPrefix.replace(/\/+$/, '');
    if (prefix !== '') return prefix;
    const scope = this.run.scope;
    return this.#settings.urls.uriFor(['runs', scope?.project || '_', scope?.domain || '_', this.run.runId].join('/'));
  }

  async #upload(file: string, uri: string): Promise<string> {
    this.#checkStopped();
    try {
      const stats = await lstat(file);
      if (!stats.isFile()) throw new RunFailure(Phase.FAILED, ExecutorErrorCode.OUTPUT_INVALID, 'an output is not a regular file', 'USER');
      const { size, md5 } = await fileMd5(file);
      const location = await this.#settings.urls.createUploadLocationForUri({ uri, contentMd5: md5, contentLength: size });
      await uploadFile(location.signedUrl, location.headers, file, { signal: this.#abort.signal, ...this.#tls() });
      this.#settings.metrics?.transferBytes.inc({ direction: 'out' }, size);
      return location.nativeUrl;
    } catch (reason) {
      this.#checkStopped();
      if (reason instanceof RunFailure) throw reason;
      const name = relative(this.#path('outputs'), file).split(sep).join('/').slice(0, 128);
      throw new RunFailure(Phase.FAILED, ExecutorErrorCode.OUTPUT_FAILED, `output "${name}" could not be uploaded (${reasonCode(reason)})`, isTetherError(reason) && reason.code.startsWith('DATAPROXY_') ? 'USER' : 'SYSTEM');
    }
  }

  async #cleanup(): Promise<void> {
    if (this.#settings.keepWorkDirs || !RUN_ID.test(this.run.runId)) return;
    await Promise.all(['inputs', 'outputs', 'work'].map((folder) => rm(this.#path(folder), { recursive: true, force: true }).catch(() => undefined)));
  }
}

function phaseName(phase: Phase): string {
  switch (phase) {
    case Phase.SUCCEEDED:
      return 'SUCCEEDED';
    case Phase.FAILED:
      return 'FAILED';
    case Phase.ABORTED:
      return 'ABORTED';
    case Phase.TIMED_OUT:
      return 'TIMED_OUT';
    default:
      return String(phase);
  }
}
