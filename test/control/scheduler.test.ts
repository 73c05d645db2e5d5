import test from 'ava';
import { silentLogger } from '../../common/log.js';
import { fireTimes, nextFireTime, Scheduler, scheduleRunId } from '../../control/schedules.js';
import { failOnLeaks } from '../helpers/leaks.js';

failOnLeaks(test);

test('the scheduler catches up at start, then sleeps until the next fire; poke rescans; close stops it', async (t) => {
  const calls: number[] = [];
  const waiters = new Map<number, () => void>();
  const reached = (count: number): Promise<void> => new Promise((resolve) => waiters.set(count, resolve));
  const reachedThird = reached(3);
  const scheduler = new Scheduler({
    logger: silentLogger(),
    maxWaitMs: 60_000,
    host: {
      async fireDue(now) {
        calls.push(now);
        waiters.get(calls.length)?.();
        // The next fire is 20 ms away twice, then nothing for a minute.
        return calls.length < 3 ? now + 20 : null;
      },
    },
  });
  await scheduler.start();
  t.is(calls.length, 1, 'start() resolves after the first (catch-up) scan');
  await reachedThird;
  // A poke (during or after the third scan) leads to one more scan.
  const reachedFourth = reached(4);
  scheduler.poke();
  await reachedFourth;
  await scheduler.close();
  t.is(calls.length, 4);
  const after = calls.length;
  scheduler.poke();
  t.is(calls.length, after, 'no scans after close');
});

test('fire times: rate schedules fire at start + k·rate (k ≥ 1); cron in UTC; bounded catch-up', (t) => {
  const start = Date.UTC(2026, 0, 1, 0, 0, 0);
  const rate = { kind: 'rate' as const, cron: null, rateMs: 10_000, startAt: start };
  t.deepEqual(fireTimes(rate, start, start + 35_000, 100), [start + 10_000, start + 20_000, start + 30_000]);
  t.deepEqual(fireTimes(rate, start + 20_000, start + 35_000, 100), [start + 30_000]);
  t.deepEqual(fireTimes(rate, start, start + 1_000_000, 2), [start + 10_000, start + 20_000]);
  t.is(nextFireTime(rate, start + 30_000), start + 40_000);
  const cron = { kind: 'cron' as const, cron: '0 */6 * * *', rateMs: null, startAt: start };
  t.deepEqual(fireTimes(cron, start, start + 86_400_000, 100), [6, 12, 18, 24].map((h) => start + h * 3_600_000));
  t.is(nextFireTime(cron, start + 6 * 3_600_000), start + 12 * 3_600_000);
  t.is(scheduleRunId('s', 1), scheduleRunId('s', 1));
  t.not(scheduleRunId('s', 1), scheduleRunId('s', 2));
  t.not(scheduleRunId('s', 1), scheduleRunId('t', 1));
});
