/**
 * Fuzz target (c): the tunnel's framing, from both ends.
 *
 * `agent`: a fake agent completes the real mutual TLS handshake with a valid certificate for
 * cluster c2 and ALPN `tether-tunnel/1`, then, as the HTTP/2 server the gateway expects, sends
 * broken handshakes, malformed frames, junk on the control stream, or broken answers to a client
 * request the case sends through the gateway for c2. The gateway must cut the connection (GOAWAY,
 * close) or keep it usable, and a client it answers gets an error with its code.
 *
 * `gateway`: a fake gateway (a TLS server with the gateway's certificate) that a real agent dials
 * (cluster c3; the agent also keeps its connections to the real gateway). As the HTTP/2 client it
 * sends broken prefaces, malformed frames, junk control messages and hostile requests. The agent
 * must answer, reset or cut, and keep serving c3 through the real gateway (the campaign's health
 * check asks it after every batch).
 *
 * Both end a case with a PING of their own, as the HTTP/2 target does.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Agent } from '../../agent/index.js';
import { CONTROL_PATH, H_CONTROL, TUNNEL_ALPN, TunnelCodes, statusOf } from '../../gateway/tunnel/index.js';
import { splitHostPort } from '../helpers/tunnel-clients.js';
import type { TunnelEnv } from '../helpers/tunnel-env.js';
import { FIELD_MUTATIONS, encode, hpackGarbage, type Fields } from './h2-cases.js';
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
  headerBlock,
  headersFrame,
  hpackIndexed,
  pingFrame,
  RawPeer,
  rstStreamFrame,
  settingsFrame,
  windowUpdateFrame,
} from './h2-wire.js';
import { FuzzFailure, closed, within, type CaseOutcome, type GatewayPorts } from './harness.js';
import type { Random } from './prng.js';

const ANSWER_MS = 1_500;
const SETTLE_MS = 300;
const CLOSE_MS = 4_000;
const CONNECT_MS = 5_000;
/** A client request through the gateway to the fake agent: its answer or its close within this. */
const CLIENT_MS = 8_000;

/** Frames that break the connection, or ought to be ignored, from either end. */
function connectionGarbage(rng: Random, server: boolean): { name: string; frames: Buffer[] } {
  const own = server ? 2 : 1; // stream ids this end may open
  const variants: Array<[string, () => Buffer[]]> = [
    ['random-frames', () => Array.from({ length: rng.range(1, 5) }, () => frame(rng.int(16), rng.int(256), rng.chance(0.5) ? rng.int(8) : rng.next32(), rng.bytes(rng.range(0, 40))))],
    ['length-under', () => [frame(rng.pick([FrameType.PING, FrameType.SETTINGS, FrameType.WINDOW_UPDATE, FrameType.RST_STREAM]), 0, rng.int(3), rng.bytes(12), rng.int(12))]],
    ['too-large', () => [frame(FrameType.DATA, 0, 1, Buffer.alloc(rng.range(70_000, 80_000), 1))]],
    ['window-zero', () => [windowUpdateFrame(0, 0)]],
    ['window-overflow', () => [windowUpdateFrame(0, 0x7fffffff), windowUpdateFrame(0, 0x7fffffff)]],
    ['window-bad-length', () => [frame(FrameType.WINDOW_UPDATE, 0, 0, Buffer.from([0, 0, 1]))]],
    ['settings-push-2', () => [settingsFrame([[Setting.ENABLE_PUSH, 2]])]],
    ['settings-window', () => [settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 0x80000000]])]],
    ['settings-frame-size', () => [settingsFrame([[Setting.MAX_FRAME_SIZE, rng.chance(0.5) ? rng.int(16_384) : 0x1000000 + rng.int(100)]])]],
    ['settings-bad-length', () => [frame(FrameType.SETTINGS, 0, 0, rng.bytes(rng.pick([1, 5, 7])))]],
    ['settings-on-stream', () => [frame(FrameType.SETTINGS, 0, 1, Buffer.alloc(6))]],
    ['ping-bad-length', () => [frame(FrameType.PING, 0, 0, rng.bytes(rng.pick([0, 7, 9])))]],
    ['rst-stream-zero', () => [rstStreamFrame(0, rng.int(14))]],
    ['rst-control', () => [rstStreamFrame(1, rng.int(14))]],
    ['data-stream-zero', () => [dataFrame(0, 'zero')]],
    ['data-idle', () => [dataFrame(own + 40, 'idle', true)]],
    ['headers-wrong-parity', () => [headersFrame(server ? 41 : 40, headerBlock([[':status', '200']]), { endStream: true })]],
    ['push-promise', () => [frame(FrameType.PUSH_PROMISE, Flag.END_HEADERS, 1, Buffer.concat([Buffer.from([0, 0, 0, server ? 2 : 4]), headerBlock([[':method', 'GET'], [':path', '/'], [':scheme', 'https'], [':authority', 'x']])]))]],
    ['continuation-orphan', () => [continuationFrame(1, headerBlock([['x', 'y']]), true)]],
    ['goaway', () => [goawayFrame(rng.int(5), rng.int(14), rng.bytes(rng.int(20)))]],
    ['ping-burst', () => Array.from({ length: rng.range(20, 300) }, () => pingFrame(rng.bytes(8)))],
    ['settings-burst', () => Array.from({ length: rng.range(20, 300) }, (_, i) => settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 65_535 + i]]))],
    ['priority-self', () => [frame(FrameType.PRIORITY, 0, 1, Buffer.from([0, 0, 0, 1, 16]))]],
    ['unknown-type', () => [frame(0x40 + rng.int(0x40), rng.int(256), rng.int(4), rng.bytes(rng.int(30)))]],
  ];
  const [name, make] = rng.pick(variants);
  return { name, frames: make() };
}

