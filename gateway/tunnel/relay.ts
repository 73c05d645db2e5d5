/**
 * Byte relays used on both ends of the tunnel: `from.pipe(to)` reduced to one 'data' listener that
 * also counts the bytes. `pipe` adds eight listeners, and a second 'data' listener for a byte
 * metric makes every emit copy the listener array; thousands of idle WebSockets hold these, and
 * every response body chunk pays for them.
 */
import type { Readable, Writable } from 'node:stream';

export interface ByteCounter {
  inc(value: number): void;
}

/**
 * Move `from`'s bytes into `to`: pause on a full buffer, resume on 'drain', end `to` at `from`'s
 * end. Once `to` is destroyed the rest is counted and dropped, not written (whoever destroyed it
 * ends the exchange; a paused `from` is resumed by that teardown). Errors and close are the
 * caller's to handle.
 */
export function relay(from: Readable, to: Writable, counter?: ByteCounter): void {
  from.on('data', (chunk: Buffer) => {
    counter?.inc(chunk.length);
    if (to.destroyed) return;
    if (!to.write(chunk)) from.pause();
  });
  to.on('drain', () => from.resume());
  from.on('end', () => to.end());
}
