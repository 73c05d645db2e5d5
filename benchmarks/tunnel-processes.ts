/**
 * Child processes of the tunnel benchmark: every one is spawned through `Processes`, which keeps
 * the last output of each for error messages and kills them all at the end (SIGTERM, then SIGKILL
 * after a grace period), also when the benchmark fails or is interrupted.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, constants, readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** `--import` this in a child Node process to run the repository's TypeScript. */
const TYPESCRIPT_LOADER = new URL('../bin/typescript.js', import.meta.url).href;

const HERE = dirname(fileURLToPath(import.meta.url));
const TAIL_BYTES = 4_000;

export interface Tracked {
  name: string;
  child: ChildProcess;
  /** Last bytes of stdout+stderr. */
  output(): string;
  exited: Promise<number | null>;
}

export class Processes {
  private readonly tracked = new Set<Tracked>();

  spawn(name: string, command: string, args: readonly string[], options: SpawnOptions = {}): Tracked {
    return this.track(name, spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options }));
  }

  /** Take charge of a child spawned elsewhere: its output tail is kept unless the caller reads it. */
  track(name: string, child: ChildProcess): Tracked {
    let tail = '';
    const keep = (chunk: Buffer): void => {
      tail = (tail + chunk.toString('utf8')).slice(-TAIL_BYTES);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const exited = new Promise<number | null>((resolve) => {
      child.once('error', (reason: Error) => {
        keep(Buffer.from(`spawn failed: ${reason.message}\n`));
        resolve(null);
      });
      child.once('exit', (code) => resolve(code));
    });
    const entry: Tracked = { name, child, output: () => tail, exited };
    this.tracked.add(entry);
    void exited.then(() => this.tracked.delete(entry));
    return entry;
  }

  /**
   * A Node child running a TypeScript file of this folder through bin/typescript.js with an IPC channel, its
   * open-file limit raised as far as the hard limit allows.
   */
  spawnNode(name: string, file: string, args: readonly string[], nodeArgs: readonly string[] = []): Tracked {
    const script = 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"';
    return this.spawn(name, 'bash', ['-c', script, process.execPath, ...nodeArgs, '--import', TYPESCRIPT_LOADER, join(HERE, file), ...args], {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: { ...process.env, TETHER_LOG_LEVEL: 'silent' },
    });
  }

  /** Stop one child: SIGTERM, SIGKILL after `graceMs`. */
  async stop(entry: Tracked, graceMs = 3_000): Promise<void> {
    if (entry.child.exitCode !== null || entry.child.signalCode !== null) return;
    entry.child.kill('SIGTERM');
    const timer = setTimeout(() => entry.child.kill('SIGKILL'), graceMs);
    await entry.exited;
    clearTimeout(timer);
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.tracked].reverse().map((entry) => this.stop(entry)));
  }

  /** Last resort from a synchronous exit handler. */
  killAllNow(): void {
    for (const entry of this.tracked) entry.child.kill('SIGKILL');
  }

  get running(): number {
    return this.tracked.size;
  }
}

/** The next IPC message of `entry` that `accept` takes; rejects on exit, an `error` message or the deadline. */
export function nextMessage<T>(entry: Tracked, accept: (message: unknown) => message is T, timeoutMs: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const child = entry.child;
    const finish = (error: Error | null, value?: T): void => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
      if (error !== null) reject(error);
      else resolve(value as T);
    };
    const onMessage = (message: unknown): void => {
      if (isErrorMessage(message)) finish(new Error(`${entry.name}: ${message.message}\n${entry.output()}`));
      else if (accept(message)) finish(null, message);
    };
    const onExit = (code: number | null): void => finish(new Error(`${entry.name} exited (${String(code)}) while waiting for ${what}\n${entry.output()}`));
    const timer = setTimeout(() => finish(new Error(`${entry.name}: no ${what} within ${timeoutMs} ms\n${entry.output()}`)), timeoutMs);
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

function isErrorMessage(message: unknown): message is { type: 'error'; message: string } {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === 'error';
}

export function ofType<T extends { type: string }>(type: T['type']): (message: unknown) => message is T {
  return (message: unknown): message is T => typeof message === 'object' && message !== null && (message as { type?: unknown }).type === type;
}

export interface ToolResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Run a tool to completion with a hard deadline (SIGKILL at `timeoutMs`). */
export function runTool(processes: Processes, command: string, args: readonly string[], timeoutMs: number): Promise<ToolResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const entry = processes.track(command, child);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString('utf8');
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString('utf8')).slice(-TAIL_BYTES);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    void entry.exited.then((code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, timedOut });
    });
  });
}

/** Absolute path of an executable on PATH (or in the sbin folders), or null. */
export function which(name: string): string | null {
  const folders = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const folder of folders) {
    if (folder === '') continue;
    const candidate = join(folder, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** A loopback port that was free a moment ago (for programs that cannot take port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

const CLOCK_TICKS_PER_SEC = 100;

/** User + system CPU seconds a process has used so far (0 when it is gone). */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SEC;
  } catch {
    return 0;
  }
}

/** Every descendant of `pid` (children, their children, ...), from /proc. */
export function descendants(pid: number): number[] {
  const found: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const current = queue.shift() ?? 0;
    let children: number[] = [];
    try {
      for (const task of readdirSync(`/proc/${current}/task`)) {
        const text = readFileSync(`/proc/${current}/task/${task}/children`, 'utf8').trim();
        if (text !== '') children = children.concat(text.split(/\s+/).map(Number));
      }
    } catch {
      // gone
    }
    found.push(...children);
    queue.push(...children);
  }
  return found;
}
