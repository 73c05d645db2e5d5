/**
 * What every fuzz target shares: the failure type that names the case, event-driven waits with
 * deadlines, and client connections to the gateway's plain and TLS ports.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';

/** A broken invariant. `detail` says which; the campaign adds the seed and case index. */
export class FuzzFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FuzzFailure';
  }
}

/** How one case ended, in a few words (counted per target in the campaign's summary). */
export interface CaseOutcome {
  outcome: string;
  /** `tether-error` codes the client was answered with. */
  codes?: string[];
}

/** Where a client reaches the gateway. */
export interface GatewayPorts {
  host: string;
  plainPort: number;
  tlsPort: number;
  /** Trust bundle for the gateway's certificate. */
  ca: string;
}

/** `promise`, or a FuzzFailure naming `what` after `ms`. The timer never outlives the race. */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new FuzzFailure(`${what}: nothing within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves at the socket's 'close' (at once when it is already closed). */
export function closed(socket: net.Socket): Promise<void> {
  if (socket.destroyed && socket.closed) return Promise.resolve();
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

/**
 * Calls `onChange` after every 'data' and at 'close' until `done()` says so, or until `idleMs`
 * pass without either (then resolves 'idle'). Resolves 'done' or 'closed' otherwise.
 */
export function watch(socket: net.Socket, done: () => boolean, idleMs: number): Promise<'done' | 'closed' | 'idle'> {
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const finish = (how: 'done' | 'closed' | 'idle'): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      resolve(how);
    };
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => finish('idle'), idleMs);
    };
    const onData = (): void => {
      // Listeners run in order: the reader attached before this one has seen the chunk.
      if (done()) finish('done');
      else arm();
    };
    const onClose = (): void => finish(done() ? 'done' : 'closed');
    socket.on('data', onData);
    socket.once('close', onClose);
    if (socket.destroyed) onClose();
    else if (done()) finish('done');
    else arm();
  });
}

/** A connected client socket: cleartext, or TLS with `alpn` (certificate checked against `ca`). */
export async function connectClient(ports: GatewayPorts, secure: boolean, alpn: string): Promise<net.Socket> {
  const socket = secure
    ? tls.connect({ host: ports.host, port: ports.tlsPort, servername: 'localhost', ca: ports.ca, ALPNProtocols: [alpn] })
    : net.connect({ host: ports.host, port: ports.plainPort });
  socket.setNoDelay(true);
  await within(
    5_000,
    `${secure ? 'TLS' : 'plain'} connect`,
    new Promise<void>((resolve, reject) => {
      socket.once(secure ? 'secureConnect' : 'connect', () => resolve());
      socket.once('error', reject);
    }),
  ).catch((reason: unknown) => {
    socket.destroy();
    throw reason instanceof FuzzFailure ? reason : new FuzzFailure(`${secure ? 'TLS' : 'plain'} connect failed: ${String(reason)}`);
  });
  socket.on('error', () => undefined);
  return socket;
}