/** The settings a real agent (the HTTP/2 server) announces. */
const AGENT_SETTINGS = settingsFrame([
  [Setting.ENABLE_CONNECT_PROTOCOL, 1],
  [Setting.MAX_CONCURRENT_STREAMS, 100],
  [Setting.INITIAL_WINDOW_SIZE, 1 << 20],
]);

/** `:status 200` (static table index 8). */
const STATUS_200 = hpackIndexed(8);

/** End a case: the closing PING answered (then open streams settle), a GOAWAY, a close, or, when nothing came, the peer must close after our FIN. */
async function finish(peer: RawPeer, description: string, streams: number[]): Promise<string> {
  const ping = Buffer.from('fuzzcase', 'latin1');
  peer.write(pingFrame(ping));
  const hex = ping.toString('hex');
  const { log } = peer;
  const answered = await peer.until(() => peer.ended || log.pingAcks.includes(hex), ANSWER_MS);
  const unsettled = (): number[] => streams.filter((id) => !log.resets.has(id) && !log.ended.has(id));
  if (answered && !peer.ended) await peer.until(() => peer.ended || unsettled().length === 0, SETTLE_MS);
  if (log.goaway !== null) return `goaway ${errorName(log.goaway.code)}`;
  if (log.closed) return 'closed';
  if (!answered) {
    peer.socket.end();
    await within(CLOSE_MS, `${description}: no answer, and no close after the FIN`, closed(peer.socket));
    return 'closed after FIN';
  }
  const resets = [...new Set([...log.resets.values()].map(errorName))].sort();
  const open = unsettled().length;
  return [resets.length > 0 ? `rst ${resets.join(',')}` : '', log.headers.size > 0 ? 'answered' : '', open > 0 ? 'waiting' : ''].filter((s) => s !== '').join(' ') || 'ignored';
}

// ---- the fake agent -------------------------------------------------------------------------

export interface FakeAgentContext {
  env: TunnelEnv;
  ports: GatewayPorts;
  /** A token that may reach c2. */
  token: string;
  cert: { key: string; cert: string };
}

/** A raw HTTP/1.1 request for c2 through the gateway's plain port; resolves with what came back, at the close. */
function clientRequest(ports: GatewayPorts, token: string): { done: Promise<string>; cancel(): void } {
  const socket = net.connect({ host: ports.host, port: ports.plainPort });
  socket.on('error', () => undefined);
  let received = '';
  socket.on('data', (chunk: Buffer) => {
    received += chunk.toString('latin1');
  });
  socket.write(`GET /through-fake HTTP/1.1\r\nhost: c2.tether.localhost\r\nauthorization: Bearer ${token}\r\nconnection: close\r\n\r\n`);
  return { done: closed(socket).then(() => received), cancel: () => socket.destroy() };
}

