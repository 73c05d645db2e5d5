/**
 * HTTP/2 PING liveness for one tunnel session, used on both ends: a PING every `intervalMs`; when
 * an acknowledgement does not come within `timeoutMs`, `onDead` runs (once) and the keeper stops.
 */
import type { Http2Session } from 'node:http2';

export interface LivenessOptions {
  intervalMs: number;
  timeoutMs: number;
  onRtt?: (ms: number) => void;
  onDead: () => void;
}

export class PingKeeper {
  private interval: NodeJS.Timeout | null = null;
  private deadline: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(
    private readonly session: Http2Session,
    private readonly options: LivenessOptions,
  ) {}

  start(): void {
    if (this.stopped || this.interval !== null) return;
    this.interval = setInterval(() => this.probe(), this.options.intervalMs);
    this.interval.unref();
  }

  /** Send one PING now (unless one is outstanding). */
  probe(): void {
    if (this.stopped || this.deadline !== null || this.session.destroyed) return;
    this.deadline = setTimeout(() => {
      this.deadline = null;
      this.fail();
    }, this.options.timeoutMs);
    this.deadline.unref();
    try {
      this.session.ping((error, duration) => {
        if (this.deadline !== null) clearTimeout(this.deadline);
        this.deadline = null;
        if (this.stopped) return;
        if (error !== null) return; // session closing; its own close handling takes over
        this.options.onRtt?.(duration);
      });
    } catch {
      // The session is closing; nothing to probe.
      if (this.deadline !== null) clearTimeout(this.deadline);
      this.deadline = null;
    }
  }

  private fail(): void {
    if (this.stopped) return;
    this.stop();
    this.options.onDead();
  }

  stop(): void {
    this.stopped = true;
    if (this.interval !== null) clearInterval(this.interval);
    if (this.deadline !== null) clearTimeout(this.deadline);
    this.interval = null;
    this.deadline = null;
  }
}
