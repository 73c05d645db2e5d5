/**
 * Fail a test file when it leaks sockets, servers, timers or child processes.
 *
 * `failOnLeaks(test)` records the process's active resources before the file's first test and,
 * after the last one, waits (bounded, checking after each event-loop turn) for them to return to
 * that baseline. Anything left is listed in the failure.
 */
import type { TestFn } from 'ava';

const SETTLE_LIMIT_MS = 3000;

function countByType(list: string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const type of list) counts.set(type, (counts.get(type) ?? 0) + 1);
  return counts;
}

function excess(baseline: Map<string, number>): string[] {
  const now = countByType(process.getActiveResourcesInfo());
  const leaked: string[] = [];
  for (const [type, count] of now) {
    const extra = count - (baseline.get(type) ?? 0);
    if (extra > 0) leaked.push(`${type} x${extra}`);
  }
  return leaked;
}

/** Resolve after the current timers phase, without leaving a timer behind. */
function turn(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function waitForNoLeaks(baseline: Map<string, number>): Promise<string[]> {
  const deadline = Date.now() + SETTLE_LIMIT_MS;
  let leaked = excess(baseline);
  while (leaked.length > 0 && Date.now() < deadline) {
    await new Promise<void>((resolve) => setImmediate(resolve));
    await turn(20);
    leaked = excess(baseline);
  }
  return leaked;
}

export function failOnLeaks<C>(test: TestFn<C>): void {
  let baseline = new Map<string, number>();
  test.before(() => {
    baseline = countByType(process.getActiveResourcesInfo());
  });
  test.after.always('no leaked handles or timers', async (t) => {
    const leaked = await waitForNoLeaks(baseline);
    t.deepEqual(leaked, [], `leaked resources: ${leaked.join(', ')}`);
  });
}
