/**
 * HTTP/2 on the wire, by hand (RFC 9113 framing, RFC 7541 HPACK literals): enough to build valid
 * and broken frames byte by byte, and to read the frames a peer sends back (their headers only;
 * header blocks are not decoded). The fuzz campaign and the flood tests write these on raw
 * sockets, where Node's own HTTP/2 client would refuse to send anything malformed.
 */
import type { Socket } from 'node:net';

// The RFC's constants, shared with the gateway's own frame reader (gateway/binding/h2-frames.ts).
export { Flag, FrameType, PREFACE, Setting } from '../../gateway/binding/h2-frames.js';
import { Flag, FrameType, PREFACE } from '../../gateway/binding/h2-frames.js';


/** Error codes (RFC 9113 §7) by number, for messages. */
export const ERROR_NAMES: Record<number, string> = {
  0x0: 'NO_ERROR',
  0x1: 'PROTOCOL_ERROR',
  0x2: 'INTERNAL_ERROR',
  0x3: 'FLOW_CONTROL_ERROR',
  0x4: 'SETTINGS_TIMEOUT',
  0x5: 'STREAM_CLOSED',
  0x6: 'FRAME_SIZE_ERROR',
  0x7: 'REFUSED_STREAM',
  0x8: 'CANCEL',
  0x9: 'COMPRESSION_ERROR',
  0xa: 'CONNECT_ERROR',
  0xb: 'ENHANCE_YOUR_CALM',
  0xc: 'INADEQUATE_SECURITY',
  0xd: 'HTTP_1_1_REQUIRED',
};

export function errorName(code: number): string {
  return ERROR_NAMES[code] ?? `0x${code.toString(16)}`;
}

/** One frame: a 9-byte header (the length is the payload's unless `length` overrides it) and the payload. */
export function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0), length: number = payload.length): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(length & 0xffffff, 0, 3);
  head[3] = type & 0xff;
  head[4] = flags & 0xff;
  head.writeUInt32BE(streamId >>> 0, 5);
  return Buffer.concat([head, payload]);
}

export function settingsFrame(pairs: Array<[number, number]>, flags = 0): Buffer {
  const payload = Buffer.alloc(pairs.length * 6);
  pairs.forEach(([id, value], i) => {
    payload.writeUInt16BE(id & 0xffff, i * 6);
    payload.writeUInt32BE(value >>> 0, i * 6 + 2);
  });
  return frame(FrameType.SETTINGS, flags, 0, payload);
}

export const SETTINGS_ACK = frame(FrameType.SETTINGS, Flag.ACK, 0);

export function pingFrame(data: Buffer, ack = false): Buffer {
  return frame(FrameType.PING, ack ? Flag.ACK : 0, 0, data);
}

export function rstStreamFrame(streamId: number, code: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(code >>> 0);
  return frame(FrameType.RST_STREAM, 0, streamId, payload);
}

export function windowUpdateFrame(streamId: number, increment: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(increment >>> 0);
  return frame(FrameType.WINDOW_UPDATE, 0, streamId, payload);
}

export function goawayFrame(lastStreamId: number, code: number, debug: Buffer = Buffer.alloc(0)): Buffer {
  const payload = Buffer.alloc(8);
  payload.writeUInt32BE(lastStreamId >>> 0);
  payload.writeUInt32BE(code >>> 0, 4);
  return frame(FrameType.GOAWAY, 0, 0, Buffer.concat([payload, debug]));
}

export function dataFrame(streamId: number, data: Buffer | string, endStream = false): Buffer {
  return frame(FrameType.DATA, endStream ? Flag.END_STREAM : 0, streamId, Buffer.isBuffer(data) ? data : Buffer.from(data));
}

export function headersFrame(streamId: number, block: Buffer, options: { endStream?: boolean; endHeaders?: boolean } = {}): Buffer {
  const flags = (options.endStream === true ? Flag.END_STREAM : 0) | (options.endHeaders === false ? 0 : Flag.END_HEADERS);
  return frame(FrameType.HEADERS, flags, streamId, block);
}

