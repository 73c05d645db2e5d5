/**
 * Finds message boundaries in one direction of an HTTP/1.1 byte stream without building a message
 * object: heads are collected whole and handed to the owner, who says what to forward in their
 * place and how the body is delimited; body bytes are passed on as they arrive (Content-Length:
 * counted; chunked: chunk-size lines and trailers checked whole, data passed through).
 *
 * A head may be held (the owner decides asynchronously, or must wait until the connection is
 * idle): everything after it is kept until `release()` or `takeHeld()`.
 */
import type { BodyFraming, HeadError } from './h1-head.js';
import { headEnd } from './h1-head.js';

/** What the owner decides for a head. */
export interface HeadDecision {
  /** Bytes to forward instead of the head (null: forward the head as received). */
  bytes: Buffer | null;
  /** The body that follows, `interim` for a 1xx response, `raw` for bytes without HTTP after it (101). */
  framing: BodyFraming | 'interim' | 'raw';
}

export interface FramerSink {
  /** A complete head at `buffer[start, end)`; return the decision, or null to hold it. */
  onHead(buffer: Buffer, start: number, end: number): HeadDecision | null;
  /** Bytes to pass on unchanged; `body` is false for heads, chunk-size lines and trailers. */
  forward(bytes: Buffer, body: boolean): void;
  /** The message whose head came last is complete (body and trailers included). */
  onMessageEnd(): void;
  onError(error: HeadError): void;
}

const enum State {
  Head,
  Length,
  ChunkLine,
  ChunkData,
  ChunkEnd,
  Trailers,
  UntilClose,
  Raw,
  Held,
  Failed,
}

const MAX_LINE_BYTES = 4096;
const MAX_TRAILER_BYTES = 16 * 1024;
const CHUNK_LINE = /^([0-9A-Fa-f]{1,15})(?:[ \t]*;[\x20-\x7e\t]*)?$/;
const EMPTY = Buffer.alloc(0);

export class H1Framer {
  private state = State.Head;
  /** Bytes of an incomplete head or line. */
  private partial: Buffer = EMPTY;
  private remaining = 0;
  private trailerBytes = 0;
  /** While held: the head, then everything after it. */
  private held: Buffer[] = [];

  constructor(
    private readonly sink: FramerSink,
    private readonly maxHeadBytes: number,
  ) {}

  /** The framer is between messages with nothing buffered (no partial head). */
  get idle(): boolean {
    return this.state === State.Head && this.partial.length === 0;
  }

  get isHeld(): boolean {
    return this.state === State.Held;
  }

  /** A head has started arriving but is not complete. */
  get inHead(): boolean {
    return this.state === State.Head && this.partial.length > 0;
  }

  /** `until close` framing or raw bytes: the message ends only with the stream. */
  get endsWithClose(): boolean {
    return this.state === State.UntilClose || this.state === State.Raw;
  }

  push(chunk: Buffer): void {
    if (this.state === State.Held) {
      this.held.push(chunk);
      return;
    }
    if (this.state === State.Failed) return;
    this.scan(chunk, 0);
  }

  /**
   * Continue a held head with `decision`: forward its replacement (or the head itself), then
   * whatever arrived after it.
   */
  release(decision: HeadDecision): void {
    if (this.state !== State.Held) return;
    const [head, ...rest] = this.held;
    this.held = [];
    this.state = State.Head;
    this.apply(decision, head as Buffer, 0, (head as Buffer).length);
    for (const chunk of rest) this.push(chunk);
  }

  /** The held head and everything after it, as received; the framer is done. */
  takeHeld(): Buffer {
    const bytes = Buffer.concat(this.held);
    this.held = [];
    this.state = State.Failed;
    return bytes;
  }

  private fail(error: HeadError): void {
    this.state = State.Failed;
    this.partial = EMPTY;
    this.sink.onError(error);
  }

