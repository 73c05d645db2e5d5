/** Start `tether dev` as a child process, as a user would, and read what it prints. */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';

export const REPO = resolve(import.meta.dirname, '..', '..');

export interface DevProcess {
  child: ChildProcess;
  printed: string[];
  /** `client-url:`, `control-url:`, `host:` lines. */
  clientUrl: string;
  controlUrl: string;
  host: string;
  stderr(): string;
  /** The exit code once the process ends by itself (no signal sent) and its output is all read. */
  exited(): Promise<number | null>;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
}

export async function startDev(args: string[], cwd: string = REPO, env: NodeJS.ProcessEnv = {}): Promise<DevProcess> {
  const child = spawn(process.execPath, [resolve(REPO, 'bin/tether.js'), 'dev', ...args], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TETHER_LOG_LEVEL: 'warn', ...env },
  });
  const exited = once(child, 'exit');
  // 'close' comes after 'exit' once stdout and stderr are read to their end.
  const closed = once(child, 'close');
  closed.catch(() => undefined);
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const printed: string[] = [];
  const fields = new Map<string, string>();
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  for await (const line of lines) {
    printed.push(line);
    const match = /^(client-url|control-url|host): (.*)$/.exec(line);
    if (match?.[1] !== undefined && match[2] !== undefined) fields.set(match[1], match[2]);
    if (line.startsWith('Ctrl-C')) break;
  }
  child.stdout?.resume(); // whatever it prints later is not read, but must not hold the pipe (or 'close') up
  return {
    child,
    printed,
    clientUrl: fields.get('client-url') ?? '',
    controlUrl: fields.get('control-url') ?? '',
    host: fields.get('host') ?? '',
    stderr: () => stderr,
    exited: async () => {
      const [code] = (await closed) as [number | null];
      return code;
    },
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      const [code] = (await exited) as [number | null];
      return code;
    },
  };
}
