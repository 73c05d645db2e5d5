/**
 * Control messages carried on the control stream (newline-delimited JSON, both directions).
 * Identity never comes from these messages: it comes from the TLS client certificate.
 */
import type { Duplex } from 'node:stream';
import { TetherError } from '../../common/errors.js';

export interface ReplicaInfo {
  id: string;
  /** `host:port` agents dial to reach this replica. */
  address: string;
}

export type GatewayMessage =
  /** First message on an accepted connection. */
  | { type: 'welcome'; gatewayId: string; replicas: ReplicaInfo[]; pingIntervalMs: number }
  /** The replica list changed. */
  | { type: 'replicas'; replicas: ReplicaInfo[] }
  /** The gateway is going away: stop using this connection, reconnect after `retryAfterMs`. */
  | { type: 'drain'; retryAfterMs: number; reason: string }
  /** The handshake was refused; the connection closes right after. */
  | { type: 'refused'; code: string; message: string; retryAfterMs: number };

export type AgentMessage =
  /** The agent will not take new streams on this connection. */
  { type: 'draining' };

export const MAX_CONTROL_LINE = 64 * 1024;
export const CONTROL_MESSAGE_INVALID = 'TUNNEL_CONTROL_INVALID';

export function writeMessage(stream: Duplex, message: GatewayMessage | AgentMessage): void {
  if (!stream.writable || stream.destroyed) return;
  stream.write(`${JSON.stringify(message)}\n`);
}

/** Read NDJSON messages from `stream`; calls `onMessage` per line; errors on oversize or bad JSON. */
export function readMessages(
  stream: Duplex,
  onMessage: (message: Record<string, unknown> & { type: string }) => void,
  onError: (error: TetherError) => void,
): void {
  let pending = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    pending += chunk;
    let newline = pending.indexOf('\n');
    while (newline >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      if (line.trim() !== '') {
        let parsed: unknown;
        try {
          parsed = JSON.parse(line);
        } catch {
          onError(new TetherError(CONTROL_MESSAGE_INVALID, 'control message is not JSON'));
          return;
        }
        if (typeof parsed !== 'object' || parsed === null || typeof (parsed as { type?: unknown }).type !== 'string') {
          onError(new TetherError(CONTROL_MESSAGE_INVALID, 'control message has no type'));
          return;
        }
        onMessage(parsed as Record<string, unknown> & { type: string });
      }
      newline = pending.indexOf('\n');
    }
    if (pending.length > MAX_CONTROL_LINE) onError(new TetherError(CONTROL_MESSAGE_INVALID, 'control message too long'));
  });
}