  private scan(input: Buffer, from: number): void {
    let chunk = input;
    let pos = from;
    while (pos < chunk.length) {
      switch (this.state) {
        case State.Head: {
          if (this.partial.length > 0) {
            chunk = Buffer.concat([this.partial, chunk.subarray(pos)]);
            pos = 0;
            this.partial = EMPTY;
          }
          // Empty lines before a request line are ignored (RFC 9112 §2.2).
          while (chunk[pos] === 0x0d && chunk[pos + 1] === 0x0a) pos += 2;
          if (pos >= chunk.length) return;
          const end = headEnd(chunk, pos);
          if (end === -1) {
            if (chunk.length - pos > this.maxHeadBytes) return this.fail({ code: 'HEADERS_TOO_LARGE', message: `request head exceeds ${this.maxHeadBytes} bytes` });
            this.partial = Buffer.from(chunk.subarray(pos));
            return;
          }
          if (end - pos > this.maxHeadBytes) return this.fail({ code: 'HEADERS_TOO_LARGE', message: `head exceeds ${this.maxHeadBytes} bytes` });
          const decision = this.sink.onHead(chunk, pos, end);
          if (decision === null) {
            this.state = State.Held;
            this.held = [chunk.subarray(pos, end)];
            if (end < chunk.length) this.held.push(chunk.subarray(end));
            return;
          }
          this.apply(decision, chunk, pos, end);
          pos = end;
          break;
        }
        case State.Length:
        case State.ChunkData: {
          const take = Math.min(this.remaining, chunk.length - pos);
          this.sink.forward(pos === 0 && take === chunk.length ? chunk : chunk.subarray(pos, pos + take), true);
          pos += take;
          this.remaining -= take;
          if (this.remaining === 0) {
            if (this.state === State.Length) this.endMessage();
            else {
              this.state = State.ChunkEnd;
              this.remaining = 2;
            }
          }
          break;
        }
        case State.ChunkEnd: {
          // The CRLF after a chunk's data.
          const byte = chunk[pos] as number;
          if ((this.remaining === 2 && byte !== 0x0d) || (this.remaining === 1 && byte !== 0x0a)) return this.fail({ code: 'BAD_REQUEST', message: 'chunk data not followed by CRLF' });
          this.sink.forward(chunk.subarray(pos, pos + 1), false);
          pos++;
          if (--this.remaining === 0) this.state = State.ChunkLine;
          break;
        }
        case State.ChunkLine:
        case State.Trailers: {
          const lf = chunk.indexOf(0x0a, pos);
          if (lf === -1) {
            const size = this.partial.length + chunk.length - pos;
            if (size > MAX_LINE_BYTES) return this.fail({ code: 'BAD_REQUEST', message: 'chunk-size or trailer line too long' });
            this.partial = Buffer.concat([this.partial, chunk.subarray(pos)]);
            return;
          }
          const lineBytes = this.partial.length > 0 ? Buffer.concat([this.partial, chunk.subarray(pos, lf + 1)]) : chunk.subarray(pos, lf + 1);
          this.partial = EMPTY;
          pos = lf + 1;
          if (lineBytes.length > MAX_LINE_BYTES) return this.fail({ code: 'BAD_REQUEST', message: 'chunk-size or trailer line too long' });
          if (lineBytes.length < 2 || lineBytes[lineBytes.length - 2] !== 0x0d) return this.fail({ code: 'BAD_REQUEST', message: 'line breaks must be CRLF' });
          const line = lineBytes.toString('latin1', 0, lineBytes.length - 2);
          if (line.includes('\r')) return this.fail({ code: 'BAD_REQUEST', message: 'bare CR in a chunk line' });
          if (this.state === State.ChunkLine) {
            const match = CHUNK_LINE.exec(line);
            if (match === null) return this.fail({ code: 'BAD_REQUEST', message: `invalid chunk-size line ${JSON.stringify(line.slice(0, 40))}` });
            const size = parseInt(match[1] as string, 16);
            if (!Number.isSafeInteger(size)) return this.fail({ code: 'BAD_REQUEST', message: 'chunk size too large' });
            this.sink.forward(lineBytes, false);
            if (size === 0) {
              this.state = State.Trailers;
              this.trailerBytes = 0;
            } else {
              this.state = State.ChunkData;
              this.remaining = size;
            }
          } else {
            this.trailerBytes += lineBytes.length;
            if (this.trailerBytes > MAX_TRAILER_BYTES) return this.fail({ code: 'HEADERS_TOO_LARGE', message: 'trailers too large' });
            if (line.length > 0 && (line.charCodeAt(0) === 0x20 || line.charCodeAt(0) === 0x09 || !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*$/.test(line))) {
              return this.fail({ code: 'BAD_REQUEST', message: 'invalid trailer line' });
            }
            this.sink.forward(lineBytes, false);
            if (line.length === 0) this.endMessage();
          }
          break;
        }
        case State.UntilClose:
        case State.Raw:
          this.sink.forward(pos === 0 ? chunk : chunk.subarray(pos), true);
          return;
        case State.Held:
          this.held.push(chunk.subarray(pos));
          return;
        case State.Failed:
          return;
      }
    }
  }

  private apply(decision: HeadDecision, chunk: Buffer, start: number, end: number): void {
    this.sink.forward(decision.bytes ?? chunk.subarray(start, end), false);
    const framing = decision.framing;
    if (framing === 'interim') return; // another head follows
    if (framing === 'raw') {
      this.state = State.Raw;
      return;
    }
    switch (framing.kind) {
      case 'none':
        this.endMessage();
        return;
      case 'length':
        this.state = State.Length;
        this.remaining = framing.length;
        return;
      case 'chunked':
        this.state = State.ChunkLine;
        return;
      case 'close':
        this.state = State.UntilClose;
        return;
    }
  }

  private endMessage(): void {
    this.state = State.Head;
    this.sink.onMessageEnd();
  }
}