export function continuationFrame(streamId: number, block: Buffer, endHeaders: boolean): Buffer {
  return frame(FrameType.CONTINUATION, endHeaders ? Flag.END_HEADERS : 0, streamId, block);
}

// ---- HPACK (RFC 7541), encoding side only: literals and static-table references -------------

/** An HPACK integer with an `prefixBits`-bit prefix; `first` carries the pattern bits above the prefix. */
export function hpackInteger(value: number, prefixBits: number, first = 0): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([first | value]);
  const out = [first | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return Buffer.from(out);
}

/** A string literal, not Huffman-coded. */
export function hpackString(value: Buffer | string): Buffer {
  const bytes = Buffer.isBuffer(value) ? value : Buffer.from(value, 'latin1');
  return Buffer.concat([hpackInteger(bytes.length, 7, 0x00), bytes]);
}

/** Literal header field without indexing, new name (names must be lowercase to be valid). */
export function hpackLiteral(name: Buffer | string, value: Buffer | string): Buffer {
  return Buffer.concat([Buffer.from([0x00]), hpackString(name), hpackString(value)]);
}

/** Literal header field with incremental indexing, new name: it enters the peer's dynamic table. */
export function hpackIndexedLiteral(name: Buffer | string, value: Buffer | string): Buffer {
  return Buffer.concat([Buffer.from([0x40]), hpackString(name), hpackString(value)]);
}

/** Indexed header field (static table 1-61, dynamic from 62). */
export function hpackIndexed(index: number): Buffer {
  return hpackInteger(index, 7, 0x80);
}

/** Dynamic table size update. */
export function hpackTableSize(size: number): Buffer {
  return hpackInteger(size, 5, 0x20);
}

/** A header block of literals (no indexing). */
export function headerBlock(fields: Array<[string, string]>): Buffer {
  return Buffer.concat(fields.map(([name, value]) => hpackLiteral(name, value)));
}

// ---- reading frames -------------------------------------------------------------------------

export interface Frame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

/** Splits received bytes into frames; bytes of an incomplete frame wait for the rest. */
export class FrameReader {
  private buffer: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    const frames: Frame[] = [];
    while (this.buffer.length >= 9) {
      const length = this.buffer.readUIntBE(0, 3);
      if (this.buffer.length < 9 + length) break;
      frames.push({
        type: this.buffer[3] as number,
        flags: this.buffer[4] as number,
        streamId: this.buffer.readUInt32BE(5) & 0x7fffffff,
        payload: this.buffer.subarray(9, 9 + length),
      });
      this.buffer = this.buffer.subarray(9 + length);
    }
    return frames;
  }
}

/** What a peer's frames and the socket said, as they arrived. */
export interface PeerLog {
  /** GOAWAY received: its error code and last stream id. */
  goaway: { code: number; lastStreamId: number; debug: string } | null;
  /** RST_STREAM received, by stream id: the error code. */
  resets: Map<number, number>;
  /** Streams a HEADERS frame arrived on (answers from a server; requests from a client). */
  headers: Set<number>;
  /** Streams that ended (END_STREAM seen) from the peer's side. */
  ended: Set<number>;
  /** PING acknowledgements received (their 8 bytes, hex). */
  pingAcks: string[];
  settingsAcks: number;
  /** The peer's SETTINGS frames (not acks). */
  settings: number;
  /** Frames counted by type. */
  counts: Map<number, number>;
  /** Bytes received. */
  bytes: number;
  closed: boolean;
}

/**
 * Reads frames off `socket` into a `PeerLog` (skipping the client preface first when the peer is
 * the HTTP/2 client: a gateway on a tunnel connection), hands each frame to `onFrame`, and calls
 * `changed` after every chunk and at close, for event-driven waits.
 */
