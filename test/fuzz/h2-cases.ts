/**
 * Fuzz target (b): the gateway's HTTP/2 front door, h2c with prior knowledge on the cleartext port
 * (and now and then h2 over TLS), fed hand-built frames after the preface: requests with broken
 * or hostile header lists, HPACK garbage, CONTINUATION misuse and floods, malformed frames of
 * every type, bad stream ids, flow-control abuse (WINDOW_UPDATE of 0, window overflow), SETTINGS
 * with bad values, short bursts of resets and PINGs.
 *
 * A case ends with a PING of its own. It must end in a GOAWAY, a close, or the PING answered (the
 * gateway read past everything before it) with each stream the case opened reset or answered,
 * or still waiting for the rest of its request. When the gateway answers nothing (a frame it
 * waits to complete), the client half-closes and the gateway must close. Never a hang; after each
 * batch the campaign checks that the gateway still serves and that no tunnel stream is left open.
 */
import { closed, connectClient, within, type CaseOutcome, type GatewayPorts } from './harness.js';
import {
  Flag,
  FrameType,
  PREFACE,
  SETTINGS_ACK,
  Setting,
  continuationFrame,
  dataFrame,
  errorName,
  frame,
  goawayFrame,
  headersFrame,
  hpackIndexed,
  hpackIndexedLiteral,
  hpackInteger,
  hpackLiteral,
  hpackString,
  hpackTableSize,
  pingFrame,
  rstStreamFrame,
  settingsFrame,
  windowUpdateFrame,
  RawPeer,
  type PeerLog,
} from './h2-wire.js';
import type { Random } from './prng.js';

export interface H2Context {
  ports: GatewayPorts;
  /** A valid token for c1. */
  token: string;
}

/** The gateway gets this long to answer the closing PING (or GOAWAY, or close). */
const ANSWER_MS = 1_500;
/** After the PING's answer, how long streams get to be answered or reset. */
const SETTLE_MS = 300;
const CLOSE_MS = 4_000;

export type Fields = Array<[string, string]>;

function request(token: string, path: string): Fields {
  return [
    [':method', 'GET'],
    [':scheme', 'http'],
    [':path', path],
    [':authority', 'c1.tether.localhost'],
    ['authorization', `Bearer ${token}`],
  ];
}

const BAD_NAMES = ['Upper-Case', 'connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', ':unknown', 'sp ace', 'nul\0', 'co:lon', '', 'x'.repeat(300)];
const BAD_VALUES = ['line\r\nbreak', 'nul\0', ' leading', 'trailing ', '\x7f', 'x'.repeat(70_000), 'gzip', ''];

type FieldMutation = (fields: Fields, rng: Random) => Fields;

export const FIELD_MUTATIONS: Array<[string, FieldMutation]> = [
  ['drop-pseudo', (f, r) => {
    const pseudo = f.filter(([n]) => n.startsWith(':'));
    const victim = r.pick(pseudo);
    return f.filter((field) => field !== victim);
  }],
  ['duplicate-pseudo', (f, r) => {
    const pseudo = r.pick(f.filter(([n]) => n.startsWith(':')));
    return [...f.slice(0, 4), [pseudo[0], r.chance(0.5) ? pseudo[1] : '/other'], ...f.slice(4)];
  }],
  ['pseudo-after-regular', (f) => [...f.filter(([n]) => !n.startsWith(':')), ...f.filter(([n]) => n.startsWith(':'))]],
  ['bad-name', (f, r) => [...f, [r.pick(BAD_NAMES), 'v']]],
  ['bad-value', (f, r) => [...f, [r.pick(['x-fuzz', 'te', 'content-length', 'host', 'tether-subject', 'cookie']), r.pick(BAD_VALUES)]]],
  ['te', (f, r) => [...f, ['te', r.pick(['trailers', 'gzip', 'trailers, gzip', ''])]]],
  ['path', (f, r) => f.map(([n, v]): [string, string] => (n === ':path' ? [n, r.pick(['', '*', 'no-slash', '//x', '/%00', '/a b', 'http://c2.tether.localhost/x', '/' + 'p'.repeat(20_000)])] : [n, v]))],
  ['method', (f, r) => f.map(([n, v]): [string, string] => (n === ':method' ? [n, r.pick(['CONNECT', 'POST', 'get', '', 'G ET', 'PRI', 'HEAD', 'OPTIONS'])] : [n, v]))],
  ['authority', (f, r) => f.map(([n, v]): [string, string] => (n === ':authority' ? [n, r.pick(['c2.tether.localhost', '', 'c1.tether.localhost:99999', 'user@c1.tether.localhost', 'c1.tether.localhost\0', 'x'.repeat(300)])] : [n, v]))],
  ['protocol', (f, r) => [...f, [':protocol', r.pick(['websocket', 'tether-bind-h1', 'h2c', ''])]]],
  ['no-token', (f) => f.filter(([n]) => n !== 'authorization')],
  ['forged-identity', (f) => [...f, ['tether-subject', 'admin'], ['tether-identity', 'eyJzdWIiOiJhZG1pbiJ9'], ['tether-cluster', 'c2']]],
  ['many-fields', (f, r) => {
    const more: Fields = [];
    for (let i = 0, n = r.range(200, 600); i < n; i++) more.push([`x-f${i}`, r.string(r.range(0, 8), 'ab')]);
    return [...f, ...more];
  }],
  ['content-length', (f, r) => [...f, ['content-length', r.pick(['-1', '5', '99999999999999999999', 'abc', '0', '1, 2'])]]],
];

