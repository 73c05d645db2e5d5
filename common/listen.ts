/**
 * Listen failures a user can fix, as errors that say how. A listener whose address the user chose
 * (a flag or a config field) is started through `listenAs(promise, target)`: when the promise
 * rejects because that address cannot be bound, the Node error becomes a `TetherError` naming the
 * address and the flag to change, with one code per cause:
 *
 * | errno           | code                          | cause                                           |
 * |-----------------|-------------------------------|-------------------------------------------------|
 * | `EADDRINUSE`    | `PORT_IN_USE`                 | another socket holds the port                   |
 * | `EACCES`        | `PORT_NOT_PERMITTED`          | the port needs privileges (below 1024 on Linux) |
 * | `EADDRNOTAVAIL` | `LISTEN_ADDRESS_UNAVAILABLE`  | the host is not an address of this machine      |
 *
 * Only a listen error on the target's port is translated (Node's error carries `syscall`, `port`),
 * so a promise that starts several listeners (a gateway's TLS, client and admin ports) can be
 * wrapped once for the one address the flag chose; any other rejection passes through unchanged.
 */
import { isIP } from 'node:net';
import { TetherError, getErrorCode } from './errors.js';

export const PORT_IN_USE = 'PORT_IN_USE';
export const PORT_NOT_PERMITTED = 'PORT_NOT_PERMITTED';
export const LISTEN_ADDRESS_UNAVAILABLE = 'LISTEN_ADDRESS_UNAVAILABLE';

/** An address to listen on, and the flag (or config field) that chose it, e.g. `--control-listen`. */
export interface ListenTarget {
  host: string;
  port: number;
  flag: string;
}

/** `host:port`, with IPv6 hosts in brackets. */
export function formatHostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** The `TetherError` for a failed listen on `target`, or null when `reason` is not one. */
export function listenError(reason: unknown, target: ListenTarget): TetherError | null {
  const errno = getErrorCode(reason);
  if (typeof reason !== 'object' || reason === null) return null;
  const { syscall, address: boundHost, port } = reason as { syscall?: unknown; address?: unknown; port?: unknown };
  if (syscall !== 'listen' && syscall !== 'bind') return null;
  // Node leaves `port` out when it is 0; a hostname target (`localhost`) is compared by port only.
  if (port !== target.port && !(port === undefined && target.port === 0)) return null;
  if (typeof boundHost === 'string' && isIP(target.host) !== 0 && boundHost !== target.host) return null;
  const { flag } = target;
  const address = formatHostPort(target.host, target.port);
  const details = { flag, host: target.host, port: target.port, errno };
  const options = { cause: reason, details };
  switch (errno) {
    case 'EADDRINUSE':
      return new TetherError(PORT_IN_USE, `${flag} ${address} is taken (EADDRINUSE); choose another with ${flag} HOST:PORT, or port 0`, options);
    case 'EACCES':
      return new TetherError(
        PORT_NOT_PERMITTED,
        `${flag} ${address} is not permitted (EACCES; ports below 1024 need privileges); choose another with ${flag} HOST:PORT, or port 0`,
        options,
      );
    case 'EADDRNOTAVAIL':
      return new TetherError(
        LISTEN_ADDRESS_UNAVAILABLE,
        `${flag} ${address}: ${target.host} is not an address of this machine (EADDRNOTAVAIL); choose another with ${flag} HOST:PORT`,
        options,
      );
    default:
      return null;
  }
}

/** `listening`, with a failure to bind `target` turned into `PORT_IN_USE` and its kin (see above). */
export async function listenAs<T>(listening: Promise<T>, target: ListenTarget): Promise<T> {
  try {
    return await listening;
  } catch (reason) {
    throw listenError(reason, target) ?? reason;
  }
}
