/**
 * What the relays of `benchmarks/sovereign.ts` (the router, `sovereign-router.ts`, and the bare
 * Node relay, `sovereign-floor.ts`) share: the configuration file the benchmark writes (0600, in
 * its temp folder), the IPC messages, and `runRelay`, which runs one as a child process: it reads
 * the configuration named by the first argument, starts the relay, sends `{ type: 'ready', port }`,
 * answers `{ type: 'counts' }` with the relay's request and connection counts, and closes the
 * relay and exits when the IPC channel closes or on SIGTERM (an error is sent as `{ type: 'error' }`).
 */
import { readFile } from 'node:fs/promises';

export interface SovereignRelayConfig {
  /** The customer's certificate, served by the relay. */
  certificateChainPem: string;
  privateKeyPem: string;
  /** The customer's IdP. */
  issuer: string;
  audience: string;
  jwksUri: string;
  upstreamPort: number;
  /** Path prefix the RBAC policy admits. */
  admittedPrefix: string;
}

export interface RelayCounts {
  /** Requests by outcome (`OK` or the refusal code). */
  requests: Record<string, number>;
  /** Connections by result (`accepted`: PROXY header and TLS done, or the refusal code). */
  connections: Record<string, number>;
}

export type SovereignRelayMessage = { type: 'ready'; port: number; pid: number } | ({ type: 'counts' } & RelayCounts) | { type: 'error'; message: string };

export interface RunningRelay {
  port: number;
  counts(): Promise<RelayCounts>;
  close(): Promise<void>;
}

function send(message: SovereignRelayMessage): void {
  process.send?.(message);
}

async function serve(start: (config: SovereignRelayConfig) => Promise<RunningRelay>): Promise<void> {
  const [configPath] = process.argv.slice(2);
  if (configPath === undefined) throw new Error(`usage: ${process.argv[1] ?? 'relay'} CONFIG.json`);
  const relay = await start(JSON.parse(await readFile(configPath, 'utf8')) as SovereignRelayConfig);
  const stop = (): void => {
    const timer = setTimeout(() => process.exit(0), 2_000);
    void relay.close().finally(() => {
      clearTimeout(timer);
      process.exit(0);
    });
  };
  process.once('disconnect', stop);
  process.once('SIGTERM', stop);
  process.on('message', (message: { type?: string }) => {
    if (message.type === 'counts') void relay.counts().then((counts) => send({ type: 'counts', ...counts }));
  });
  send({ type: 'ready', port: relay.port, pid: process.pid });
}

export function runRelay(start: (config: SovereignRelayConfig) => Promise<RunningRelay>): void {
  serve(start).catch((reason: unknown) => {
    send({ type: 'error', message: reason instanceof Error ? reason.message : String(reason) });
    process.exitCode = 1;
    setTimeout(() => process.exit(1), 100);
  });
}
