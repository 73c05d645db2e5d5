/**
 * Schedules: cron (cron-parser, UTC) or a fixed rate. A fire at time T launches the run whose id
 * is derived from (schedule id, T), so every control plane that shares the store computes the
 * same id and the store's primary key (and its unique (schedule_id, fire_time) index) lets exactly
 * one of them insert it. On start the scheduler launches every fire missed since the schedule's
 * last recorded fire (bounded by `maxCatchUp`), then waits for the next one.
 */
import { createHash } from 'node:crypto';
import { CronExpressionParser } from 'cron-parser';
import { TetherError, getErrorMessage } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { ControlErrorCode } from './errors.js';
import type { ScheduleRecord } from './store/repository.js';

/** Finest rate: one second (Flyte's is a minute; tests and dev want faster). */
export const MIN_RATE_MS = 1_000;
export const DEFAULT_MAX_CATCH_UP = 1_000;

export function scheduleRunId(scheduleId: string, fireTime: number): string {
  return `s${createHash('sha256').update(`${scheduleId}\0${fireTime}`).digest('hex').slice(0, 24)}`;
}

export function checkCron(expression: string): void {
  try {
    CronExpressionParser.parse(expression, { tz: 'UTC', strict: false });
  } catch (reason) {
    throw new TetherError(ControlErrorCode.SCHEDULE_INVALID, `cron expression ${JSON.stringify(expression)}: ${getErrorMessage(reason)}`);
  }
}

type Timing = Pick<ScheduleRecord, 'kind' | 'cron' | 'rateMs' | 'startAt'>;

/** Fire times t with `after < t <= until`, ascending, at most `max`. */
export function fireTimes(schedule: Timing, after: number, until: number, max: number): number[] {
  const times: number[] = [];
  if (until <= after || max <= 0) return times;
  if (schedule.kind === 'rate') {
    const rate = schedule.rateMs ?? 0;
    if (rate < MIN_RATE_MS) throw new TetherError(ControlErrorCode.SCHEDULE_INVALID, `rate ${rate} ms is below ${MIN_RATE_MS} ms`);
    const from = Math.max(after, schedule.startAt);
    let k = Math.floor((from - schedule.startAt) / rate) + 1;
    for (let t = schedule.startAt + k * rate; t <= until && times.length < max; k += 1, t = schedule.startAt + k * rate) times.push(t);
    return times;
  }
  const expression = CronExpressionParser.parse(schedule.cron ?? '', { tz: 'UTC', currentDate: new Date(Math.max(after, schedule.startAt)) });
  while (times.length < max) {
    const next = expression.next().getTime();
    if (next > until) break;
    times.push(next);
  }
  return times;
}

/** The next fire strictly after `after`. */
export function nextFireTime(schedule: Timing, after: number): number {
  if (schedule.kind === 'rate') {
    const rate = schedule.rateMs ?? MIN_RATE_MS;
    const from = Math.max(after, schedule.startAt);
    return schedule.startAt + (Math.floor((from - schedule.startAt) / rate) + 1) * rate;
  }
  return CronExpressionParser.parse(schedule.cron ?? '', { tz: 'UTC', currentDate: new Date(Math.max(after, schedule.startAt)) }).next().getTime();
}

export interface SchedulerHost {
  /** Launch every due fire of every active schedule up to `now`; returns the next fire time (or null). */
  fireDue(now: number): Promise<number | null>;
}

export interface SchedulerOptions {
  host: SchedulerHost;
  logger: Logger;
  /** Longest wait between scans (picks up schedules made by another control plane); default 30 s. */
  maxWaitMs?: number;
  now?: () => number;
}

/** The timer loop around `fireDue`: catch up at start, then sleep until the next fire. */
export class Scheduler {
  readonly #options: SchedulerOptions;
  #timer: NodeJS.Timeout | null = null;
  #running: Promise<void> | null = null;
  #stopped = false;
  #again = false;

  constructor(options: SchedulerOptions) {
    this.#options = options;
  }

  /** Catch up on missed fires, then keep firing. Resolves when the catch-up is done. */
  async start(): Promise<void> {
    await this.#tick();
  }

  /** A schedule changed: rescan now. */
  poke(): void {
    if (this.#stopped) return;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    void this.#tick();
  }

  #tick(): Promise<void> {
    if (this.#running !== null) {
      // A change during a scan: scan once more when this one ends.
      this.#again = true;
      return this.#running;
    }
    const now = this.#options.now ?? Date.now;
    this.#running = (async () => {
      let next: number | null = null;
      do {
        this.#again = false;
        try {
          next = await this.#options.host.fireDue(now());
        } catch (reason) {
          this.#options.logger.error({ err: reason }, 'scheduler: firing due schedules failed');
        }
      } while (this.#again && !this.#stopped);
      this.#running = null;
      if (this.#stopped) return;
      const maxWait = this.#options.maxWaitMs ?? 30_000;
      const wait = next === null ? maxWait : Math.min(maxWait, Math.max(0, next - now()));
      if (this.#timer !== null) clearTimeout(this.#timer);
      this.#timer = setTimeout(() => {
        this.#timer = null;
        void this.#tick();
      }, wait);
    })();
    return this.#running;
  }

  async close(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    await this.#running;
  }
}
