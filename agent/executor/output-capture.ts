/**
 * stdout and stderr go to log files in the run's folder, under one byte cap for both. Writes
 * respect the file's backpressure (the pipe is paused while the file catches up). Past the cap,
 * policy `truncate` writes one note line per stream and drops the rest while draining the pipes
 * (the task never blocks on a full pipe); policy `fail` calls `onLimit` (the run kills the task).
 */
import { createWriteStream } from 'node:fs';
import type { WriteStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';

export type OutputLimitPolicy = 'fail' | 'truncate';

export class OutputCapture {
  readonly #maxBytes: number;
  readonly #policy: OutputLimitPolicy;
  readonly #onLimit: () => void;
  readonly #files: WriteStream[] = [];
  #used = 0;
  exceeded = false;

  constructor(maxBytes: number, policy: OutputLimitPolicy, onLimit: () => void) {
    this.#maxBytes = maxBytes;
    this.#policy = policy;
    this.#onLimit = onLimit;
  }

  get bytes(): number {
    return this.#used;
  }

  attach(source: Readable, path: string): void {
    const file = createWriteStream(path);
    this.#files.push(file);
    let noted = false;
    file.on('error', () => source.resume());
    source.on('data', (chunk: Buffer) => {
      const room = this.#maxBytes - this.#used;
      const part = chunk.length <= room ? chunk : chunk.subarray(0, Math.max(0, room));
      this.#used += part.length;
      if (part.length > 0 && !file.write(part)) {
        source.pause();
        file.once('drain', () => source.resume());
      }
      if (part.length < chunk.length) {
        if (!this.exceeded) {
          this.exceeded = true;
          if (this.#policy === 'fail') this.#onLimit();
        }
        if (!noted && this.#policy === 'truncate') {
          noted = true;
          file.write(`\n[tether: output truncated at ${this.#maxBytes} bytes]\n`);
        }
      }
    });
    source.once('end', () => file.end());
    source.once('error', () => file.end());
  }

  /** Resolves when every log file is flushed and closed. */
  async close(): Promise<void> {
    for (const file of this.#files) if (!file.writableEnded) file.end();
    await Promise.all(this.#files.map((file) => finished(file).catch(() => undefined)));
  }
}
