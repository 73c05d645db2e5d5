/**
 * Gateway replicas as child processes (`tether gateway --config F`, the real CLI with its SIGTERM
 * drain path) and a client-side load balancer over them, for replica failure and rolling-restart
 * tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import * as https from 'node:https';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import type { Agent } from '../../agent/index.js';
import { getErrorCode, getErrorMessage } from '../../common/errors.js';
import { h1Request, type Reply, type RequestSpec } from './tunnel-clients.js';
import { TYPESCRIPT_LOADER } from './typescript-loader.js';

const cliChild = fileURLToPath(new URL('./tunnel-cli-child.ts', import.meta.url));

export interface ReplicaProcess {
  id: string;
  /** `host:port` of its TLS port (clients and agents). */
  address: string;
  port: number;
  child: ChildProcess;
  /** Resolves with the exit code or signal once the process has exited. */
  exited: Promise<number | string>;
}

/**
 * Start `tether gateway --config <dir>/<id>.yaml` in a child process and wait (bounded) for its
 * "listening on" line. `config` is the YAML content (gateway options plus inline `tls`).
 */
export async function startReplicaProcess(dir: string, id: string, config: Record<string, unknown>, timeoutMs = 20_000): Promise<ReplicaProcess> {
  const file = join(dir, `${id}.yaml`);
  await writeFile(file, stringify({ ...config, id }));
  const child = spawn(process.execPath, ['--import', TYPESCRIPT_LOADER, cliChild, 'gateway', '--config', file], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TETHER_LOG_LEVEL: 'silent' },
  });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr += c.toString();
  });
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown'));
  });
  let stdout = '';
  try {
    const address = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`replica ${id} not listening after ${timeoutMs} ms: ${stderr}`)), timeoutMs);
      const onData = (c: Buffer): void => {
        stdout += c.toString();
        const match = /listening on https:\/\/(\S+)/.exec(stdout);
        if (match?.[1] === undefined) return;
        clearTimeout(timer);
        child.stdout?.off('data', onData);
        child.stdout?.resume();
        resolve(match[1]);
      };
      child.stdout?.on('data', onData);
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`replica ${id} exited (${String(code)}) before listening: ${stderr}`));
      });
    });
    return { id, address, port: Number(address.slice(address.lastIndexOf(':') + 1)), child, exited };
  } catch (reason) {
    await stopReplicaProcess({ id, address: '', port: 0, child, exited });
    throw reason;
  }
}

/** SIGKILL the process (if still running) and wait for it to exit. */
export async function stopReplicaProcess(replica: ReplicaProcess): Promise<void> {
  if (replica.child.exitCode === null && replica.child.signalCode === null) replica.child.kill('SIGKILL');
  await replica.exited;
}

/** Wait (bounded) until the agent has at least `count` live tunnels to the gateway with id `gatewayId`. */
export async function waitForTunnelsTo(agent: Agent, gatewayId: string, count: number, timeoutMs = 15_000): Promise<void> {
  const live = (): number => agent.liveConnections().filter((c) => c.gatewayId === gatewayId).length;
  if (live() >= count) return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      agent.events.off('live', check);
      reject(new Error(`agent has ${live()} live tunnels to ${gatewayId} after ${timeoutMs} ms (wanted ${count})`));
    }, timeoutMs);
    function check(): void {
      if (live() < count) return;
      clearTimeout(timer);
      agent.events.off('live', check);
      resolve();
    }
    agent.events.on('live', check);
  });
}

export interface LbOutcome {
  /** The replica that answered (or the last one tried). */
  replica: string;
  reply: Reply | null;
  /** Connection-level error of the last attempt (no HTTP answer). */
  error: string | null;
  retried: boolean;
  startedAt: number;
  endedAt: number;
}

interface Backend {
  id: string;
  address: string;
  pool: https.Agent;
  inFlight: number;
}

/**
 * A client-side model of an L4 load balancer in front of the replicas: each request goes to the
 * in-rotation replica with the fewest requests in flight (round robin on ties), over HTTP/1.1
 * keep-alive. On a connection-level error (refused, reset, hung up: no HTTP answer at all) the
 * replica is taken out of rotation, as a failed health check would, and the request is retried
 * ONCE on another in-rotation replica. HTTP answers (any status) are never retried.
 */
