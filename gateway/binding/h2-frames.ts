/**
 * HTTP/2 frames (RFC 9113 §4, §6) as a bound HTTP/2 connection sees them: a reader that splits a
 * byte stream into whole frames without copying those that arrive whole, and the few frames the
 * gateway writes itself.
 */

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PUSH_PROMISE: 0x5,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const;

export const Flag = {
  END_STREAM: 0x1,
  ACK: 0x1,
  END_HEADERS: 0x4,
  PADDED: 0x8,
  PRIORITY: 0x20,
} as const;

export const ErrorCode = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  ENHANCE_YOUR_CALM: 0xb,
  FRAME_SIZE_ERROR: 0x6,
} as const;

export const Setting = {
  HEADER_TABLE_SIZE: 0x1,
  ENABLE_PUSH: 0x2,
  MAX_CONCURRENT_STREAMS: 0x3,
  INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5,
  MAX_HEADER_LIST_SIZE: 0x6,
  ENABLE_CONNECT_PROTOCOL: 0x8,
} as const;

export const DEFAULT_MAX_FRAME = 16_384;
export const HEADER_BYTES = 9;

export interface Frame {
  type: number;
  flags: number;
  stream: number;
  /** The whole frame, header included. */
  raw: Buffer;
  /** The payload (a view into `raw`). */
  payload: Buffer;
}

/**
 * Splits bytes into frames. `push` returns the whole frames of what has arrived; a partial frame
 * waits for the rest. A frame over `maxFrame` is reported as such, and nothing after it is read.
 */
export class FrameReader {
  private rest: Buffer | null = null;
  maxFrame = DEFAULT_MAX_FRAME;

  /** Bytes of a frame still incomplete. */
  get pending(): number {
    return this.rest?.length ?? 0;
  }

  /** What was read and not yet returned as frames (for a hand-over). */
  take(): Buffer {
    const rest = this.rest ?? Buffer.alloc(0);
    this.rest = null;
    return rest;
  }

  push(chunk: Buffer, out: Frame[]): 'ok' | 'too-large' {
    let bytes = chunk;
    if (this.rest !== null) {
      bytes = Buffer.concat([this.rest, chunk]);
      this.rest = null;
    }
    let at = 0;
    while (bytes.length - at >= HEADER_BYTES) {
      const length = bytes.readUIntBE(at, 3);
      if (length > this.maxFrame) {
        this.rest = bytes.subarray(at);
        return 'too-large';
      }
      const end = at + HEADER_BYTES + length;
      if (end > bytes.length) break;
      out.push({
        type: bytes[at + 3] as number,
        flags: bytes[at + 4] as number,
        stream: bytes.readUInt32BE(at + 5) & 0x7fffffff,
        raw: bytes.subarray(at, end),
        payload: bytes.subarray(at + HEADER_BYTES, end),
      });
      at = end;
    }
    if (at < bytes.length) this.rest = bytes.subarray(at);
    return 'ok';
  }
}

export function frame(type: number, flags: number, stream: number, payload: Buffer = EMPTY): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  out.writeUIntBE(payload.length, 0, 3);
  out[3] = type;
  out[4] = flags;
  out.writeUInt32BE(stream & 0x7fffffff, 5);
  payload.copy(out, HEADER_BYTES);
  return out;
}

const EMPTY = Buffer.alloc(0);

/** A header block as HEADERS and as many CONTINUATION frames as `maxFrame` needs. */
export function headerFrames(stream: number, block: Buffer, endStream: boolean, maxFrame: number): Buffer[] {
  const frames: Buffer[] = [];
  let at = 0;
  do {
    const piece = block.subarray(at, at + maxFrame);
    at += piece.length;
    const last = at >= block.length;
    const first = frames.length === 0;
    const flags = (last ? Flag.END_HEADERS : 0) | (first && endStream ? Flag.END_STREAM : 0);
    frames.push(frame(first ? FrameType.HEADERS : FrameType.CONTINUATION, flags, stream, piece));
  } while (at < block.length);
  return frames;
}

export function rstStream(stream: number, code: number): Buffer {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(code, 0);
  return frame(FrameType.RST_STREAM, 0, stream, payload);
}

export function windowUpdate(stream: number, increment: number): Buffer {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(increment & 0x7fffffff, 0);
  return frame(FrameType.WINDOW_UPDATE, 0, stream, payload);
}

export function goaway(lastStream: number, code: number, debug = ''): Buffer {
  const text = Buffer.from(debug, 'latin1');
  const payload = Buffer.allocUnsafe(8 + text.length);
  payload.writeUInt32BE(lastStream & 0x7fffffff, 0);
  payload.writeUInt32BE(code, 4);
  text.copy(payload, 8);
  return frame(FrameType.GOAWAY, 0, 0, payload);
}

/**
 * The header block fragment of a HEADERS frame: padding and the priority fields removed. Null for
 * a frame whose padding is longer than its payload (a connection error, RFC 9113 §6.2).
 */
export function headersFragment(f: Frame): Buffer | null {
  let payload = f.payload;
  let start = 0;
  let end = payload.length;
  if ((f.flags & Flag.PADDED) !== 0) {
    if (payload.length < 1) return null;
    const pad = payload[0] as number;
    start = 1;
    end -= pad;
  }
  if ((f.flags & Flag.PRIORITY) !== 0) start += 5;
  if (end < start) return null;
  payload = payload.subarray(start, end);
  return payload;
}

/** Each setting of a SETTINGS payload; null when its length is not a multiple of 6. */
export function settingsOf(payload: Buffer): Array<{ id: number; value: number; at: number }> | null {
  if (payload.length % 6 !== 0) return null;
  const out: Array<{ id: number; value: number; at: number }> = [];
  for (let at = 0; at < payload.length; at += 6) out.push({ id: payload.readUInt16BE(at), value: payload.readUInt32BE(at + 2), at });
  return out;
}
