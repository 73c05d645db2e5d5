/**
 * Jittered exponential backoff, with the discipline of grpc-js's BackoffTimeout: start at
 * `initialDelayMs`, multiply by `multiplier` up to `maxDelayMs`, spread each delay by ±`jitter`,
 * and reset only after real progress. A server-sent retry delay (`retryAfterMs`) takes precedence
 * for the next attempt when it is longer, spread upwards by `jitter` (never below the server's
 * minimum): every agent of a restarted gateway gets the same retry-after, and without the spread
 * they would all come back in the same millisecond.
 */
export interface BackoffOptions {
  /** First delay, ms. Default 1000. */
  initialDelayMs?: number;
  /** Growth factor per attempt. Default 1.6. */
  multiplier?: number;
  /** Upper bound, ms. Default 120000. */
  maxDelayMs?: number;
  /** Relative spread, 0..1. Default 0.2 (±20 %). */
  jitter?: number;
  /** Random source in [0, 1); injectable for tests. Default Math.random. */
  random?: () => number;
}

export const DEFAULT_BACKOFF: Required<Omit<BackoffOptions, 'random'>> = {
  initialDelayMs: 1000,
  multiplier: 1.6,
  maxDelayMs: 120_000,
  jitter: 0.2,
};

export class Backoff {
  private readonly options: Required<BackoffOptions>;
  /** Un-jittered delay of the next attempt. */
  private nextBaseMs: number;
  /** Server-sent minimum for the next attempt only (e.g. from a drain notice). */
  private retryAfterMs = 0;
  private attemptCount = 0;

  constructor(options: BackoffOptions = {}) {
    this.options = { ...DEFAULT_BACKOFF, random: Math.random, ...options };
    const { initialDelayMs, multiplier, maxDelayMs, jitter } = this.options;
    if (!(initialDelayMs >= 0)) throw new RangeError('backoff.initialDelayMs: must be >= 0');
    if (!(multiplier >= 1)) throw new RangeError('backoff.multiplier: must be >= 1');
    if (!(maxDelayMs >= initialDelayMs)) throw new RangeError('backoff.maxDelayMs: must be >= initialDelayMs');
    if (!(jitter >= 0 && jitter <= 1)) throw new RangeError('backoff.jitter: must be within 0..1');
    this.nextBaseMs = initialDelayMs;
  }

  /** How many delays were handed out since the last reset. */
  get attempts(): number {
    return this.attemptCount;
  }

  /** The delay to wait before the next attempt; advances the sequence. */
  next(): number {
    const { multiplier, maxDelayMs, jitter, random } = this.options;
    const base = this.nextBaseMs;
    this.nextBaseMs = Math.min(base * multiplier, maxDelayMs);
    this.attemptCount++;
    const spread = base * jitter * (random() * 2 - 1);
    const delay = Math.max(0, Math.min(maxDelayMs, base + spread));
    const floor = this.retryAfterMs;
    this.retryAfterMs = 0;
    if (floor > delay) return Math.round(Math.min(maxDelayMs, floor * (1 + jitter * random())));
    return Math.round(delay);
  }

  /** Honour a server-sent retry delay for the next attempt. */
  setRetryAfter(ms: number): void {
    if (ms > 0) this.retryAfterMs = Math.min(ms, this.options.maxDelayMs);
  }

  /** Call after real progress (a connection that carried traffic or a message received). */
  reset(): void {
    this.nextBaseMs = this.options.initialDelayMs;
    this.attemptCount = 0;
  }
}