export function logPeer(socket: Socket, changed: () => void, skipPreface = false, onFrame?: (f: Frame) => void): PeerLog {
  const log: PeerLog = { goaway: null, resets: new Map(), headers: new Set(), ended: new Set(), pingAcks: [], settingsAcks: 0, settings: 0, counts: new Map(), bytes: 0, closed: false };
  const reader = new FrameReader();
  let skip = skipPreface ? PREFACE.length : 0;
  socket.on('data', (chunk: Buffer) => {
    log.bytes += chunk.length;
    let rest = chunk;
    if (skip > 0) {
      const n = Math.min(skip, rest.length);
      skip -= n;
      rest = rest.subarray(n);
    }
    for (const f of reader.push(rest)) {
      log.counts.set(f.type, (log.counts.get(f.type) ?? 0) + 1);
      onFrame?.(f);
      switch (f.type) {
        case FrameType.GOAWAY:
          if (f.payload.length >= 8) log.goaway = { lastStreamId: f.payload.readUInt32BE(0) & 0x7fffffff, code: f.payload.readUInt32BE(4), debug: f.payload.subarray(8).toString('latin1') };
          break;
        case FrameType.RST_STREAM:
          if (f.payload.length >= 4) log.resets.set(f.streamId, f.payload.readUInt32BE(0));
          break;
        case FrameType.HEADERS:
          log.headers.add(f.streamId);
          if ((f.flags & Flag.END_STREAM) !== 0) log.ended.add(f.streamId);
          break;
        case FrameType.DATA:
          if ((f.flags & Flag.END_STREAM) !== 0) log.ended.add(f.streamId);
          break;
        case FrameType.PING:
          if ((f.flags & Flag.ACK) !== 0) log.pingAcks.push(f.payload.toString('hex'));
          break;
        case FrameType.SETTINGS:
          if ((f.flags & Flag.ACK) !== 0) log.settingsAcks++;
          else log.settings++;
          break;
      }
    }
    changed();
  });
  socket.once('close', () => {
    log.closed = true;
    changed();
  });
  return log;
}

/**
 * One end of a raw HTTP/2 connection under test: the peer's frames logged as they arrive, event
 * driven waits on that log, and (when `autoAck`) the PINGs and SETTINGS of the peer acknowledged,
 * as a live endpoint would (the gateway and the agent PING their tunnels).
 */
export class RawPeer {
  readonly log: PeerLog;
  private readonly listeners = new Set<() => void>();
  autoAck: boolean;
  /** Called for every HEADERS frame the peer sends, with its stream id (before waits are woken). */
  onHeaders: ((streamId: number) => void) | null = null;

  constructor(
    readonly socket: Socket,
    options: { skipPreface?: boolean; autoAck?: boolean } = {},
  ) {
    this.autoAck = options.autoAck ?? false;
    this.log = logPeer(
      socket,
      () => {
        for (const listener of [...this.listeners]) listener();
      },
      options.skipPreface ?? false,
      (f) => {
        if (f.type === FrameType.HEADERS) this.onHeaders?.(f.streamId);
        if (!this.autoAck || socket.destroyed || (f.flags & Flag.ACK) !== 0) return;
        if (f.type === FrameType.PING) socket.write(pingFrame(f.payload, true));
        else if (f.type === FrameType.SETTINGS) socket.write(SETTINGS_ACK);
      },
    );
  }

  write(bytes: Buffer): void {
    if (!this.socket.destroyed && bytes.length > 0) this.socket.write(bytes);
  }

  /** True as soon as `test()` holds (checked at every chunk and at close), false after `ms`. */
  until(test: () => boolean, ms: number): Promise<boolean> {
    if (test()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const check = (): void => {
        if (test()) finish(true);
      };
      const finish = (result: boolean): void => {
        clearTimeout(timer);
        this.listeners.delete(check);
        resolve(result);
      };
      const timer = setTimeout(() => finish(test()), ms);
      this.listeners.add(check);
    });
  }

  get ended(): boolean {
    return this.log.goaway !== null || this.log.closed;
  }
}
