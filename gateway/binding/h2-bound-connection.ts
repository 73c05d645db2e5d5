/**
 * One HTTP/2 client connection (h2 over TLS, h2c prior knowledge) in binding mode.
 *
 * Before binding, the gateway only reads: the preface, the frames before the first request, and
 * the first request's header block, which it decodes and admits exactly as per request. The agent
 * then connects the bound stream to an upstream that speaks HTTP/2 (an `h2c://` route) and the
 * connection's frames travel on that one tunnel stream: the client's SETTINGS, DATA, PING and
 * WINDOW_UPDATE frames as they came, every request header block decoded, checked and re-encoded
 * (hpack-block.ts), and every frame of the upstream's as it came. Anything that cannot bind (no
 * first request within `FIRST_REQUEST_MS`, a refused admission, CONNECT, a route that is not
 * h2c, no tunnel) is handed, with every byte read so far, to the per-request HTTP/2 server: no
 * byte has been written to the client by then, so it answers exactly as per request.
 *
 * A later request is carried only with the first one's `:authority`, `authorization` and
 * `tether-cluster` values and a path the bound route serves; any other gets 421
 * `BINDING_MISMATCH` (clients retry it on a new connection, where it is admitted on its own).
 * The gateway's frames (a 421, GOAWAY, RST_STREAM, WINDOW_UPDATE for DATA it dropped) go to the
 * client only between the upstream's frames and never inside one of its header blocks, and are
 * literal-only, so the client's HPACK and flow-control state stay the upstream's.
 */