export class ClientLb {
  private readonly backends = new Map<string, Backend>();
  private turn = 0;

  constructor(private readonly ca: string) {}

  /** Put a replica (back) in rotation with a fresh keep-alive pool. */
  add(id: string, address: string): void {
    this.remove(id);
    this.backends.set(id, { id, address, pool: new https.Agent({ keepAlive: true, maxSockets: 8 }), inFlight: 0 });
  }

  /** Take a replica out of rotation (requests in flight to it carry on); its idle sockets close. */
  remove(id: string): void {
    const backend = this.backends.get(id);
    if (backend === undefined) return;
    this.backends.delete(id);
    this.retired.push(backend);
    this.reap();
  }

  has(id: string): boolean {
    return this.backends.has(id);
  }

  private readonly retired: Backend[] = [];

  /** Destroy the pools of retired backends with nothing in flight. */
  private reap(): void {
    for (let i = this.retired.length - 1; i >= 0; i--) {
      const backend = this.retired[i] as Backend;
      if (backend.inFlight > 0) continue;
      backend.pool.destroy();
      this.retired.splice(i, 1);
    }
  }

  private pick(exclude?: string): Backend | null {
    const candidates = [...this.backends.values()].filter((b) => b.id !== exclude);
    if (candidates.length === 0) return null;
    const least = Math.min(...candidates.map((b) => b.inFlight));
    const tied = candidates.filter((b) => b.inFlight === least);
    return tied[this.turn++ % tied.length] as Backend;
  }

  private async attempt(backend: Backend, spec: RequestSpec): Promise<{ reply: Reply | null; error: string | null }> {
    backend.inFlight++;
    try {
      return { reply: await h1Request(backend.address, this.ca, spec, backend.pool), error: null };
    } catch (reason) {
      return { reply: null, error: `${getErrorCode(reason) ?? 'ERROR'}: ${getErrorMessage(reason)}` };
    } finally {
      backend.inFlight--;
      if (backend.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
      if (!this.backends.has(backend.id) || this.backends.get(backend.id) !== backend) this.reap();
    }
  }

  async request(spec: RequestSpec): Promise<LbOutcome> {
    const startedAt = Date.now();
    const first = this.pick();
    if (first === null) return { replica: 'none', reply: null, error: 'NO_BACKEND: no replica in rotation', retried: false, startedAt, endedAt: Date.now() };
    const one = await this.attempt(first, spec);
    if (one.reply !== null) return { replica: first.id, ...one, retried: false, startedAt, endedAt: Date.now() };
    if (this.backends.get(first.id) === first) this.remove(first.id);
    const second = this.pick(first.id);
    if (second === null) return { replica: first.id, ...one, retried: false, startedAt, endedAt: Date.now() };
    const two = await this.attempt(second, spec);
    return { replica: second.id, ...two, retried: true, startedAt, endedAt: Date.now() };
  }

  private readonly idleWaiters: Array<() => void> = [];

  /**
   * Resolves once no request is in flight to replica `id` (an LB's deregistration delay: take the
   * replica out of rotation, let what it has finish, then stop it); rejects after `timeoutMs`.
   */
  async whenIdle(id: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.inFlight(id) > 0) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`${this.inFlight(id)} requests still in flight to ${id} after ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, remaining);
        const waiters = this.idleWaiters;
        function done(): void {
          clearTimeout(timer);
          const i = waiters.indexOf(done);
          if (i >= 0) waiters.splice(i, 1);
          resolve();
        }
        waiters.push(done);
      });
    }
  }

  /** Requests in flight to replica `id` (in or out of rotation). */
  inFlight(id: string): number {
    let n = 0;
    for (const b of [...this.backends.values(), ...this.retired]) if (b.id === id) n += b.inFlight;
    return n;
  }

  close(): void {
    for (const b of this.backends.values()) b.pool.destroy();
    for (const b of this.retired) b.pool.destroy();
    this.backends.clear();
    this.retired.length = 0;
  }
}
