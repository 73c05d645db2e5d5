import test from 'ava';
import { Backoff } from '../../common/backoff.js';

test('delays grow by the multiplier up to the cap, with jitter inside ±jitter', (t) => {
  const backoff = new Backoff({ initialDelayMs: 100, multiplier: 2, maxDelayMs: 1000, jitter: 0.2 });
  const bases = [100, 200, 400, 800, 1000, 1000];
  for (const base of bases) {
    const delay = backoff.next();
    t.true(delay >= Math.floor(base * 0.8) && delay <= Math.min(1000, Math.ceil(base * 1.2)), `${delay} vs base ${base}`);
  }
  t.is(backoff.attempts, bases.length);
});

test('reset starts over from the initial delay', (t) => {
  const backoff = new Backoff({ initialDelayMs: 50, multiplier: 3, maxDelayMs: 10_000, jitter: 0, random: () => 0.5 });
  t.deepEqual([backoff.next(), backoff.next(), backoff.next()], [50, 150, 450]);
  backoff.reset();
  t.is(backoff.next(), 50);
  t.is(backoff.attempts, 1);
});

test('a server-sent retry delay raises the next delay only', (t) => {
  const backoff = new Backoff({ initialDelayMs: 10, multiplier: 2, maxDelayMs: 60_000, jitter: 0 });
  backoff.setRetryAfter(5000);
  t.is(backoff.next(), 5000);
  t.is(backoff.next(), 20);
});

test('jitter spreads delays of many clients (no thundering herd)', (t) => {
  const delays = new Set<number>();
  for (let i = 0; i < 50; i++) delays.add(new Backoff({ initialDelayMs: 1000, jitter: 0.2 }).next());
  t.true(delays.size > 25, `only ${delays.size} distinct delays out of 50`);
});

test('a server-sent retry delay is spread upwards by jitter, never below it, so clients told the same delay do not return together', (t) => {
  const delays: number[] = [];
  for (let i = 0; i < 50; i++) {
    const backoff = new Backoff({ initialDelayMs: 50, jitter: 0.2 });
    backoff.setRetryAfter(1000);
    delays.push(backoff.next());
  }
  t.true(delays.every((d) => d >= 1000 && d <= 1200), `out of [1000, 1200]: ${delays.join(', ')}`);
  t.true(new Set(delays).size > 25, `only ${new Set(delays).size} distinct delays out of 50`);
  const capped = new Backoff({ initialDelayMs: 50, maxDelayMs: 1000, jitter: 0.2, random: () => 0.99 });
  capped.setRetryAfter(1000);
  t.is(capped.next(), 1000, 'the spread stays within maxDelayMs');
});

test('impossible options are refused', (t) => {
  t.throws(() => new Backoff({ multiplier: 0.5 }), { message: /multiplier/ });
  t.throws(() => new Backoff({ initialDelayMs: 10, maxDelayMs: 5 }), { message: /maxDelayMs/ });
  t.throws(() => new Backoff({ jitter: 2 }), { message: /jitter/ });
});
