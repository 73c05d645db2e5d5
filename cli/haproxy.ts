/**
 * A real HAProxy in front of the sovereign listener, for `tether dev --sovereign` and the tests:
 * `haproxy -f <cfg> -db` (foreground, no fork) with a configuration written to a directory of the
 * caller's, on loopback ports (or, with a launcher such as `ip netns exec <ns>`, in a namespace).
 * Readiness is an event, not a sleep: the configuration carries a backend whose `tcp-check`
 * connects to a probe server of ours, and HAProxy only runs checks once its listeners are bound
 * and its event loop runs. stop() sends SIGTERM, then SIGKILL if it has not exited within 5 s,
 * and waits for the exit.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

/** The Debian package that provides the binary (named in skip and failure messages). */
export const HAPROXY_PACKAGE = 'haproxy';

/** The haproxy binary: `HAPROXY_BIN` when set (only that), else the usual install locations; null when none exists. */
export function findHaproxy(): string | null {
  const chosen = process.env.HAPROXY_BIN;
  const candidates = chosen !== undefined && chosen !== '' ? [chosen] : ['/usr/sbin/haproxy', '/usr/bin/haproxy', '/usr/local/sbin/haproxy', '/usr/local/bin/haproxy'];
  return candidates.find((candidate) => existsSync(candidate)) ?? null;
}

/** A port nobody listens on right now on `host` (bound to port 0, then released). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface Haproxy {
  configFile: string;
  /** What HAProxy wrote to stdout and stderr (capped), for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

const MAX_OUTPUT = 64 * 1024;

export interface HaproxyOptions {
  /** How long to wait for readiness (default 10 s). */
  readyTimeoutMs?: number;
  /** A command that runs HAProxy, e.g. `['ip', 'netns', 'exec', 'lb']` (default: none, run it directly). */
  launcher?: string[];
  /** Where the readiness probe listens; HAProxy must reach it there (default 127.0.0.1). */
  probeHost?: string;
}

/**
 * Start HAProxy with `sections` (frontends and backends) after a global/defaults preamble of ours
 * (one thread, TCP mode, short timeouts) and the readiness probe. Resolves once it is ready;
 * rejects with its output when it exits first or is not ready within `readyTimeoutMs`.
 */
export async function startHaproxy(binary: string, directory: string, sections: string, options: HaproxyOptions = {}): Promise<Haproxy> {
  const readyTimeoutMs = options.readyTimeoutMs ?? 10_000;
  const probeHost = options.probeHost ?? '127.0.0.1';
  const probes = new Set<net.Socket>();
  let ready: (() => void) | null = null;
  const readySignal = new Promise<void>((resolve) => (ready = resolve));
  const probe = net.createServer((socket) => {
    probes.add(socket);
    socket.once('close', () => probes.delete(socket));
    socket.on('error', () => undefined);
    socket.end('ready\n');
    ready?.();
  });
  await new Promise<void>((resolve, reject) => {
    probe.once('error', reject);
    probe.listen(0, probeHost, resolve);
  });
  const probePort = (probe.address() as AddressInfo).port;
  const closeProbe = () =>
    new Promise<void>((resolve) => {
      for (const socket of probes) socket.destroy();
      probe.close(() => resolve());
    });
  const configFile = path.join(directory, 'haproxy.cfg');
  await writeFile(
    configFile,
    [
      'global',
      '  nbthread 1',
      '  maxconn 256',
      'defaults',
      '  mode tcp',
      '  timeout connect 2s',
      '  timeout client 10s',
      '  timeout server 10s',
      sections.trim(),
      '# Readiness probe: checks run only once the listeners above are bound.',
      'backend tether_ready_probe',
      '  option tcp-check',
      '  tcp-check expect string ready',
      `  server probe ${probeHost.includes(':') ? `[${probeHost}]` : probeHost}:${probePort} check inter 1s`,
      '',
    ].join('\n'),
  );
  let output = '';
  const [command, ...prefix] = [...(options.launcher ?? []), binary];
  const child: ChildProcess = spawn(command as string, [...prefix, '-f', configFile, '-db'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const collect = (chunk: Buffer) => {
    if (output.length < MAX_OUTPUT) output += chunk.toString('utf8');
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let alive = true;
  void exited.then(() => (alive = false));
  const stop = async (): Promise<void> => {
    if (alive) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    await closeProbe();
  };
  child.once('error', (reason) => (output += `\nspawn error: ${reason.message}`));
  let timer: NodeJS.Timeout | null = null;
  const outcome = await Promise.race([
    readySignal.then(() => 'ready' as const),
    exited.then(() => 'exited' as const),
    new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), readyTimeoutMs))),
  ]);
  if (timer !== null) clearTimeout(timer);
  if (outcome !== 'ready') {
    await stop();
    throw new Error(`haproxy ${outcome === 'exited' ? 'exited' : `was not ready within ${readyTimeoutMs} ms`} (config ${configFile}):\n${output}`);
  }
  return { configFile, output: () => output, stop };
}