/** A header block for `fields`, now and then with HPACK oddities that are still valid. */
export function encode(fields: Fields, rng: Random): Buffer {
  const parts: Buffer[] = [];
  if (rng.chance(0.1)) parts.push(hpackTableSize(rng.int(4096)));
  for (const [name, value] of fields) {
    if (name === ':method' && value === 'GET' && rng.chance(0.5)) parts.push(hpackIndexed(2));
    else if (rng.chance(0.2)) parts.push(hpackIndexedLiteral(name, value));
    else parts.push(hpackLiteral(name, value));
  }
  return Buffer.concat(parts);
}

/** Header blocks that are not valid HPACK. */
export function hpackGarbage(rng: Random, valid: Buffer): Buffer {
  switch (rng.int(9)) {
    case 0:
      return rng.bytes(rng.range(1, 64));
    case 1:
      return Buffer.concat([valid, hpackIndexed(0)]);
    case 2:
      return Buffer.concat([valid, hpackIndexed(rng.range(62, 5000))]);
    case 3:
      // An integer that never ends (continuation bit set on every byte).
      return Buffer.concat([valid, Buffer.from([0xff]), Buffer.alloc(rng.range(6, 40), 0xff)]);
    case 4:
      // A Huffman-coded string of junk (EOS padding and codes that do not exist).
      return Buffer.concat([Buffer.from([0x00]), hpackInteger(8, 7, 0x80), Buffer.alloc(8, 0xff), hpackString('v')]);
    case 5:
      // A string length past the end of the block.
      return Buffer.concat([valid, Buffer.from([0x00]), hpackInteger(rng.range(100, 100_000), 7, 0x00), Buffer.from('short')]);
    case 6:
      // A table size update larger than SETTINGS_HEADER_TABLE_SIZE allows.
      return Buffer.concat([hpackTableSize(rng.range(4097, 1 << 30)), valid]);
    case 7:
      // A table size update after a field (it must come first).
      return Buffer.concat([valid, hpackTableSize(0)]);
    default: {
      // A valid block cut short.
      return valid.subarray(0, rng.int(valid.length));
    }
  }
}

interface Plan {
  name: string;
  frames: Buffer[];
  /** Stream ids the case opened with HEADERS. */
  streams: number[];
  secure: boolean;
}