/** The client's view of the request through the fake agent: its status and code, checked. */
function judgeClient(received: string, description: string): { outcome: string; code: string | null } {
  const status = /^HTTP\/1\.1 (\d{3}) /.exec(received);
  if (status === null) return { outcome: received === '' ? 'client: closed without an answer' : 'client: cut mid-answer', code: null };
  const head = received.slice(0, received.indexOf('\r\n\r\n') + 2);
  const code = /\r\ntether-error: ([^\r\n]*)\r\n/i.exec(head)?.[1] ?? null;
  const value = Number(status[1]);
  if (code === null) {
    if (value >= 400) throw new FuzzFailure(`${description}: status ${value} for the client without a tether-error code`);
    return { outcome: `client: ${value}`, code: null };
  }
  if (!Object.hasOwn(TunnelCodes, code)) {
    // The agent's answer passes to the client as it is, code and all; the gateway's metric keeps
    // a bounded set of such codes (test/tunnel/fuzz-findings).
    if (description.endsWith('forged-code')) return { outcome: `client: ${value} (the agent's own code)`, code: null };
    throw new FuzzFailure(`${description}: the client got unknown tether-error ${JSON.stringify(code)}`);
  }
  if (statusOf(code) !== value && value < 500) throw new FuzzFailure(`${description}: tether-error ${code} with status ${value}`);
  return { outcome: `client: ${value} ${code}`, code };
}