import { randomUUID } from 'node:crypto';
import * as http2 from 'node:http2';
import type { ClientHttp2Stream, IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http2';
import type { Socket } from 'node:net';
import type { Admitted } from '../proxy.js';
import type { AgentTunnel } from '../tunnel-registry.js';
import { BIND_PROTOCOL_H2, H_BIND_SCOPE, H_CLUSTER, H_ERROR, HEADER_PREFIX, inBindScope, parseBindScope, statusOf, type BindScope } from '../tunnel/index.js';
import { headTimeout, ignoreError, type BindingContext } from './bound-connection.js';
import { DEFAULT_MAX_FRAME, ErrorCode, Flag, FrameReader, FrameType, PREFACE, Setting, frame, goaway, headerFrames, headersFragment, rstStream, settingsOf, windowUpdate, type Frame } from './h2-frames.js';
import { HeaderBlockDecoder, HeaderBlockEncoder, HpackError, encodeLiteral, type HeaderField } from './hpack-block.js';
import { fieldOf, headersOf, merge, requestOf, type Request } from './h2-request.js';

const { NGHTTP2_CANCEL } = http2.constants;

/** How long the client may take to send its first request before the per-request server takes over. */
const FIRST_REQUEST_MS = 250;
/** The client's HPACK table limit (SETTINGS_HEADER_TABLE_SIZE as the client sees it: the upstream's, capped). */
const TABLE_SIZE = 4_096;
/** Bytes read while the first request is admitted before the gateway stops reading. */
const SNIFF_LIMIT = 256 * 1024;
/** Requests refused on one connection (421, 401…) before it is closed with ENHANCE_YOUR_CALM. */
const MAX_REFUSED = 100;
/**
 * Resets of streams not yet answered (rapid reset, CVE-2023-44487): a burst, then a rate per
 * second. Half of nghttp2's burst, so that the gateway, not the customer's upstream, is the one
 * that cuts such a client off (nghttp2 allows 1,000, then 33 a second).
 */
const RESET_BURST = 500;
const RESET_RATE = 33;
const HEADER_SAFE = /^[\x20-\x7e]*$/;


interface Binding {
  admitted: Admitted;
  tunnel: AgentTunnel;
  stream: ClientHttp2Stream;
  scope: BindScope;
  authority: string | undefined;
  authorization: string | undefined;
  clusterHeader: string | undefined;
  /** The gateway's own `tether-*` fields for every request (all but the request id). */
  injected: HeaderField[];
  /** HPACK toward the upstream (its decoder's table is the gateway's alone). */
  encoder: HeaderBlockEncoder;
  requests: { inc(): void };
  headTimeoutMs: number;
  headTimeoutCode: 'TUNNEL_TIMEOUT' | 'UPSTREAM_TIMEOUT';
}

/** A client stream carried to the upstream, until both ends are done or either resets it. */
interface Carried {
  clientDone: boolean;
  serverDone: boolean;
  /** When its response head is due (ms since epoch; Infinity once it came). */
  headDue: number;
}

/** A header block being read (HEADERS, then CONTINUATION until END_HEADERS). */
interface Block {
  stream: number;
  endStream: boolean;
  fragments: Buffer[];
  bytes: number;
}

export class H2BoundConnection {
  private state: 'first' | 'admitting' | 'bound' | 'done' = 'first';
  /** Every byte read before binding (handed to the per-request server if binding fails). */
  private received: Buffer[] = [];
  private receivedBytes = 0;
  private firstTimer: NodeJS.Timeout | null;
  private binding: Binding | null = null;
  private readonly clientFrames = new FrameReader();
  private readonly upstreamFrames = new FrameReader();
  private decoder: HeaderBlockDecoder;
  private block: Block | null = null;
  private readonly carried = new Map<number, Carried>();
  /** Streams the gateway answered itself: what the client still sends on them is dropped. */
  private readonly refused = new Set<number>();
  private refusedCount = 0;
  private lastClientStream = 0;
  /** GOAWAY sent (drain, tunnel drain): streams above `lastClientStream` at that moment are refused. */
  private goawayAt: number | null = null;
  /** The upstream is inside a header block: nothing of the gateway's may go between its frames. */
  private upstreamInBlock = false;
  private readonly injections: Buffer[] = [];
  /** Client frames held while a reauthorization runs. */
  private held: Frame[] | null = null;
  private resetTokens = RESET_BURST;
  private resetAt = Date.now();
  private authorizedAt = 0;
  private lastActive = Date.now();
  expiresAt = Infinity;

  constructor(
    readonly socket: Socket,
    private readonly ctx: BindingContext,
  ) {
    this.decoder = new HeaderBlockDecoder(TABLE_SIZE, ctx.config.limits.maxClientHeaderBytes * 2);
    socket.on('data', this.onClientData);
    socket.on('drain', this.onClientDrain);
    socket.on('close', this.onClientClose);
    this.firstTimer = setTimeout(() => this.perRequest(), FIRST_REQUEST_MS);
    ctx.track(this);
  }

  get subject(): string | null {
    return this.binding?.admitted.identity.subject ?? null;
  }

  get clusterId(): string | null {
    return this.binding?.admitted.clusterId ?? null;
  }

  get tunnel(): AgentTunnel | null {
    return this.binding?.tunnel ?? null;
  }

  get idle(): boolean {
    return this.binding !== null && this.carried.size === 0;
  }

  private readonly onClientData = (chunk: Buffer): void => {
    this.lastActive = Date.now();
    if (this.state === 'first' || this.state === 'admitting') this.sniff(chunk);
    else if (this.state === 'bound') this.fromClient(chunk);
  };

  private readonly onClientDrain = (): void => {
    this.binding?.stream.resume();
  };

  private readonly onClientClose = (): void => {
    this.shutdown('destroy');
  };

  // ---- before binding -------------------------------------------------------------------

  /** Frames read before binding (the bytes themselves stay in `received`). */
  private readonly sniffFrames = new FrameReader();
  private sniffBlock: Block | null = null;

  /**
   * Read up to the first request's header block without answering anything; then admit it. While
   * admission runs the client may go on sending: requests, DATA, SETTINGS are kept for later; a
   * frame that wants an answer now (PING) or cancels (RST_STREAM, GOAWAY) hands the connection to
   * the per-request server at once, which answers it (and admits the first request again).
   */
  private sniff(chunk: Buffer): void {
    this.received.push(chunk);
    this.receivedBytes += chunk.length;
    let bytes = chunk;
    if (this.receivedBytes - chunk.length < PREFACE.length) {
      const all = Buffer.concat(this.received);
      const seen = all.subarray(0, Math.min(all.length, PREFACE.length));
      if (!PREFACE.subarray(0, seen.length).equals(seen)) return this.perRequest();
      if (all.length < PREFACE.length) return;
      bytes = all.subarray(PREFACE.length);
    }
    const frames: Frame[] = [];
    if (this.sniffFrames.push(bytes, frames) !== 'ok') return this.perRequest();
    for (const f of frames) {
      if (this.state === 'admitting') {
        if (f.type === FrameType.PING || f.type === FrameType.RST_STREAM || f.type === FrameType.GOAWAY) return this.perRequest();
        continue;
      }
      let block = this.sniffBlock;
      if (block !== null) {
        if (f.type !== FrameType.CONTINUATION || f.stream !== block.stream) return this.perRequest();
        block.fragments.push(f.payload);
        block.bytes += f.payload.length;
      } else if (f.type === FrameType.HEADERS) {
        const fragment = headersFragment(f);
        if (fragment === null) return this.perRequest();
        block = this.sniffBlock = { stream: f.stream, endStream: (f.flags & Flag.END_STREAM) !== 0, fragments: [fragment], bytes: fragment.length };
      } else if (f.type === FrameType.PING) return this.perRequest();
      else continue;
      if (block.bytes > this.ctx.config.limits.maxClientHeaderBytes * 2) return this.perRequest();
      if ((f.flags & Flag.END_HEADERS) !== 0) {
        this.sniffBlock = null;
        this.admitFirst(block);
      }
    }
    if (this.state === 'first' && this.receivedBytes > 4 * DEFAULT_MAX_FRAME) return this.perRequest();
    // What waits for the binding is bounded: past it the client waits for the answer.
    if (this.state === 'admitting' && this.receivedBytes > SNIFF_LIMIT) this.socket.pause();
  }

  private admitFirst(block: Block): void {
    if (this.state !== 'first') return;
    let request: Request | null = null;
    try {
      request = requestOf(new HeaderBlockDecoder(TABLE_SIZE, this.ctx.config.limits.maxClientHeaderBytes * 2).decode(Buffer.concat(block.fragments)));
    } catch {
      request = null;
    }
    if (request === null || request.method === 'CONNECT' || request.authority === undefined) return this.perRequest();
    this.clearFirstTimer();
    this.state = 'admitting';
    void this.bindFirst(request);
  }

  private async bindFirst(request: Request): Promise<void> {
    const headers = headersOf(request);
    let admitted: Admitted;
    try {
      admitted = await this.ctx.proxy.admit(headers, request.authority);
    } catch {
      // Refused: the per-request server admits it again and answers with the code.
      return this.perRequest();
    }
    if (this.state !== 'admitting') return;
    const { identity } = admitted;
    const exp = typeof identity.claims.exp === 'number' ? identity.claims.exp * 1000 : Infinity;
    if (exp <= Date.now() || !HEADER_SAFE.test(identity.subject) || !HEADER_SAFE.test(identity.issuer)) return this.perRequest();
    const tunnel = this.ctx.tunnels.pick(admitted.clusterId);
    if (tunnel === null) return this.perRequest();
    const pseudo: OutgoingHttpHeaders = { ':method': 'CONNECT', ':protocol': BIND_PROTOCOL_H2, ':path': request.path, ':authority': request.authority ?? admitted.clusterId, ':scheme': 'https' };
    const out = this.ctx.proxy.tunnelHeaders({}, admitted, this.socket.remoteAddress, 'http2', pseudo);
    let stream: ClientHttp2Stream;
    try {
      stream = tunnel.session.request(out);
    } catch {
      return this.perRequest();
    }
    stream.on('error', ignoreError);
    tunnel.activeStreams++;
    let settled = false;
    const settle = (): boolean => {
      if (settled) return false;
      settled = true;
      clearTimeout(timer);
      return true;
    };
    const timer = setTimeout(() => {
      if (!settle()) return;
      stream.close(NGHTTP2_CANCEL);
      this.perRequest();
    }, this.ctx.config.responseTimeoutMs);
    stream.once('close', () => {
      tunnel.activeStreams--;
      if (settle()) this.perRequest();
    });
    stream.once('response', (responseHeaders: IncomingHttpHeaders) => {
      if (!settle()) return;
      const scope = Number(responseHeaders[':status']) === 200 ? parseBindScope(responseHeaders[H_BIND_SCOPE]) : null;
      if (scope === null || this.state !== 'admitting') {
        stream.close(NGHTTP2_CANCEL);
        this.perRequest();
        return;
      }
      this.bound(admitted, tunnel, stream, scope, request, out);
    });
  }

  private bound(admitted: Admitted, tunnel: AgentTunnel, stream: ClientHttp2Stream, scope: BindScope, request: Request, out: OutgoingHttpHeaders): void {
    const injected: HeaderField[] = [];
    for (const name in out) {
      if (name.startsWith(HEADER_PREFIX) && name !== 'tether-request-id') injected.push({ name, value: String(out[name]) });
    }
    const binding: Binding = {
      admitted,
      tunnel,
      stream,
      scope,
      authority: request.authority,
      authorization: fieldOf(request, 'authorization'),
      clusterHeader: fieldOf(request, H_CLUSTER),
      injected,
      encoder: new HeaderBlockEncoder(),
      requests: this.ctx.metrics.requestsFor(admitted.clusterId, 'http2-bound'),
      ...headTimeout(this.ctx.config.responseTimeoutMs, scope.timeoutMs),
    };
    this.binding = binding;
    this.state = 'bound';
    this.authorizedAt = Date.now();
    const exp = admitted.identity.claims.exp;
    this.expiresAt = typeof exp === 'number' ? exp * 1000 : Infinity;
    this.ctx.metrics.bindings.inc({ cluster: admitted.clusterId });
    stream.once('close', () => {
      this.ctx.metrics.bindings.dec({ cluster: admitted.clusterId });
      // The upstream closed its connection, the route went away, the tunnel was lost: the client
      // connection goes with it (its upstream's last frames, a GOAWAY among them, were passed on).
      if (this.binding === binding) this.shutdown('end');
    });
    stream.on('data', (chunk: Buffer) => this.fromUpstream(chunk));
    stream.once('end', () => {
      if (this.binding === binding) this.shutdown('end');
    });
    stream.on('drain', () => {
      if (this.binding === binding && this.held === null) this.socket.resume();
    });
    // Everything read so far is read again, as a bound connection reads: the preface goes as is.
    const bytes = Buffer.concat(this.received);
    this.received = [];
    stream.write(PREFACE);
    this.fromClient(bytes.subarray(PREFACE.length));
    // A drain that began while the first request was admitted: what was sent completes, nothing more.
    if (this.ctx.draining()) this.goawayGracefully();
    if (this.held === null && this.state === 'bound') this.socket.resume();
  }

  /** Give the connection to the per-request HTTP/2 server with what it sent so far. */
  private perRequest(): void {
    if (this.state !== 'first' && this.state !== 'admitting') return;
    this.state = 'done';
    this.clearFirstTimer();
    const bytes = Buffer.concat(this.received);
    this.received = [];
    this.detach();
    this.ctx.toPerRequestH2(this.socket, bytes);
  }

  // ---- client to upstream ---------------------------------------------------------------

  private fromClient(chunk: Buffer): void {
    const frames: Frame[] = [];
    const read = this.clientFrames.push(chunk, frames);
    this.clientFramesRead(frames);
    if (read === 'too-large' && this.state === 'bound') this.connectionError(ErrorCode.FRAME_SIZE_ERROR, 'a frame over SETTINGS_MAX_FRAME_SIZE', 'frame_size');
  }

  private clientFramesRead(frames: Frame[]): void {
    const binding = this.binding;
    if (binding === null) return;
    const out: Buffer[] = [];
    for (let i = 0; i < frames.length; i++) {
      if (this.state !== 'bound') return;
      const f = frames[i] as Frame;
      if (this.block !== null) {
        if (f.type !== FrameType.CONTINUATION || f.stream !== this.block.stream) return this.connectionError(ErrorCode.PROTOCOL_ERROR, 'a header block interrupted', 'protocol');
        if (!this.addFragment(f.payload)) return;
        if ((f.flags & Flag.END_HEADERS) !== 0) {
          const verdict = this.blockDone(binding, out);
          if (verdict === 'hold') return this.hold(binding, frames.slice(i + 1), out);
        }
        continue;
      }
      switch (f.type) {
        case FrameType.HEADERS: {
          const fragment = headersFragment(f);
          if (fragment === null || f.stream === 0 || f.stream % 2 === 0) return this.connectionError(ErrorCode.PROTOCOL_ERROR, 'a malformed HEADERS frame', 'protocol');
          this.block = { stream: f.stream, endStream: (f.flags & Flag.END_STREAM) !== 0, fragments: [], bytes: 0 };
          if (!this.addFragment(fragment)) return;
          if ((f.flags & Flag.END_HEADERS) !== 0) {
            const verdict = this.blockDone(binding, out);
            if (verdict === 'hold') return this.hold(binding, frames.slice(i + 1), out);
          }
          break;
        }
        case FrameType.CONTINUATION:
        case FrameType.PUSH_PROMISE:
          return this.connectionError(ErrorCode.PROTOCOL_ERROR, `an unexpected frame of type ${f.type}`, 'protocol');
        case FrameType.DATA:
          if (this.refused.has(f.stream)) {
            // Dropped: the client's connection window gets back what it spent on it.
            if (f.payload.length > 0) this.inject([windowUpdate(0, f.payload.length)]);
            if ((f.flags & Flag.END_STREAM) !== 0) this.refused.delete(f.stream);
            break;
          }
          if ((f.flags & Flag.END_STREAM) !== 0) this.clientEnded(f.stream);
          this.ctx.proxy.bytesToAgent.inc(f.payload.length);
          out.push(f.raw);
          break;
        case FrameType.RST_STREAM:
          if (this.refused.delete(f.stream)) break;
          if (!this.clientReset(f.stream)) return;
          out.push(f.raw);
          break;
        case FrameType.PRIORITY:
        case FrameType.WINDOW_UPDATE:
          if (f.stream !== 0 && this.refused.has(f.stream)) break;
          out.push(f.raw);
          break;
        case FrameType.SETTINGS:
          if ((f.flags & Flag.ACK) === 0) {
            const settings = settingsOf(f.payload);
            if (settings === null) return this.connectionError(ErrorCode.FRAME_SIZE_ERROR, 'a SETTINGS frame of the wrong length', 'frame_size');
            for (const { id, value } of settings) if (id === Setting.MAX_FRAME_SIZE) this.upstreamFrames.maxFrame = Math.min(Math.max(value, DEFAULT_MAX_FRAME), 16_777_215);
          }
          out.push(f.raw);
          break;
        default:
          out.push(f.raw);
      }
    }
    this.toUpstream(binding, out);
    this.finishIfDone();
  }

  private addFragment(fragment: Buffer): boolean {
    const block = this.block as Block;
    block.fragments.push(fragment);
    block.bytes += fragment.length;
    if (block.bytes <= this.ctx.config.limits.maxClientHeaderBytes * 2) return true;
    this.connectionError(ErrorCode.ENHANCE_YOUR_CALM, 'a header block over the limit', 'flood');
    return false;
  }

  /** A complete client header block: a request, trailers, or a block for a stream answered here. */
  private blockDone(binding: Binding, out: Buffer[]): 'ok' | 'hold' | 'closed' {
    const block = this.block as Block;
    this.block = null;
    let fields: HeaderField[];
    try {
      fields = this.decoder.decode(block.fragments.length === 1 ? (block.fragments[0] as Buffer) : Buffer.concat(block.fragments));
    } catch (reason) {
      this.connectionError(ErrorCode.COMPRESSION_ERROR, reason instanceof HpackError ? reason.message : 'undecodable header block', 'compression');
      return 'closed';
    }
    const id = block.stream;
    if (this.refused.has(id)) {
      if (block.endStream) this.refused.delete(id);
      return 'ok';
    }
    const carried = this.carried.get(id);
    if (carried !== undefined) {
      // Trailers: the gateway's own names go no further.
      if (!block.endStream || carried.clientDone) {
        this.connectionError(ErrorCode.PROTOCOL_ERROR, 'a second header block without END_STREAM', 'protocol');
        return 'closed';
      }
      const trailers = fields.filter((f) => !f.name.startsWith(HEADER_PREFIX) && !f.name.startsWith(':'));
      out.push(...headerFrames(id, binding.encoder.encode(trailers), true, DEFAULT_MAX_FRAME));
      this.clientEnded(id);
      return 'ok';
    }
    if (id <= this.lastClientStream) {
      this.connectionError(ErrorCode.PROTOCOL_ERROR, `stream ${id} is not a new stream`, 'protocol');
      return 'closed';
    }
    if (this.goawayAt !== null) {
      this.lastClientStream = id;
      this.refuse(id, block.endStream, { reset: ErrorCode.REFUSED_STREAM });
      return 'ok';
    }
    const now = Date.now();
    if (now - this.authorizedAt >= this.ctx.config.bindingReauthorizeMs) {
      // Read again once the identity is authorized afresh.
      this.block = block;
      this.decoderRewind = fields;
      return 'hold';
    }
    this.lastClientStream = id;
    this.request(binding, block, fields, now, out);
    return 'ok';
  }

  /** Fields of a block decoded before a hold (the decoder's table has already taken them). */
  private decoderRewind: HeaderField[] | null = null;

  private request(binding: Binding, block: Block, fields: HeaderField[], now: number, out: Buffer[]): void {
    const id = block.stream;
    const request = requestOf(fields);
    if (request === null) {
      this.ctx.metrics.errors.inc({ code: 'BAD_REQUEST' });
      return this.refuse(id, block.endStream, { reset: ErrorCode.PROTOCOL_ERROR });
    }
    if (now >= this.expiresAt) return this.refuseAndClose(id, 'BINDING_EXPIRED', 'the token that opened this connection has expired');
    if (this.ctx.proxy.revokedSubjects.has(binding.admitted.identity.subject)) return this.refuseAndClose(id, 'IDENTITY_REVOKED', 'the identity has been revoked');
    if (
      request.method === 'CONNECT' ||
      request.authority !== binding.authority ||
      fieldOf(request, 'authorization') !== binding.authorization ||
      (this.ctx.config.allowClusterHeader && fieldOf(request, H_CLUSTER) !== binding.clusterHeader) ||
      !inBindScope(binding.scope, request.path)
    ) {
      this.ctx.metrics.errors.inc({ code: 'BINDING_MISMATCH' });
      return this.refuse(id, block.endStream, { code: 'BINDING_MISMATCH' });
    }
    const forwarded: HeaderField[] = [
      { name: ':method', value: request.method },
      { name: ':scheme', value: request.scheme },
      { name: ':authority', value: request.authority ?? '' },
      { name: ':path', value: `${binding.scope.base}${request.path}` },
    ];
    const dropCredential = binding.scope.forwardCredential !== true;
    for (const f of request.fields) {
      if (f.name.startsWith(HEADER_PREFIX) || (dropCredential && f.name === 'authorization')) continue;
      forwarded.push(f);
    }
    for (const f of binding.injected) forwarded.push(f);
    forwarded.push({ name: 'tether-request-id', value: randomUUID() });
    out.push(...headerFrames(id, binding.encoder.encode(forwarded), block.endStream, DEFAULT_MAX_FRAME));
    this.carried.set(id, { clientDone: block.endStream, serverDone: false, headDue: now + binding.headTimeoutMs });
    binding.requests.inc();
  }

  /** Hold the frames after a request due for reauthorization; read them again once it is done. */
  private hold(binding: Binding, rest: Frame[], out: Buffer[]): void {
    this.toUpstream(binding, out);
    this.held = rest;
    this.socket.pause();
    void this.reauthorize(binding);
  }

  private async reauthorize(binding: Binding): Promise<void> {
    let allowed = false;
    try {
      allowed = await this.ctx.proxy.authorize(binding.admitted.identity, binding.admitted.clusterId);
    } catch (reason) {
      this.ctx.logger.warn({ err: reason }, 'authorizer failed; denying');
    }
    if (this.state !== 'bound' || this.binding !== binding) return;
    const block = this.block as Block;
    const fields = this.decoderRewind as HeaderField[];
    this.block = null;
    this.decoderRewind = null;
    const held = this.held ?? [];
    this.held = null;
    this.lastClientStream = block.stream;
    if (!allowed) return this.refuseAndClose(block.stream, 'FORBIDDEN', `${binding.admitted.identity.subject} may no longer reach cluster ${binding.admitted.clusterId}`);
    this.authorizedAt = Date.now();
    const out: Buffer[] = [];
    this.request(binding, block, fields, Date.now(), out);
    this.toUpstream(binding, out);
    this.clientFramesRead(held);
    if (this.state === 'bound' && this.held === null) this.socket.resume();
  }

  private toUpstream(binding: Binding, out: Buffer[]): void {
    if (out.length === 0 || this.state !== 'bound') return;
    const stream = binding.stream;
    let ok = true;
    if (out.length === 1) ok = stream.write(out[0] as Buffer);
    else {
      stream.cork();
      for (const piece of merge(out)) ok = stream.write(piece) && ok;
      stream.uncork();
    }
    if (!ok) this.socket.pause();
  }

  private clientEnded(id: number): void {
    const carried = this.carried.get(id);
    if (carried === undefined) return;
    carried.clientDone = true;
    if (carried.serverDone) this.streamDone(id);
  }

  /** The client reset a stream; false when resets of unanswered streams come faster than allowed (the connection is closed). */
  private clientReset(id: number): boolean {
    const carried = this.carried.get(id);
    if (carried === undefined) return true;
    this.streamDone(id);
    if (carried.headDue === Infinity) return true;
    const now = Date.now();
    this.resetTokens = Math.min(RESET_BURST, this.resetTokens + ((now - this.resetAt) / 1000) * RESET_RATE);
    this.resetAt = now;
    if (--this.resetTokens >= 0) return true;
    this.connectionError(ErrorCode.ENHANCE_YOUR_CALM, 'too many streams reset before their response', 'flood');
    return false;
  }

  private streamDone(id: number): void {
    this.carried.delete(id);
    if (this.carried.size === 0) this.lastActive = Date.now();
  }

  /** After a GOAWAY of the gateway's, the connection closes once the last stream is done and its frames are written. */
  private finishIfDone(): void {
    if (this.goawayAt !== null && this.carried.size === 0 && this.state === 'bound') this.shutdown('end');
  }

  // ---- upstream to client ---------------------------------------------------------------

  private fromUpstream(chunk: Buffer): void {
    if (this.state !== 'bound') return;
    const frames: Frame[] = [];
    if (this.upstreamFrames.push(chunk, frames) === 'too-large') {
      this.ctx.metrics.errors.inc({ code: 'UPSTREAM_ERROR' });
      this.shutdown('destroy');
      return;
    }
    const out: Buffer[] = [];
    for (const f of frames) {
      switch (f.type) {
        case FrameType.SETTINGS:
          if ((f.flags & Flag.ACK) === 0) this.upstreamSettings(f);
          break;
        case FrameType.HEADERS:
        case FrameType.PUSH_PROMISE:
          this.upstreamInBlock = (f.flags & Flag.END_HEADERS) === 0;
          if (f.type === FrameType.HEADERS) {
            const carried = this.carried.get(f.stream);
            if (carried !== undefined) carried.headDue = Infinity;
            if ((f.flags & Flag.END_STREAM) !== 0) this.serverEnded(f.stream);
          }
          break;
        case FrameType.CONTINUATION:
          if ((f.flags & Flag.END_HEADERS) !== 0) this.upstreamInBlock = false;
          break;
        case FrameType.DATA:
          this.ctx.proxy.bytesToClient.inc(f.payload.length);
          if ((f.flags & Flag.END_STREAM) !== 0) this.serverEnded(f.stream);
          break;
        case FrameType.RST_STREAM:
          if (this.carried.has(f.stream)) this.streamDone(f.stream);
          break;
      }
      out.push(f.raw);
      // A frame of the gateway's goes between two of the upstream's, never inside a header block.
      if (!this.upstreamInBlock && this.injections.length > 0) out.push(...this.injections.splice(0));
    }
    this.toClient(out);
    this.finishIfDone();
  }

  /**
   * The upstream's SETTINGS go to the client with two changes: the HPACK table the client may use
   * is at most the one the gateway decodes with, and extended CONNECT is off (a WebSocket is not
   * carried on a bound connection; the client opens it on a connection of its own).
   */
  private upstreamSettings(f: Frame): void {
    const settings = settingsOf(f.payload);
    if (settings === null) return;
    for (const { id, value, at } of settings) {
      if (id === Setting.HEADER_TABLE_SIZE) {
        // The upstream's decoder limit binds the gateway's encoder; the client sees at most its own decoder's.
        this.binding?.encoder.setLimit(value);
        if (value > TABLE_SIZE) f.payload.writeUInt32BE(TABLE_SIZE, at + 2);
      } else if (id === Setting.ENABLE_CONNECT_PROTOCOL && value !== 0) f.payload.writeUInt32BE(0, at + 2);
      else if (id === Setting.MAX_FRAME_SIZE) this.clientFrames.maxFrame = Math.min(Math.max(value, DEFAULT_MAX_FRAME), 16_777_215);
    }
  }

  private serverEnded(id: number): void {
    const carried = this.carried.get(id);
    if (carried === undefined) return;
    carried.serverDone = true;
    if (carried.clientDone) this.streamDone(id);
  }

  private toClient(out: Buffer[]): void {
    const socket = this.socket;
    if (out.length === 0 || socket.destroyed) return;
    let ok = true;
    if (out.length === 1) ok = socket.write(out[0] as Buffer);
    else {
      socket.cork();
      for (const piece of merge(out)) ok = socket.write(piece) && ok;
      socket.uncork();
    }
    if (!ok) this.binding?.stream.pause();
  }

  /** Frames of the gateway's for the client: now, or after the upstream's header block in progress. */
  private inject(frames: Buffer[]): void {
    if (this.upstreamInBlock) this.injections.push(...frames);
    else this.toClient(frames);
  }

  // ---- answers of the gateway's ---------------------------------------------------------

  /**
   * Answer stream `id` here: a status with `tether-error` and no body (or a reset), and drop what
   * the client still sends on it. Too many on one connection close it.
   */
  private refuse(id: number, ended: boolean, how: { code: string } | { reset: number }): void {
    const frames: Buffer[] = [];
    if ('code' in how) {
      const block = encodeLiteral([
        { name: ':status', value: String(statusOf(how.code)) },
        { name: H_ERROR, value: how.code },
      ]);
      frames.push(...headerFrames(id, block, true, DEFAULT_MAX_FRAME));
      // The rest of the request is not wanted (RFC 9113 §8.1).
      if (!ended) frames.push(rstStream(id, ErrorCode.NO_ERROR));
    } else frames.push(rstStream(id, how.reset));
    if (!ended) this.refused.add(id);
    this.inject(frames);
    if (++this.refusedCount > MAX_REFUSED) this.connectionError(ErrorCode.ENHANCE_YOUR_CALM, `more than ${MAX_REFUSED} requests refused`, 'flood');
  }

  /** Answer stream `id` with `code` and a body, then GOAWAY and close (expiry, revocation, a denied reauthorization). */
  private refuseAndClose(id: number, code: string, message: string): void {
    this.ctx.metrics.errors.inc({ code });
    const fields: HeaderField[] = [
      { name: ':status', value: String(statusOf(code)) },
      { name: 'content-type', value: 'text/plain; charset=utf-8' },
      { name: H_ERROR, value: code },
    ];
    if (statusOf(code) === 401) fields.push({ name: 'www-authenticate', value: 'Bearer' });
    const body = Buffer.from(`${code}: ${message}\n`);
    this.inject([...headerFrames(id, encodeLiteral(fields), false, DEFAULT_MAX_FRAME), frame(FrameType.DATA, Flag.END_STREAM, id, body)]);
    this.goawayAndClose(ErrorCode.NO_ERROR, code);
  }

  /** A connection error of the client's (RFC 9113 §5.4.1): GOAWAY with the code, then close. */
  private connectionError(code: number, message: string, reason: string): void {
    if (this.state !== 'bound') return;
    this.ctx.metrics.sessionErrors.inc({ peer: 'client', reason });
    this.ctx.logger.debug({ message }, 'bound HTTP/2 client connection error');
    this.goawayAndClose(code, message);
  }

  private goawayAndClose(code: number, debug: string): void {
    // Once the upstream's header block in progress is complete, or at once (it may never come).
    this.upstreamInBlock = false;
    this.inject([goaway(this.lastClientStream, code, debug)]);
    this.shutdown('end');
  }

  /**
   * GOAWAY to the client: streams it has opened complete, later ones are refused
   * (REFUSED_STREAM, retried elsewhere by clients), and the connection closes once none is open.
   */
  private goawayGracefully(): void {
    if (this.state !== 'bound' || this.goawayAt !== null) return;
    this.goawayAt = this.lastClientStream;
    this.inject([goaway(this.lastClientStream, ErrorCode.NO_ERROR, 'draining')]);
    this.finishIfDone();
  }

  // ---- what the sweep and the registry call -----------------------------------------------

  closeIfIdle(now: number): void {
    if (this.state !== 'bound' || this.carried.size > 0 || now - this.lastActive < this.ctx.config.clientIdleTimeoutMs) return;
    this.goawayAndClose(ErrorCode.NO_ERROR, 'idle');
  }

  /** Streams whose response head is overdue: 504 with the code, and the stream reset both ways. */
  checkDeadline(now: number): void {
    const binding = this.binding;
    if (binding === null || this.state !== 'bound') return;
    for (const [id, carried] of this.carried) {
      if (carried.headDue > now) continue;
      const code = binding.headTimeoutCode;
      this.ctx.metrics.errors.inc({ code });
      this.streamDone(id);
      this.toUpstream(binding, [rstStream(id, ErrorCode.CANCEL)]);
      // The 504 opens no body; the reset ends the stream for the client whatever the upstream still sends on it.
      this.inject([...headerFrames(id, encodeLiteral([{ name: ':status', value: String(statusOf(code)) }, { name: H_ERROR, value: code }]), false, DEFAULT_MAX_FRAME), rstStream(id, ErrorCode.NO_ERROR)]);
      if (!carried.clientDone) this.refused.add(id);
    }
    this.finishIfDone();
  }

  /** At `exp` or on revocation, cluster removal: GOAWAY with the code, and the connection closes now. */
  expire(code: string): void {
    if (this.state === 'done') return;
    this.ctx.metrics.errors.inc({ code });
    if (this.state !== 'bound') return this.shutdown('destroy');
    this.goawayAndClose(ErrorCode.NO_ERROR, code);
  }

  closeGracefully(): void {
    if (this.state === 'bound') this.goawayGracefully();
  }

  /** The binding's tunnel is draining: the client is told to go elsewhere for new streams. */
  tunnelDraining(): void {
    this.goawayGracefully();
  }

  destroy(): void {
    this.shutdown('destroy');
  }

  private clearFirstTimer(): void {
    if (this.firstTimer !== null) clearTimeout(this.firstTimer);
    this.firstTimer = null;
  }

  private shutdown(how: 'end' | 'destroy'): void {
    if (this.state === 'done') {
      if (how === 'destroy') this.socket.destroy();
      return;
    }
    this.state = 'done';
    this.clearFirstTimer();
    const binding = this.binding;
    this.binding = null;
    if (binding !== null && !binding.stream.closed) binding.stream.close(NGHTTP2_CANCEL);
    this.detach();
    if (how === 'destroy') {
      this.socket.destroy();
      return;
    }
    this.socket.end();
    // Whatever the client still sends is read and dropped, so its close is seen.
    this.socket.resume();
  }

  private detach(): void {
    this.socket.off('data', this.onClientData);
    this.socket.off('drain', this.onClientDrain);
    this.socket.off('close', this.onClientClose);
    this.ctx.untrack(this);
  }
}