function plan(rng: Random, token: string): Plan {
  const streams: number[] = [];
  const frames: Buffer[] = [];
  const path = `/fuzz/h2/${rng.string(rng.range(1, 8), 'abcdef0123')}`;
  let next = 1;
  const open = (id = next): number => {
    streams.push(id);
    next = Math.max(next, id) + 2;
    return id;
  };
  const validRequest = (endStream = true): Buffer => headersFrame(open(), encode(request(token, path), rng), { endStream });
  const kinds = ['fields', 'hpack', 'continuation', 'frame-garbage', 'stream-ids', 'data', 'window', 'settings', 'ping-rst-priority', 'goaway-push', 'bursts', 'preface'] as const;
  const kind = rng.pick(kinds);
  let name: string = kind;
  switch (kind) {
    case 'fields': {
      let fields = request(token, path);
      const applied: string[] = [];
      for (let i = 0, n = rng.range(1, 3); i < n; i++) {
        const [label, mutate] = rng.pick(FIELD_MUTATIONS);
        applied.push(label);
        fields = mutate(fields, rng);
      }
      name = `fields ${applied.join('+')}`;
      const block = encode(fields, rng);
      const body = rng.chance(0.3);
      const id = open();
      // Blocks over the peer's frame size go in CONTINUATION frames.
      const pieces: Buffer[] = [];
      for (let at = 0; at < block.length || pieces.length === 0; at += 16_000) pieces.push(block.subarray(at, at + 16_000));
      frames.push(headersFrame(id, pieces[0] as Buffer, { endStream: !body, endHeaders: pieces.length === 1 }));
      pieces.slice(1).forEach((piece, i) => frames.push(continuationFrame(id, piece, i === pieces.length - 2)));
      if (body) frames.push(dataFrame(id, rng.string(rng.range(0, 100), 'body'), true));
      break;
    }
    case 'hpack':
      frames.push(headersFrame(open(), hpackGarbage(rng, encode(request(token, path), rng)), { endStream: true }));
      break;
    case 'continuation': {
      const block = encode(request(token, path), rng);
      const id = open();
      const variant = rng.int(6);
      name = `continuation ${['flood', 'other-stream', 'orphan', 'interleaved', 'oversized', 'split'][variant]}`;
      if (variant === 0) {
        // CONTINUATION flood (CVE-2024-27983 and kin): thousands of frames, no END_HEADERS.
        frames.push(headersFrame(id, block.subarray(0, 4), { endStream: true, endHeaders: false }));
        const filler = hpackLiteral('x-c', 'v');
        for (let i = 0, n = rng.range(1_000, 6_000); i < n; i++) frames.push(continuationFrame(id, rng.chance(0.5) ? Buffer.alloc(0) : filler, false));
      } else if (variant === 1) {
        frames.push(headersFrame(id, block.subarray(0, 5), { endStream: true, endHeaders: false }), continuationFrame(id + 2, block.subarray(5), true));
      } else if (variant === 2) {
        frames.push(continuationFrame(id, block, true));
      } else if (variant === 3) {
        frames.push(headersFrame(id, block.subarray(0, 5), { endStream: true, endHeaders: false }), pingFrame(rng.bytes(8)), continuationFrame(id, block.subarray(5), true));
      } else if (variant === 4) {
        // A header list far over the limit, in legal pieces.
        frames.push(headersFrame(id, block, { endStream: true, endHeaders: false }));
        const big = hpackLiteral('x-big', 'v'.repeat(15_000));
        for (let i = 0, n = rng.range(5, 40); i < n; i++) frames.push(continuationFrame(id, big, false));
        frames.push(continuationFrame(id, Buffer.alloc(0), true));
      } else {
        const cut = rng.int(block.length);
        frames.push(headersFrame(id, block.subarray(0, cut), { endStream: true, endHeaders: false }), continuationFrame(id, block.subarray(cut), true));
      }
      break;
    }
    case 'frame-garbage': {
      const variant = rng.int(4);
      name = `frame-garbage ${['random', 'length-over', 'length-under', 'too-large'][variant]}`;
      if (variant === 0) {
        for (let i = 0, n = rng.range(1, 6); i < n; i++) frames.push(frame(rng.int(16), rng.int(256), rng.chance(0.5) ? rng.int(8) : rng.next32(), rng.bytes(rng.range(0, 40))));
      } else if (variant === 1) {
        // A declared length past what is sent: the rest (our PING) is taken as its payload.
        frames.push(validRequest(), frame(rng.pick([0, 1, 6, 8]), 0, rng.pick([0, 1]), rng.bytes(4), rng.range(5, 16_384)));
      } else if (variant === 2) {
        const payload = rng.bytes(rng.range(8, 32));
        frames.push(frame(rng.pick([FrameType.PING, FrameType.SETTINGS, FrameType.WINDOW_UPDATE, FrameType.RST_STREAM, FrameType.PRIORITY]), 0, rng.int(3), payload, rng.int(payload.length)));
      } else {
        frames.push(validRequest(false), frame(FrameType.DATA, 0, 1, Buffer.alloc(rng.range(16_385, 70_000), 1)));
      }
      break;
    }
    case 'stream-ids': {
      const block = encode(request(token, path), rng);
      const variant = rng.int(6);
      name = `stream-ids ${['even', 'zero', 'decreasing', 'reused', 'max', 'idle-frames'][variant]}`;
      if (variant === 0) frames.push(headersFrame(open(2), block, { endStream: true }));
      else if (variant === 1) frames.push(headersFrame(0, block, { endStream: true }));
      else if (variant === 2) frames.push(headersFrame(open(7), block, { endStream: true }), headersFrame(open(3), block, { endStream: true }));
      else if (variant === 3) frames.push(headersFrame(open(1), block, { endStream: true }), headersFrame(1, block, { endStream: true }));
      else if (variant === 4) frames.push(headersFrame(open(0x7fffffff), block, { endStream: true }), headersFrame(0x7fffffff + 2, block, { endStream: true }));
      else frames.push(dataFrame(9, 'idle'), rstStreamFrame(11, 8), windowUpdateFrame(13, 100), frame(FrameType.PRIORITY, 0, 15, Buffer.from([0, 0, 0, 0, 16])));
      break;
    }
    case 'data': {
      const variant = rng.int(5);
      name = `data ${['stream-zero', 'after-end', 'bad-padding', 'over-content-length', 'idle'][variant]}`;
      if (variant === 0) frames.push(dataFrame(0, 'zero'));
      else if (variant === 1) frames.push(validRequest(true), dataFrame(1, 'late'));
      else if (variant === 2) frames.push(validRequest(false), frame(FrameType.DATA, Flag.PADDED | Flag.END_STREAM, 1, Buffer.from([200, 1, 2, 3])));
      else if (variant === 3) {
        const fields: Fields = [...request(token, path), ['content-length', '3']];
        frames.push(headersFrame(open(), encode(fields, rng), { endStream: false }), dataFrame(1, 'more than three', true));
      } else frames.push(dataFrame(5, 'x', true));
      break;
    }
    case 'window': {
      const variant = rng.int(5);
      name = `window ${['zero-connection', 'zero-stream', 'overflow-connection', 'overflow-stream', 'bad-length'][variant]}`;
      if (variant === 0) frames.push(windowUpdateFrame(0, 0));
      else if (variant === 1) frames.push(validRequest(false), windowUpdateFrame(1, 0));
      else if (variant === 2) frames.push(windowUpdateFrame(0, 0x7fffffff), windowUpdateFrame(0, 0x7fffffff));
      else if (variant === 3) frames.push(validRequest(false), windowUpdateFrame(1, 0x7fffffff), windowUpdateFrame(1, 0x7fffffff));
      else frames.push(frame(FrameType.WINDOW_UPDATE, 0, 0, Buffer.from([0, 0, 1])));
      break;
    }
    case 'settings': {
      const bad: Array<[string, () => Buffer]> = [
        ['enable-push-2', () => settingsFrame([[Setting.ENABLE_PUSH, 2]])],
        ['window-too-large', () => settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 0x80000000]])],
        ['frame-size-small', () => settingsFrame([[Setting.MAX_FRAME_SIZE, rng.int(16_384)]])],
        ['frame-size-large', () => settingsFrame([[Setting.MAX_FRAME_SIZE, 0x1000000 + rng.int(1000)]])],
        ['bad-length', () => frame(FrameType.SETTINGS, 0, 0, rng.bytes(rng.pick([1, 5, 7, 11])))],
        ['on-stream', () => frame(FrameType.SETTINGS, 0, 1, Buffer.alloc(6))],
        ['ack-with-payload', () => frame(FrameType.SETTINGS, Flag.ACK, 0, Buffer.alloc(6))],
        ['unknown-ids', () => settingsFrame([[0x99, 1], [0xffff, rng.next32()]])],
        ['connect-protocol-2', () => settingsFrame([[Setting.ENABLE_CONNECT_PROTOCOL, 2]])],
        ['no-streams-then-request', () => Buffer.concat([settingsFrame([[Setting.MAX_CONCURRENT_STREAMS, 0], [Setting.INITIAL_WINDOW_SIZE, 0]]), validRequest()])],
        ['table-size-huge', () => settingsFrame([[Setting.HEADER_TABLE_SIZE, 0xffffffff]])],
      ];
      const [label, make] = rng.pick(bad);
      name = `settings ${label}`;
      frames.push(make());
      break;
    }
    case 'ping-rst-priority': {
      const variant = rng.int(6);
      name = `${['ping-bad-length', 'ping-on-stream', 'rst-stream-zero', 'rst-bad-length', 'priority-self', 'priority-bad-length'][variant]}`;
      if (variant === 0) frames.push(frame(FrameType.PING, 0, 0, rng.bytes(rng.pick([0, 7, 9, 16]))));
      else if (variant === 1) frames.push(frame(FrameType.PING, 0, 1, rng.bytes(8)));
      else if (variant === 2) frames.push(rstStreamFrame(0, 8));
      else if (variant === 3) frames.push(validRequest(false), frame(FrameType.RST_STREAM, 0, 1, Buffer.from([0, 8])));
      else if (variant === 4) frames.push(frame(FrameType.PRIORITY, 0, 3, Buffer.from([0, 0, 0, 3, 16])));
      else frames.push(frame(FrameType.PRIORITY, 0, 3, Buffer.from([0, 0, 0])));
      break;
    }
    case 'goaway-push': {
      const variant = rng.int(2);
      name = `${['client-goaway', 'push-promise'][variant]}`;
      if (variant === 0) frames.push(goawayFrame(rng.int(10), rng.int(14), rng.bytes(rng.int(16))), validRequest());
      else frames.push(validRequest(false), frame(FrameType.PUSH_PROMISE, Flag.END_HEADERS, 1, Buffer.concat([Buffer.from([0, 0, 0, 2]), encode(request(token, path), rng)])));
      break;
    }
    case 'bursts': {
      const variant = rng.int(3);
      const n = rng.range(20, 200);
      name = `burst ${['reset', 'ping', 'settings'][variant]} x${n}`;
      const block = encode(request(token, path), rng);
      for (let i = 0; i < n; i++) {
        if (variant === 0) {
          const id = open();
          frames.push(headersFrame(id, block, { endStream: true }), rstStreamFrame(id, 8));
        } else if (variant === 1) frames.push(pingFrame(rng.bytes(8)));
        else frames.push(settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 65_535 + i]]));
      }
      break;
    }
    case 'preface': {
      // The gateway picks HTTP/2 by the first four bytes; the rest of the preface is broken.
      const broken = Buffer.from(PREFACE);
      broken[rng.range(4, broken.length - 1)] = rng.int(256);
      name = 'preface broken';
      return { name, frames: [broken.subarray(0, rng.chance(0.3) ? rng.range(4, broken.length) : broken.length), validRequest()], streams, secure: false };
    }
  }
  return { name, frames, streams, secure: rng.chance(0.15) };
}