/** Broken answers to the gateway's requests: the variant's name, and its frames for a stream `id`. */
function brokenAnswer(rng: Random): { name: string; frames: (id: number) => Buffer[] } {
  const fields = (more: Fields): Buffer => encode(more, rng);
  const variants: Array<[string, (id: number) => Buffer[]]> = [
    ['no-status', (id) => [headersFrame(id, fields([['content-type', 'text/plain']]), { endStream: true })]],
    ['bad-status', (id) => [headersFrame(id, fields([[':status', rng.pick(['abc', '99', '1000', '', '20 0'])]]), { endStream: true })]],
    ['status-101', (id) => [headersFrame(id, fields([[':status', '101']]), { endStream: true })]],
    ['interim-then-reset', (id) => [headersFrame(id, fields([[':status', '100']])), rstStreamFrame(id, rng.int(14))]],
    ['hpack-garbage', (id) => [headersFrame(id, hpackGarbage(rng, STATUS_200), { endStream: true })]],
    ['data-first', (id) => [dataFrame(id, 'before the head', true)]],
    ['reset', (id) => [rstStreamFrame(id, rng.int(14))]],
    ['length-mismatch', (id) => [headersFrame(id, fields([[':status', '200'], ['content-length', '5']])), dataFrame(id, 'ten bytes!', true)]],
    ['goaway-below', (id) => [goawayFrame(1, rng.pick([0, 2, 11]))]],
    ['pseudo-in-trailers', (id) => [headersFrame(id, STATUS_200), dataFrame(id, 'x'), headersFrame(id, fields([[':status', '200']]), { endStream: true })]],
    ['huge-head', (id) => {
      const out = [headersFrame(id, STATUS_200, { endStream: false, endHeaders: false })];
      const big = fields([['x-big', 'v'.repeat(15_000)]]);
      for (let i = 0, n = rng.range(10, 20); i < n; i++) out.push(continuationFrame(id, big, false));
      out.push(continuationFrame(id, Buffer.alloc(0), true));
      return out;
    }],
    ['connection-header', (id) => [headersFrame(id, fields([[':status', '200'], ['connection', 'keep-alive']]), { endStream: true })]],
    ['forged-code', (id) => [headersFrame(id, fields([[':status', '502'], ['tether-error', rng.string(rng.range(1, 40), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ_')]]), { endStream: true })]],
    ['continuation-flood', (id) => {
      const out = [headersFrame(id, STATUS_200, { endStream: true, endHeaders: false })];
      for (let i = 0, n = rng.range(1_000, 4_000); i < n; i++) out.push(continuationFrame(id, Buffer.alloc(0), false));
      return out;
    }],
    ['valid', (id) => [headersFrame(id, fields([[':status', '200'], ['content-type', 'text/plain']])), dataFrame(id, 'from the fake agent', true)]],
  ];
  const [name, make] = rng.pick(variants);
  return { name, frames: make };
}

export async function runFakeAgentCase(rng: Random, ctx: FakeAgentContext): Promise<CaseOutcome & { description: string }> {
  // Tunnels registered from now on are this case's.
  const idsBefore = Math.max(0, ...ctx.env.gateway.tunnels.all().map((t) => t.id));
  const [host, port] = splitHostPort(ctx.env.gateway.agentAddress);
  const socket = tls.connect({ host, port, servername: 'localhost', ALPNProtocols: [TUNNEL_ALPN], key: ctx.cert.key, cert: ctx.cert.cert, ca: ctx.env.pki.trustBundlePem, minVersion: 'TLSv1.3' });
  socket.on('error', () => undefined);
  const gone = closed(socket);
  const peer = new RawPeer(socket, { skipPreface: true });
  let client: { done: Promise<string>; cancel(): void } | null = null;
  try {
    await within(CONNECT_MS, 'fake agent: TLS handshake', new Promise<void>((resolve) => socket.once('secureConnect', () => resolve())));
    const kind = rng.pick(['handshake', 'frames', 'control', 'answer', 'answer'] as const);
    let description = `fake agent ${kind}`;
    if (kind === 'handshake') {
      const variant = rng.int(4);
      description += ` ${['garbage', 'headers-first', 'bad-settings', 'truncated'][variant]}`;
      if (variant === 0) peer.write(rng.bytes(rng.range(1, 64)));
      else if (variant === 1) peer.write(headersFrame(2, headerBlock([[':status', '200']]), { endStream: true }));
      else if (variant === 2) peer.write(settingsFrame([[rng.pick([Setting.ENABLE_PUSH, Setting.INITIAL_WINDOW_SIZE, Setting.MAX_FRAME_SIZE]), rng.pick([2, 0x80000000, 1])]]));
      else peer.write(AGENT_SETTINGS.subarray(0, rng.range(1, AGENT_SETTINGS.length - 1)));
      return { outcome: await finish(peer, description, []), description };
    }
    // A well-behaved start: our SETTINGS, theirs acknowledged, the control stream answered.
    peer.autoAck = true;
    peer.write(AGENT_SETTINGS);
    const controlOpened = await peer.until(() => peer.ended || peer.log.headers.has(1), CONNECT_MS);
    if (!controlOpened || peer.ended) throw new FuzzFailure(`${description}: the gateway opened no control stream`);
    peer.write(headersFrame(1, STATUS_200));
    if (kind === 'frames') {
      const garbage = connectionGarbage(rng, true);
      description += ` ${garbage.name}`;
      // Bursts are about the ACKs: do not send them.
      if (garbage.name.endsWith('burst')) peer.autoAck = false;
      for (const f of garbage.frames) peer.write(f);
      return { outcome: await finish(peer, description, []), description };
    }
    if (kind === 'control') {
      const lines = [
        'not json\n',
        '{"no":"type"}\n',
        `${'x'.repeat(70_000)}`,
        '{"type":"something-new"}\n',
        '{"type":"draining"}\n',
        '{"type":"draining"}\n{"type":"draining"}\n[1,2]\n',
        '\n\n\n',
      ];
      const line = rng.pick(lines);
      description += ` ${JSON.stringify(line.slice(0, 20))}`;
      peer.write(dataFrame(1, line.length > 16_000 ? line.slice(0, 16_000) : line));
      for (let at = 16_000; at < line.length; at += 16_000) peer.write(dataFrame(1, line.slice(at, at + 16_000)));
      return { outcome: await finish(peer, description, []), description };
    }
    // A client request through the gateway, which the case answers badly.
    // This case's tunnel, and no other for c2 (an earlier case's may take a moment to go).
    const registered = (): boolean => {
      const c2 = ctx.env.gateway.tunnels.all().filter((t) => t.clusterId === 'c2');
      return c2.length > 0 && c2.every((t) => t.id > idsBefore);
    };
    const deadline = Date.now() + CONNECT_MS;
    while (!registered() && !peer.ended && Date.now() < deadline) await new Promise<void>((resolve) => setTimeout(resolve, 10));
    if (!registered()) throw new FuzzFailure(`${description}: the gateway did not register the fake agent's tunnel`);
    // Every stream the gateway opens gets the broken answer (with binding, the first is the
    // connection's bind stream; a refused one is followed by the request on a stream of its own).
    const answer = brokenAnswer(rng);
    description += ` ${answer.name}`;
    const answered = new Set<number>();
    peer.onHeaders = (id) => {
      if (id <= 1 || answered.has(id)) return;
      answered.add(id);
      for (const f of answer.frames(id)) peer.write(f);
    };
    client = clientRequest(ctx.ports, ctx.token);
    const streamOpened = await peer.until(() => peer.ended || answered.size > 0, CONNECT_MS);
    if (!streamOpened) throw new FuzzFailure(`${description}: the client's request never reached the fake agent`);
    const received = await within(CLIENT_MS, `${description}: the client got no answer and no close`, client.done);
    const judged = judgeClient(received, description);
    const outcome = await finish(peer, description, []);
    return { outcome: `${judged.outcome}; tunnel ${outcome}`, codes: judged.code === null ? [] : [judged.code], description };
  } finally {
    client?.cancel();
    socket.destroy();
    await gone;
  }
}

// ---- the fake gateway -----------------------------------------------------------------------

export interface FakeGateway {
  address: string;
  /** The next connection the agent dials (each case takes one). */
  next(ms: number): Promise<tls.TLSSocket>;
  close(): Promise<void>;
}

export async function startFakeGateway(material: { key: string; cert: string }, ca: string): Promise<FakeGateway> {
  const arrived: tls.TLSSocket[] = [];
  const waiting: Array<(socket: tls.TLSSocket) => void> = [];
  const sockets = new Set<net.Socket>();
  const server = tls.createServer({ key: material.key, cert: material.cert, ca, requestCert: true, rejectUnauthorized: false, ALPNProtocols: [TUNNEL_ALPN], minVersion: 'TLSv1.3' });
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('tlsClientError', () => undefined);
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    socket.on('error', () => undefined);
    const taker = waiting.shift();
    if (taker !== undefined) taker(socket);
    else arrived.push(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    address: `127.0.0.1:${port}`,
    next: (ms) => {
      // Connections that waited were given up by the agent by now, or will be: use the newest.
      while (arrived.length > 1) arrived.shift()?.destroy();
      const ready = arrived.shift();
      if (ready !== undefined && !ready.destroyed) return Promise.resolve(ready);
      return within(ms, 'the agent did not dial the fake gateway', new Promise<tls.TLSSocket>((resolve) => waiting.push(resolve)));
    },
    close: () =>
      new Promise<void>((resolve) => {
        waiting.length = 0;
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

export interface FakeGatewayContext {
  fake: FakeGateway;
  agent: Agent;
}

/** The agent's control messages to try: junk, and legitimate ones with junk in them (replica addresses stay on loopback or do not parse). */
function controlLines(rng: Random): string {
  const welcome = (replicas: unknown): string => `${JSON.stringify({ type: 'welcome', gatewayId: 'fake', replicas, pingIntervalMs: 1000 })}\n`;
  return rng.pick([
    'not json\n',
    '{"no":"type"}\n',
    'x'.repeat(70_000),
    '{"type":"from-the-future","x":1}\n',
    welcome('not a list'),
    welcome([{ id: 'r', address: 'no-port-here' }, { id: 's', address: '' }, 'string', null, 42]),
    welcome([{ id: 'r', address: '127.0.0.1:1' }]),
    `${JSON.stringify({ type: 'drain', retryAfterMs: rng.pick([-1, 0, 1e12, 'soon', null]), reason: 'x' })}\n`,
    `${JSON.stringify({ type: 'refused', code: rng.string(rng.range(1, 30), 'ABCXYZ_'), message: 'm'.repeat(rng.int(5000)), retryAfterMs: rng.pick([-5, 50, 'x']) })}\n`,
    `${JSON.stringify({ type: 'replicas', replicas: [{ id: 'x', address: 'nope' }] })}\n`,
    welcome([]) + welcome([]),
  ]);
}

/** What a real gateway sends to open the tunnel: preface, SETTINGS, the control stream's HEADERS. */
function gatewayOpening(rng: Random): Buffer {
  return Buffer.concat([
    PREFACE,
    settingsFrame([[Setting.ENABLE_PUSH, 0], [Setting.INITIAL_WINDOW_SIZE, 1 << 20]]),
    headersFrame(1, encode([[':method', 'POST'], [':scheme', 'https'], [':path', CONTROL_PATH], [':authority', 'tunnel.invalid'], [H_CONTROL, '1']], rng), { endStream: false }),
  ]);
}

function agentRequest(rng: Random): Fields {
  return [
    [':method', 'GET'],
    [':scheme', 'https'],
    [':path', `/fake-gateway/${rng.string(rng.range(1, 8), 'abc123')}`],
    [':authority', 'c3.tether.localhost'],
    ['tether-cluster', 'c3'],
    ['tether-subject', 'alice'],
    ['tether-request-id', 'fuzz'],
  ];
}

export async function runFakeGatewayCase(rng: Random, ctx: FakeGatewayContext): Promise<CaseOutcome & { description: string }> {
  const socket = await ctx.fake.next(CONNECT_MS);
  const gone = closed(socket);
  const peer = new RawPeer(socket);
  try {
    const kind = rng.pick(['preface', 'frames', 'control', 'requests', 'requests'] as const);
    let description = `fake gateway ${kind}`;
    const streams: number[] = [];
    if (kind === 'preface') {
      const variant = rng.int(4);
      description += ` ${['garbage', 'mutated', 'no-settings', 'bad-settings'][variant]}`;
      if (variant === 0) peer.write(rng.bytes(rng.range(1, 64)));
      else if (variant === 1) {
        const broken = Buffer.from(PREFACE);
        broken[rng.int(broken.length)] = rng.int(256);
        peer.write(broken);
      } else if (variant === 2) peer.write(Buffer.concat([PREFACE, pingFrame(rng.bytes(8))]));
      else peer.write(Buffer.concat([PREFACE, settingsFrame([[rng.pick([Setting.ENABLE_PUSH, Setting.INITIAL_WINDOW_SIZE, Setting.MAX_FRAME_SIZE]), rng.pick([2, 0x80000000, 1])]])]));
      return { outcome: await finish(peer, description, streams), description };
    }
    peer.autoAck = true;
    peer.write(gatewayOpening(rng));
    if (kind !== 'control') peer.write(dataFrame(1, `${JSON.stringify({ type: 'welcome', gatewayId: 'fake', replicas: [{ id: 'fake', address: ctx.fake.address }], pingIntervalMs: 1000 })}\n`));
    if (kind === 'frames') {
      const garbage = connectionGarbage(rng, false);
      description += ` ${garbage.name}`;
      if (garbage.name.endsWith('burst')) peer.autoAck = false;
      for (const f of garbage.frames) peer.write(f);
    } else if (kind === 'control') {
      const line = controlLines(rng);
      description += ` ${JSON.stringify(line.slice(0, 30))}`;
      for (let at = 0; at < line.length; at += 16_000) peer.write(dataFrame(1, line.slice(at, at + 16_000)));
    } else {
      let fields = agentRequest(rng);
      const applied: string[] = [];
      for (let i = 0, n = rng.int(3); i < n; i++) {
        const [label, mutate] = rng.pick(FIELD_MUTATIONS);
        applied.push(label);
        fields = mutate(fields, rng);
      }
      const variant = rng.int(5);
      description += ` ${applied.join('+') || 'valid'} ${['plain', 'hpack-garbage', 'body-then-reset', 'continuation-flood', 'reset-burst'][variant]}`;
      const block = encode(fields, rng);
      if (variant === 0) {
        streams.push(3);
        peer.write(headersFrame(3, block.length > 16_000 ? block.subarray(0, 16_000) : block, { endStream: true }));
      } else if (variant === 1) {
        streams.push(3);
        peer.write(headersFrame(3, hpackGarbage(rng, block), { endStream: true }));
      } else if (variant === 2) {
        streams.push(3);
        peer.write(Buffer.concat([headersFrame(3, block.subarray(0, 16_000), { endStream: false }), dataFrame(3, rng.bytes(rng.range(0, 200))), rstStreamFrame(3, rng.int(14))]));
      } else if (variant === 3) {
        const parts = [headersFrame(3, block.subarray(0, 4), { endStream: true, endHeaders: false })];
        for (let i = 0, n = rng.range(1_000, 4_000); i < n; i++) parts.push(continuationFrame(3, Buffer.alloc(0), false));
        peer.write(Buffer.concat(parts));
      } else {
        const parts: Buffer[] = [];
        for (let i = 0, n = rng.range(50, 1_500); i < n; i++) parts.push(headersFrame(3 + 2 * i, block.subarray(0, 16_000), { endStream: true }), rstStreamFrame(3 + 2 * i, 8));
        peer.write(Buffer.concat(parts));
      }
    }
    return { outcome: await finish(peer, description, streams), description };
  } finally {
    socket.destroy();
    await gone;
  }
}
