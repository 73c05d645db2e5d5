/**
 * Fail a test file when it leaks sockets, servers, timers or child processes.
 *
 * `failOnLeaks(test)` watches, from before the file's first test, every socket, server, child
 * process and timer created (through `async_hooks`, so unref'd ones count too) and, after the last
 * test, waits a bounded time for them to be closed or to have fired. Whatever is still open is a
 * leak and fails the file, listed by type.
 */
import { createHook } from 'node:async_hooks';
import type { TestFn } from 'ava';

const SETTLE_LIMIT_MS = 3000;
const WATCHED = new Set(['TCPWRAP', 'TCPSERVERWRAP', 'PIPEWRAP', 'PIPESERVERWRAP', 'PROCESSWRAP', 'UDPWRAP', 'Timeout']);
/**
 * Timers that belong to the process, not to the code under test: the global `fetch` (undici)
 * keeps one unref'd timer wheel for its whole life, and this file's own settle loop.
 */
const IGNORED_TIMER_SOURCES = [/node:internal\/deps\/undici/, /test\/helpers\/leaks\.ts/];

/** Judge a new timer by the frames of whoever created it (below `new Timeout`, not this hook). */
function isIgnoredTimer(): boolean {
  const lines = (new Error().stack ?? '').split('\n');
  const start = lines.findIndex((line) => line.includes('new Timeout'));
  const creator = lines.slice(start + 1, start + 4).join('\n');
  return IGNORED_TIMER_SOURCES.some((pattern) => pattern.test(creator));
}

interface Tracker {
  live: Map<number, string>;
  stop(): void;
}

function startTracking(): Tracker {
  const live = new Map<number, string>();
  const hook = createHook({
    init(asyncId, type) {
      if (!WATCHED.has(type)) return;
      if (type === 'Timeout' && isIgnoredTimer()) return;
      live.set(asyncId, type);
    },
    destroy(asyncId) {
      live.delete(asyncId);
    },
  });
  hook.enable();
  return { live, stop: () => hook.disable() };
}

function summary(live: Map<number, string>): string[] {
  const counts = new Map<string, number>();
  for (const type of live.values()) counts.set(type, (counts.get(type) ?? 0) + 1);
  return [...counts].map(([type, count]) => `${type} x${count}`).sort();
}

/** Wait until `live` is empty or the limit passes; polls once per event-loop turn plus 20 ms. */
async function settle(live: Map<number, string>): Promise<void> {
  const deadline = Date.now() + SETTLE_LIMIT_MS;
  while (live.size > 0 && Date.now() < deadline) {
    await new Promise<void>((resolve) => setImmediate(resolve));
    await new Promise<void>((resolve) => setTimeout(resolve, 20));
  }
}

export function failOnLeaks<C>(test: TestFn<C>): void {
  let tracker: Tracker | null = null;
  test.before(() => {
    tracker = startTracking();
  });
  test.after.always('no leaked sockets, servers, child processes or timers', async (t) => {
    if (tracker === null) return;
    const { live } = tracker;
    await settle(live);
    tracker.stop();
    const leaked = summary(live);
    t.deepEqual(leaked, [], `leaked resources: ${leaked.join(', ')}`);
  });
}
