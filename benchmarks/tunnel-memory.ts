/**
 * Memory readings for the tunnel benchmark's relay processes (tunnel-stack.ts and
 * tunnel-minimal-relay.ts): on `{ type: 'memory' }` from the parent, a full GC (with
 * `--expose-gc`), then RSS, heap and new-space figures back on the IPC channel. With
 * `TETHER_BENCH_SNAPSHOT_DIR` set, each reading also writes a heap snapshot there (compare two to
 * see what an idle WebSocket holds).
 */
import { join } from 'node:path';
import { getHeapSpaceStatistics, writeHeapSnapshot } from 'node:v8';

export interface MemoryMessage {
  type: 'memory';
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  newSpaceCommitted: number;
  heapCommitted: number;
}

export function answerMemoryRequests(role: string): void {
  process.on('message', (message: { type?: string }) => {
    if (message.type !== 'memory') return;
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    const snapshots = process.env.TETHER_BENCH_SNAPSHOT_DIR;
    if (snapshots !== undefined) writeHeapSnapshot(join(snapshots, `${role}-${Date.now()}.heapsnapshot`));
    const usage = process.memoryUsage();
    const newSpaceCommitted = getHeapSpaceStatistics().find((space) => space.space_name === 'new_space')?.space_size ?? 0;
    const reply: MemoryMessage = { type: 'memory', rss: usage.rss, heapUsed: usage.heapUsed, external: usage.external, arrayBuffers: usage.arrayBuffers, newSpaceCommitted, heapCommitted: usage.heapTotal };
    process.send?.(reply);
  });
}