/** Streams that got no reset and no complete answer. */
function unsettled(log: PeerLog, streams: number[]): number[] {
  return streams.filter((id) => !log.resets.has(id) && !log.ended.has(id));
}

export async function runH2Case(rng: Random, ctx: H2Context): Promise<CaseOutcome & { description: string }> {
  const p = plan(rng, ctx.token);
  const pingData = rng.bytes(8);
  const description = `${p.secure ? 'h2' : 'h2c'} ${p.name}`;
  const socket = await connectClient(ctx.ports, p.secure, 'h2');
  const peer = new RawPeer(socket);
  const log = peer.log;
  const gone = closed(socket);
  try {
    const start = p.name === 'preface broken' ? Buffer.alloc(0) : Buffer.concat([PREFACE, settingsFrame(rng.chance(0.3) ? [[Setting.INITIAL_WINDOW_SIZE, rng.range(0, 1 << 20)]] : []), SETTINGS_ACK]);
    const bytes = Buffer.concat([start, ...p.frames, pingFrame(pingData)]);
    // In one to three writes.
    const cut1 = rng.int(bytes.length);
    const cut2 = rng.range(cut1, bytes.length);
    for (const piece of rng.chance(0.5) ? [bytes] : [bytes.subarray(0, cut1), bytes.subarray(cut1, cut2), bytes.subarray(cut2)]) {
      if (socket.destroyed) break;
      if (piece.length > 0) socket.write(piece);
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    const ping = pingData.toString('hex');
    const ended = (): boolean => log.goaway !== null || log.closed;
    const answered = await peer.until(() => ended() || log.pingAcks.includes(ping), ANSWER_MS);
    if (answered && !ended()) await peer.until(() => ended() || unsettled(log, p.streams).length === 0, SETTLE_MS);
    let outcome: string;
    if (log.goaway !== null) outcome = `goaway ${errorName(log.goaway.code)}`;
    else if (log.closed) outcome = 'closed';
    else if (!answered) {
      // Nothing at all: the gateway waits for bytes (a frame whose declared length was not all
      // sent). The client half-closes; the gateway must close.
      socket.end();
      await within(CLOSE_MS, `${description}: no answer, and no close after the client's FIN`, gone);
      outcome = 'closed after FIN';
    } else {
      const resets = [...new Set([...log.resets.values()].map(errorName))].sort();
      const open = unsettled(log, p.streams).length;
      outcome = [resets.length > 0 ? `rst ${resets.join(',')}` : '', log.headers.size > 0 ? 'answered' : '', open > 0 ? 'waiting' : ''].filter((s) => s !== '').join(' ') || 'ignored';
    }
    return { outcome, description };
  } finally {
    socket.destroy();
  }
}

