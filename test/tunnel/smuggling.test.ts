/**
 * Request smuggling through the gateway's HTTP/1.1 front door, over raw sockets: the cleartext
 * port (node:net) and the TLS port (node:tls, ALPN http/1.1). Behind each cluster's agent sits a
 * raw TCP upstream that records every request head it receives verbatim and reads it strictly
 * (CRLF only, no obs-fold, one Content-Length or exactly `chunked`, strict chunk lines), so what
 * reached it is parsed by nobody but this file.
 *
 * Every case is an authenticated request for c1 whose bytes try to slip a second request past the
 * gateway: one with a `/smuggled-*` path, no token and a forged `tether-subject: admin` /
 * `tether-identity`. The file proves, for every case, over both ports:
 *   1. no upstream ever saw a request for a `/smuggled-*` path, a `tether-subject` or
 *      `tether-identity` other than the gateway's own (the token's subject), or a head or chunk
 *      it had to refuse as ambiguous; c2's upstream (c1's token cannot reach c2) saw nothing; and
 *      a request the client was refused never reached it complete (it would act on it);
 *   2. the client got a 4xx answer with a `tether-error` code, or its connection was closed; never
 *      a hang (every read is bounded by an event-driven wait that fails the test when it expires);
 *   3. the gateway then still serves a normal authenticated request.
 * Pipelined requests (no token; or Host / tether-cluster switched to c2) are answered with their
 * own 4xx in per-request mode; with connection binding one may instead reach c1's upstream, as its
 * own request with the gateway's identity fields, never c2's.
 *
 * The gateway's binding mode comes from the environment (test/helpers/tunnel-env.ts, default
 * `connection`); `TETHER_TEST_BINDING=request npx ava test/tunnel/smuggling.test.ts` runs this file
 * against per-request mode.
 */
import test, { type ExecutionContext } from 'ava';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { failOnLeaks } from '../helpers/leaks.js';
import { splitHostPort } from '../helpers/tunnel-clients.js';
import { ISSUER, TEST_BINDING, startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';

failOnLeaks(test);

/** Longest wait for an answer or a close on one client connection; past it the case failed (a hang). */
const ANSWER_TIMEOUT_MS = 5_000;
/** Longest wait for the gateway's tunnel streams to finish after a case's connection closed. */
const SETTLE_TIMEOUT_MS = 5_000;
const C1_HOST = 'c1.tether.localhost';
const C2_HOST = 'c2.tether.localhost';
/** The subject `env.token()` signs for (tunnel-env's default). */
const SUBJECT = 'alice';
const FORGED_IDENTITY = Buffer.from(JSON.stringify({ sub: 'admin', iss: ISSUER })).toString('base64url');

// ---- the recording upstream -------------------------------------------------------------------

interface SeenRequest {
  method: string;
  target: string;
  /** The head exactly as received, up to and including its blank line. */
  head: string;
  /** Field lines in order: names lowercased, values without surrounding whitespace. */
  fields: Array<[string, string]>;
  body: Buffer;
  /** The whole body (and the chunked trailer section) arrived. */
  complete: boolean;
}

interface RecordingUpstream {
  name: string;
  url: string;
  /** Requests whose head arrived (recorded before their body), oldest first. */
  requests: SeenRequest[];
  /** What it refused to read (answered 400 and closed): the reason and the bytes from there. */
  refused: Array<{ reason: string; bytes: string }>;
  /** Every byte received since the last reset, all connections (diagnostics only). */
  received: Buffer[];
  reset(): void;
  close(): Promise<void>;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP\/1\.1$/;
const FIELD_LINE = /^([^:]*):[ \t]*(.*?)[ \t]*$/;
/** Field values: no control characters but tab. */
const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;
const CHUNK_LINE = /^([0-9A-Fa-f]{1,15})(?:[ \t]*;[\x20-\x7e\t]*)?$/;
const MAX_HEAD_BYTES = 64 * 1024;

type ReadState = 'head' | 'length' | 'chunk-line' | 'chunk-data' | 'chunk-end' | 'trailers' | 'refused';

/** Field lines after the first line of a head (or a trailer section); an error string when one is not strict. */
function readFields(lines: string[], into: Array<[string, string]>): string | null {
  for (const line of lines) {
    if (line.startsWith(' ') || line.startsWith('\t')) return 'obs-fold (continuation line)';
    const match = FIELD_LINE.exec(line);
    if (match === null) return `field line without a colon: ${JSON.stringify(line)}`;
    const name = match[1] as string;
    const value = match[2] as string;
    if (!TOKEN.test(name)) return `invalid field name ${JSON.stringify(name)}`;
    if (BAD_VALUE.test(value)) return `control character in ${name}`;
    into.push([name.toLowerCase(), value]);
  }
  return null;
}

/** One upstream connection: reads requests one after the other and answers each with `response`. */
function serveConnection(socket: net.Socket, upstream: RecordingUpstream, response: string): void {
  let buffer: Buffer = Buffer.alloc(0);
  let state: ReadState = 'head';
  let remaining = 0;
  let current: SeenRequest | null = null;
  let closeAfter = false;

  const refuse = (reason: string): void => {
    state = 'refused';
    upstream.refused.push({ reason, bytes: buffer.toString('latin1', 0, 2048) });
    socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
  };
  const finish = (): void => {
    if (current !== null) current.complete = true;
    current = null;
    state = 'head';
    socket.write(response);
    if (closeAfter) socket.end();
  };
  /** The next CRLF-terminated line, or null when it has not arrived (a bare LF refuses). */
  const line = (): string | null => {
    const at = buffer.indexOf('\r\n');
    const lf = buffer.indexOf('\n');
    if (lf !== -1 && (at === -1 || lf < at + 1)) {
      refuse('bare LF in a chunk line or trailer');
      return null;
    }
    if (at === -1) {
      if (buffer.length > 4096) refuse('chunk line too long');
      return null;
    }
    const text = buffer.toString('latin1', 0, at);
    buffer = buffer.subarray(at + 2);
    if (text.includes('\r')) {
      refuse('bare CR in a chunk line or trailer');
      return null;
    }
    return text;
  };

  const readHead = (): boolean => {
    const end = buffer.indexOf('\r\n\r\n');
    if (end === -1) {
      if (buffer.length > MAX_HEAD_BYTES) refuse('head too large');
      return false;
    }
    const head = buffer.toString('latin1', 0, end + 4);
    const lines = head.slice(0, -4).split('\r\n');
    if (lines.some((l) => l.includes('\n') || l.includes('\r'))) {
      refuse('bare LF or CR in the head');
      return false;
    }
    const requestLine = REQUEST_LINE.exec(lines[0] as string);
    if (requestLine === null) {
      refuse(`malformed request line ${JSON.stringify(lines[0])}`);
      return false;
    }
    const fields: Array<[string, string]> = [];
    const error = readFields(lines.slice(1), fields);
    if (error !== null) {
      refuse(error);
      return false;
    }
    const lengths = fields.filter(([n]) => n === 'content-length').map(([, v]) => v);
    const codings = fields.filter(([n]) => n === 'transfer-encoding').map(([, v]) => v);
    if (lengths.length > 0 && codings.length > 0) return refuse('both content-length and transfer-encoding'), false;
    if (lengths.length > 1) return refuse('more than one content-length'), false;
    if (codings.length > 1) return refuse('more than one transfer-encoding'), false;
    if (lengths.length === 1 && !/^\d{1,15}$/.test(lengths[0] as string)) return refuse(`invalid content-length ${JSON.stringify(lengths[0])}`), false;
    if (codings.length === 1 && (codings[0] as string).toLowerCase() !== 'chunked') return refuse(`transfer-encoding ${JSON.stringify(codings[0])}`), false;
    buffer = buffer.subarray(end + 4);
    current = { method: requestLine[1] as string, target: requestLine[2] as string, head, fields, body: Buffer.alloc(0), complete: false };
    upstream.requests.push(current);
    closeAfter = fields.some(([n, v]) => n === 'connection' && /(^|,)\s*close\s*(,|$)/i.test(v));
    if (codings.length === 1) state = 'chunk-line';
    else if (lengths.length === 1 && Number(lengths[0]) > 0) {
      state = 'length';
      remaining = Number(lengths[0]);
    } else finish();
    return true;
  };

  const take = (): void => {
    const piece = buffer.subarray(0, Math.min(remaining, buffer.length));
    buffer = buffer.subarray(piece.length);
    remaining -= piece.length;
    if (current !== null) current.body = Buffer.concat([current.body, piece]);
  };

  /** Read as far as the buffer goes; false when more bytes are needed. */
  const step = (): boolean => {
    switch (state) {
      case 'refused':
        return false;
      case 'head':
        return readHead();
      case 'length':
        take();
        if (remaining > 0) return false;
        finish();
        return true;
      case 'chunk-line': {
        const text = line();
        if (text === null) return false;
        const match = CHUNK_LINE.exec(text);
        if (match === null) return refuse(`malformed chunk line ${JSON.stringify(text)}`), false;
        remaining = parseInt(match[1] as string, 16);
        state = remaining === 0 ? 'trailers' : 'chunk-data';
        return true;
      }
      case 'chunk-data':
        take();
        if (remaining > 0) return false;
        state = 'chunk-end';
        return true;
      case 'chunk-end':
        if (buffer.length < 2) return false;
        if (buffer[0] !== 0x0d || buffer[1] !== 0x0a) return refuse('chunk data not followed by CRLF'), false;
        buffer = buffer.subarray(2);
        state = 'chunk-line';
        return true;
      case 'trailers': {
        const text = line();
        if (text === null) return false;
        if (text === '') {
          finish();
          return true;
        }
        const error = readFields([text], []);
        if (error !== null) return refuse(`trailer: ${error}`), false;
        return true;
      }
    }
  };

  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => {
    upstream.received.push(chunk);
    if (state === 'refused') return;
    buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]);
    while (step());
  });
}

/** A raw TCP upstream answering every request `200 OK` with `<name> ok\n` (Content-Length). */
async function startRecordingUpstream(name: string): Promise<RecordingUpstream> {
  const body = `${name} ok\n`;
  const response = `HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  const sockets = new Set<net.Socket>();
  const upstream: RecordingUpstream = {
    name,
    url: '',
    requests: [],
    refused: [],
    received: [],
    reset() {
      upstream.requests = [];
      upstream.refused = [];
      upstream.received = [];
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    serveConnection(socket, upstream, response);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  upstream.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return upstream;
}

// ---- the client side ----------------------------------------------------------------------------

type Transport = 'plain' | 'tls';

interface Answer {
  status: number;
  headers: Record<string, string[]>;
  body: string;
}

interface Outcome {
  /** Complete responses, in order. */
  responses: Answer[];
  /** How the wait ended: the gateway closed the connection, the expected answers came, or the time ran out. */
  ended: 'closed' | 'answered' | 'timeout';
  /** Bytes after the last complete response. */
  rest: string;
  /** A socket error seen before the close (ECONNRESET when the gateway cut the connection). */
  error: string | null;
}

function header(answer: Answer, name: string): string | undefined {
  return answer.headers[name]?.[0];
}

function tetherError(answer: Answer): string | undefined {
  return header(answer, 'tether-error');
}

function closes(answer: Answer): boolean {
  return (answer.headers.connection ?? []).some((v) => /(^|,)\s*close\s*(,|$)/i.test(v));
}

/** Split what the gateway sent into responses (Content-Length, chunked, or until the close when `closed`). */
function parseAnswers(bytes: string, closed: boolean): { responses: Answer[]; rest: string } {
  const responses: Answer[] = [];
  let at = 0;
  for (;;) {
    const end = bytes.indexOf('\r\n\r\n', at);
    if (end === -1) break;
    const lines = bytes.slice(at, end).split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] as string);
    if (status === null) break;
    const headers: Record<string, string[]> = {};
    for (const l of lines.slice(1)) {
      const colon = l.indexOf(':');
      if (colon <= 0) continue;
      const name = l.slice(0, colon).trim().toLowerCase();
      (headers[name] ??= []).push(l.slice(colon + 1).trim());
    }
    const code = Number(status[1]);
    let bodyStart = end + 4;
    let body = '';
    const length = headers['content-length']?.[0];
    if (code < 200 || code === 204 || code === 304) {
      // no body
    } else if ((headers['transfer-encoding']?.[0] ?? '').toLowerCase() === 'chunked') {
      let p = bodyStart;
      let complete = false;
      for (;;) {
        const lineEnd = bytes.indexOf('\r\n', p);
        if (lineEnd === -1) break;
        const size = parseInt(bytes.slice(p, lineEnd), 16);
        if (Number.isNaN(size)) break;
        if (size === 0) {
          const trailersEnd = bytes.indexOf('\r\n\r\n', lineEnd);
          if (trailersEnd === -1 && bytes.slice(lineEnd, lineEnd + 4) !== '\r\n\r\n') break;
          p = (trailersEnd === -1 ? lineEnd : trailersEnd) + 4;
          complete = true;
          break;
        }
        if (bytes.length < lineEnd + 2 + size + 2) break;
        body += bytes.slice(lineEnd + 2, lineEnd + 2 + size);
        p = lineEnd + 2 + size + 2;
      }
      if (!complete) break;
      bodyStart = p;
    } else if (length !== undefined) {
      const n = Number(length);
      if (bytes.length < bodyStart + n) break;
      body = bytes.slice(bodyStart, bodyStart + n);
      bodyStart += n;
    } else {
      // Delimited by the close.
      if (!closed) break;
      body = bytes.slice(bodyStart);
      bodyStart = bytes.length;
    }
    responses.push({ status: code, headers, body });
    at = bodyStart;
  }
  return { responses, rest: bytes.slice(at) };
}

let env: TunnelEnv;
let c1: RecordingUpstream;
let c2: RecordingUpstream;
let token: string;
let plainAddress: [string, number];
let tlsAddress: [string, number];

/**
 * Connect, send `payload` in one write, and read until the gateway closes the connection, or the
 * answers are in: `expected` complete responses, or a 4xx with `tether-error` (the gateway refused
 * something). A response saying `connection: close` waits for the close. Bounded by
 * ANSWER_TIMEOUT_MS (then `ended: 'timeout'`); the socket is destroyed before this resolves.
 */
function exchange(transport: Transport, payload: string, expected: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const [host, port] = transport === 'plain' ? plainAddress : tlsAddress;
    const socket =
      transport === 'plain'
        ? net.connect({ host, port, noDelay: true })
        : tls.connect({ host, port, servername: 'localhost', ca: env.pki.trustBundlePem, ALPNProtocols: ['http/1.1'] });
    let bytes = '';
    let error: string | null = null;
    let finished = false;
    const finish = (ended: Outcome['ended']): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ ...parseAnswers(bytes, ended === 'closed'), ended, error });
    };
    const timer = setTimeout(() => finish('timeout'), ANSWER_TIMEOUT_MS);
    socket.once(transport === 'plain' ? 'connect' : 'secureConnect', () => socket.write(Buffer.from(payload, 'latin1')));
    socket.on('data', (chunk: Buffer) => {
      bytes += chunk.toString('latin1');
      const { responses, rest } = parseAnswers(bytes, false);
      const last = responses.at(-1);
      if (last === undefined || rest !== '' || closes(last)) return;
      if (responses.length >= expected || (last.status >= 400 && last.status < 500 && tetherError(last) !== undefined)) finish('answered');
    });
    socket.on('error', (reason: NodeJS.ErrnoException) => {
      error = reason.code ?? reason.message;
    });
    socket.once('close', () => finish('closed'));
  });
}

function describe(outcome: Outcome): string {
  const answers = outcome.responses.map((r) => `${r.status}${tetherError(r) === undefined ? '' : ` ${tetherError(r)}`}${closes(r) ? ' (connection: close)' : ''}`);
  const rest = outcome.rest === '' ? '' : `, then ${JSON.stringify(outcome.rest.slice(0, 200))}`;
  return `[${answers.join(', ')}]${rest}; ${outcome.ended}${outcome.error === null ? '' : ` (${outcome.error})`}`;
}

/** Wait (bounded) until no tunnel stream of the gateway is open: whatever a case forwarded is done. */
async function tunnelsSettled(): Promise<boolean> {
  const deadline = Date.now() + SETTLE_TIMEOUT_MS;
  while (!env.gateway.tunnels.all().every((tunnel) => tunnel.activeStreams === 0)) {
    if (Date.now() > deadline) return false;
    await new Promise<void>((resolve) => setTimeout(resolve, 10));
  }
  return true;
}

test.before(async () => {
  c1 = await startRecordingUpstream('c1');
  c2 = await startRecordingUpstream('c2');
  env = await startTunnelEnv({
    clusters: ['c1', 'c2'],
    agents: [
      { clusterId: 'c1', agentId: 'a1', routes: [{ prefix: '/', upstream: c1.url }] },
      { clusterId: 'c2', agentId: 'a2', routes: [{ prefix: '/', upstream: c2.url }] },
    ],
  });
  token = await env.token(['c1']);
  const plainUrl = env.gateway.plainUrl;
  if (plainUrl === null) throw new Error('the test env has no plain port');
  plainAddress = splitHostPort(new URL(plainUrl).host);
  tlsAddress = splitHostPort(env.gateway.address);
});

test.after.always(async () => {
  await env?.close();
  await c1?.close();
  await c2?.close();
});

// ---- the cases ------------------------------------------------------------------------------------

interface Paths {
  first: string;
  smuggled: string;
  second: string;
  healthy: string;
}

interface Case {
  /** Stable: in the test title and in the case's paths. */
  id: string;
  title: string;
  payload(paths: Paths): string;
  /**
   * `smuggle`: the client must get a 4xx with tether-error, or a close. `duplicate-equal`: that, or
   * (RFC 9110 §8.6 allows it) one request whose body is the would-be smuggled bytes. `pipelined`: a
   * well-formed first request, then `second` with its own 4xx (`code`); under connection binding
   * the second may instead reach c1's upstream as its own request.
   */
  kind: 'smuggle' | 'duplicate-equal' | 'pipelined' | 'lenient-line';
  /** For `pipelined`: the tether-error per-request mode answers the second request with. */
  code?: string;
  /** Most responses the payload can draw: the read stops there. */
  responses: number;
}

/** The request a case tries to slip through: no token, a forged identity, a `/smuggled-*` path. */
function smuggledRequest(path: string): string {
  return `GET ${path} HTTP/1.1\r\nHost: ${C1_HOST}\r\ntether-subject: admin\r\ntether-identity: ${FORGED_IDENTITY}\r\n\r\n`;
}

/** An authenticated POST for c1 with `fields` (each one line, without its CRLF) and `body`. */
function authenticated(path: string, fields: string[], body: string): string {
  return `POST ${path} HTTP/1.1\r\nHost: ${C1_HOST}\r\nAuthorization: Bearer ${token}\r\n${fields.map((f) => `${f}\r\n`).join('')}\r\n${body}`;
}

/** `Content-Length` covers a last chunk and the smuggled request; a chunked reader sees the request after the body. */
function clteBody(paths: Paths): string {
  return `0\r\n\r\n${smuggledRequest(paths.smuggled)}`;
}

/** CL.TE with an obfuscated Transfer-Encoding line: the front end must not read the two differently from the upstream. */
function clte(teLine: string, contentLengthFirst = true): (paths: Paths) => string {
  return (paths) => {
    const body = clteBody(paths);
    const cl = `Content-Length: ${body.length}`;
    return authenticated(paths.first, contentLengthFirst ? [cl, teLine] : [teLine, cl], body);
  };
}

const CASES: Case[] = [
  {
    id: 'cl-te',
    title: 'CL+TE: Content-Length and Transfer-Encoding: chunked both present',
    kind: 'smuggle',
    responses: 1,
    payload: clte('Transfer-Encoding: chunked'),
  },
  {
    id: 'te-cl',
    title: 'TE+CL: the same in the other order (Content-Length covers only the first chunk-size line)',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => {
      const smuggled = smuggledRequest(paths.smuggled);
      const sizeLine = `${smuggled.length.toString(16)}\r\n`;
      return authenticated(paths.first, ['Transfer-Encoding: chunked', `Content-Length: ${sizeLine.length}`], `${sizeLine}${smuggled}\r\n0\r\n\r\n`);
    },
  },
  {
    id: 'cl-cl-different',
    title: 'duplicate Content-Length with different values',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => {
      const smuggled = smuggledRequest(paths.smuggled);
      return authenticated(paths.first, [`Content-Length: ${smuggled.length}`, 'Content-Length: 0'], smuggled);
    },
  },
  {
    id: 'cl-cl-equal',
    title: 'duplicate Content-Length with equal values',
    kind: 'duplicate-equal',
    responses: 1,
    payload: (paths) => {
      const smuggled = smuggledRequest(paths.smuggled);
      return authenticated(paths.first, [`Content-Length: ${smuggled.length}`, `Content-Length: ${smuggled.length}`], smuggled);
    },
  },
  {
    id: 'obs-fold-space',
    title: 'obs-fold: a continuation line starting with a space carries Transfer-Encoding',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => {
      const body = clteBody(paths);
      return authenticated(paths.first, [`Content-Length: ${body.length}`, 'X-Fold: a', ' Transfer-Encoding: chunked'], body);
    },
  },
  {
    id: 'obs-fold-tab',
    title: 'obs-fold: a continuation line starting with a tab carries Transfer-Encoding',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => {
      const body = clteBody(paths);
      return authenticated(paths.first, [`Content-Length: ${body.length}`, 'X-Fold: a', '\tTransfer-Encoding: chunked'], body);
    },
  },
  {
    id: 'bare-lf-field',
    title: 'bare LF line ending inside the head hides a Transfer-Encoding line',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => {
      const body = clteBody(paths);
      return authenticated(paths.first, [`Content-Length: ${body.length}`, 'X-Pad: a\nTransfer-Encoding: chunked'], body);
    },
  },
  {
    id: 'bare-lf-head',
    title: 'bare LF line endings throughout the head',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => {
      const smuggled = smuggledRequest(paths.smuggled);
      return `POST ${paths.first} HTTP/1.1\nHost: ${C1_HOST}\nAuthorization: Bearer ${token}\nContent-Length: ${smuggled.length}\n\n${smuggled}`;
    },
  },
  {
    id: 'te-chunked-identity',
    title: 'Transfer-Encoding: chunked , identity (with Content-Length)',
    kind: 'smuggle',
    responses: 1,
    payload: clte('Transfer-Encoding: chunked , identity'),
  },
  {
    id: 'te-identity-chunked',
    title: 'Transfer-Encoding: identity, chunked (with Content-Length)',
    kind: 'smuggle',
    responses: 1,
    payload: clte('Transfer-Encoding: identity, chunked'),
  },
  {
    id: 'te-xchunked',
    title: 'Transfer-Encoding: xchunked (with Content-Length)',
    kind: 'smuggle',
    responses: 1,
    payload: clte('Transfer-Encoding: xchunked'),
  },
  {
    id: 'te-mixed-case-whitespace',
    title: 'Transfer-Encoding in mixed case with trailing whitespace (with Content-Length)',
    kind: 'smuggle',
    responses: 1,
    payload: clte('tRaNsFeR-eNcOdInG: ChUnKeD \t'),
  },
  {
    id: 'chunk-size-oversized',
    title: 'oversized chunk size (ffffffffffffffffff)',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => authenticated(paths.first, ['Transfer-Encoding: chunked'], `ffffffffffffffffff\r\n${smuggledRequest(paths.smuggled)}\r\n0\r\n\r\n`),
  },
  {
    id: 'chunk-size-wraps',
    title: 'chunk size that wraps to 0 in 64 bits (10000000000000000)',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => authenticated(paths.first, ['Transfer-Encoding: chunked'], `10000000000000000\r\n\r\n${smuggledRequest(paths.smuggled)}`),
  },
  {
    id: 'chunk-extension-bare-lf',
    title: 'chunk extension containing a bare LF',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => {
      // A reader ending the chunk line at the LF sees two chunks and the smuggled request as data;
      // one reading the extension up to the CRLF sees the size line as data, then the last chunk,
      // then the smuggled request as the next request.
      const inner = `0\r\n\r\n${smuggledRequest(paths.smuggled)}`;
      const size = inner.length.toString(16);
      const body = `${size.length.toString(16)};x\n${'x'.repeat(size.length)}\r\n${size}\r\n${inner}\r\n0\r\n\r\n`;
      return authenticated(paths.first, ['Transfer-Encoding: chunked'], body);
    },
  },
  {
    id: 'nul-in-value',
    title: 'NUL byte in a header value',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => {
      const smuggled = smuggledRequest(paths.smuggled);
      return authenticated(paths.first, [`Content-Length: ${smuggled.length}`, 'X-Note: a\x00b'], smuggled);
    },
  },
  {
    id: 'space-before-colon',
    title: 'header name with a space before the colon (Transfer-Encoding : chunked)',
    kind: 'smuggle',
    responses: 1,
    payload: clte('Transfer-Encoding : chunked'),
  },
  {
    // Not smuggling (the request is the client's own, with its token): the question is only whether
    // a lenient read can ever differ from what the upstream gets. Binding mode's head scan refuses
    // it; per request, Node's parser takes the extra space as a separator and the gateway
    // re-serializes the request into HTTP/2, so the upstream sees one well-formed request.
    id: 'request-line-two-spaces',
    title: 'request line with two spaces between method and target',
    kind: 'lenient-line',
    responses: 1,
    payload: (paths) => `GET  ${paths.first} HTTP/1.1\r\nHost: ${C1_HOST}\r\nAuthorization: Bearer ${token}\r\n\r\n`,
  },
  {
    id: 'absolute-form-other-host',
    title: 'absolute-form request-target naming another host (c2) under Host c1',
    kind: 'smuggle',
    responses: 1,
    payload: (paths) => `GET http://${C2_HOST}${paths.smuggled} HTTP/1.1\r\nHost: ${C1_HOST}\r\nAuthorization: Bearer ${token}\r\n\r\n`,
  },
  {
    id: 'pipelined-unauthenticated',
    title: 'pipelined second request without a token (forged tether-subject)',
    kind: 'pipelined',
    code: 'UNAUTHENTICATED',
    responses: 2,
    payload: (paths) =>
      `GET ${paths.first} HTTP/1.1\r\nHost: ${C1_HOST}\r\nAuthorization: Bearer ${token}\r\n\r\n` +
      `GET ${paths.second} HTTP/1.1\r\nHost: ${C1_HOST}\r\ntether-subject: admin\r\ntether-identity: ${FORGED_IDENTITY}\r\n\r\n`,
  },
  {
    id: 'pipelined-host-c2',
    title: 'pipelined second request switching Host to c2 (c1 token)',
    kind: 'pipelined',
    code: 'FORBIDDEN',
    responses: 2,
    payload: (paths) =>
      `GET ${paths.first} HTTP/1.1\r\nHost: ${C1_HOST}\r\nAuthorization: Bearer ${token}\r\n\r\n` +
      `GET ${paths.second} HTTP/1.1\r\nHost: ${C2_HOST}\r\nAuthorization: Bearer ${token}\r\ntether-subject: admin\r\n\r\n`,
  },
  {
    id: 'pipelined-cluster-header-c2',
    title: 'pipelined second request switching tether-cluster to c2 (c1 token)',
    kind: 'pipelined',
    code: 'FORBIDDEN',
    responses: 2,
    payload: (paths) =>
      `GET ${paths.first} HTTP/1.1\r\nHost: ${C1_HOST}\r\nAuthorization: Bearer ${token}\r\ntether-cluster: c1\r\n\r\n` +
      `GET ${paths.second} HTTP/1.1\r\nHost: ${C1_HOST}\r\nAuthorization: Bearer ${token}\r\ntether-cluster: c2\r\ntether-subject: admin\r\n\r\n`,
  },
];

// ---- assertions -----------------------------------------------------------------------------------

function values(request: SeenRequest, name: string): string[] {
  return request.fields.filter(([n]) => n === name).map(([, v]) => v);
}

function identityOf(value: string): unknown {
  try {
    return JSON.parse(Buffer.from(value, 'base64url').toString('utf8'));
  } catch {
    return value;
  }
}

/** What every upstream must have seen, whatever the case: only the gateway's identity, nothing smuggled, nothing ambiguous. */
function assertUpstreamsClean(t: ExecutionContext, label: string): void {
  for (const upstream of [c1, c2]) {
    t.deepEqual(upstream.refused, [], `${label}: ${upstream.name}'s upstream had to refuse bytes the gateway forwarded`);
    for (const request of upstream.requests) {
      const where = `${label}: ${upstream.name}'s upstream saw ${request.method} ${request.target}`;
      t.false(request.target.includes('/smuggled-'), `${where}: a request for a /smuggled-* path reached it (the marker sits where a strict HTTP/1.1 reader sees no request)\n${request.head}`);
      t.deepEqual(values(request, 'tether-subject'), [SUBJECT], `${where}: tether-subject is not the gateway's alone\n${request.head}`);
      t.deepEqual(values(request, 'tether-identity').map(identityOf), [{ sub: SUBJECT, iss: ISSUER }], `${where}: tether-identity is not the gateway's alone\n${request.head}`);
      t.deepEqual(values(request, 'tether-cluster'), [upstream.name], `${where}: tether-cluster`);
    }
    const raw = Buffer.concat(upstream.received).toString('latin1');
    if (raw.includes('/smuggled-')) t.log(`${label}: ${upstream.name}'s upstream received the smuggled bytes as body data (not as a request)`);
  }
  t.deepEqual(c2.requests.map((r) => r.target), [], `${label}: c2's upstream must see nothing (no case holds a token for c2)`);
}

function paths(transport: Transport, id: string): Paths {
  return {
    first: `/first-${transport}-${id}`,
    smuggled: `/smuggled-${transport}-${id}`,
    second: `/second-${transport}-${id}`,
    healthy: `/healthy-${transport}-${id}`,
  };
}

async function runCase(t: ExecutionContext, transport: Transport, testCase: Case): Promise<void> {
  c1.reset();
  c2.reset();
  const p = paths(transport, testCase.id);
  const outcome = await exchange(transport, testCase.payload(p), testCase.responses);
  const settled = await tunnelsSettled();
  const seen = c1.requests.map((r) => `${r.method} ${r.target}${r.complete ? '' : ' (body incomplete)'}`);
  // (3) runs before anything is asserted (a failed assertion ends the test), so every case shows it.
  const healthy = await exchange(transport, `GET ${p.healthy} HTTP/1.1\r\nHost: ${C1_HOST}\r\nAuthorization: Bearer ${token}\r\n\r\n`, 1);
  const settledAfter = await tunnelsSettled();
  t.log(`${TEST_BINDING} mode, client got ${describe(outcome)}; c1's upstream saw [${seen.join(', ')}]`);
  t.log(`a normal request afterwards got ${describe(healthy)}`);
  t.true(settled, `tunnel streams still open ${SETTLE_TIMEOUT_MS} ms after the connection closed`);
  t.not(outcome.ended, 'timeout', `no answer and no close within ${ANSWER_TIMEOUT_MS} ms: ${describe(outcome)}`);

  // (1) what reached the upstreams (the case's connection, then the normal request).
  assertUpstreamsClean(t, testCase.id);

  // (2) what the client got.
  const refused = outcome.responses.find((r) => r.status >= 400 && r.status < 500 && tetherError(r) !== undefined);
  const rejectedOrClosed = outcome.ended === 'closed' || refused !== undefined;
  if (testCase.kind !== 'pipelined' && !outcome.responses.some((r) => r.status >= 200 && r.status < 300)) {
    // The client was refused (or cut off): the upstream must not hold its request as a complete
    // one, which it would act on (with whatever body the gateway had passed on by then).
    const delivered = c1.requests.filter((r) => r.target === p.first && r.complete);
    t.deepEqual(
      delivered.map((r) => `${r.method} ${r.target} with a ${r.body.length}-byte body`),
      [],
      `the client got ${describe(outcome)}, yet the upstream received its request complete and answered it\n${delivered[0]?.head ?? ''}`,
    );
  }
  switch (testCase.kind) {
    case 'smuggle':
      t.true(rejectedOrClosed, `expected a 4xx with tether-error or a close: ${describe(outcome)}`);
      break;
    case 'lenient-line':
      if (TEST_BINDING === 'connection') t.true(refused !== undefined && tetherError(refused) === 'BAD_REQUEST', `binding's head scan refuses it: ${describe(outcome)}`);
      else {
        t.log('accepted per request: read as one request and re-serialized');
        t.deepEqual(outcome.responses.map((r) => r.status), [200], describe(outcome));
        t.deepEqual(c1.requests.map((r) => r.target).filter((target) => target !== p.healthy), [p.first]);
      }
      break;
    case 'duplicate-equal': {
      // Either refused, or read as one request whose body is the would-be smuggled request.
      if (!rejectedOrClosed) {
        t.log('accepted: equal duplicate Content-Length read as one request (RFC 9110 §8.6 allows it)');
        t.deepEqual(outcome.responses.map((r) => r.status), [200], describe(outcome));
        t.deepEqual(c1.requests.map((r) => r.target).filter((target) => target !== p.healthy), [p.first]);
        t.is(c1.requests[0]?.body.toString('latin1'), smuggledRequest(p.smuggled), 'the body arrived as it was sent');
      }
      break;
    }
    case 'pipelined': {
      const [first, second] = outcome.responses;
      t.is(first?.status, 200, `the first, authorized request is served: ${describe(outcome)}`);
      t.is(first?.body, 'c1 ok\n');
      const relayed = second?.status === 200 && c1.requests.some((r) => r.target === p.second);
      if (TEST_BINDING === 'connection' && relayed) {
        // A bound connection carried it to the upstream it was bound to, as its own request with
        // the gateway's identity fields (assertUpstreamsClean checked them).
        t.log('the second request reached c1 on the bound connection');
        t.is(second?.body, 'c1 ok\n');
      } else {
        t.is(second?.status, testCase.code === 'UNAUTHENTICATED' ? 401 : 403, `second answer: ${describe(outcome)}`);
        t.is(second === undefined ? undefined : tetherError(second), testCase.code);
        t.false(
          c1.requests.some((r) => r.target === p.second),
          'the refused second request never reached the upstream',
        );
      }
      t.true(
        c1.requests.some((r) => r.target === p.first),
        'the first request reached c1',
      );
      break;
    }
  }

  // (3) the gateway still serves.
  t.is(healthy.responses[0]?.status, 200, `a normal request afterwards: ${describe(healthy)}`);
  t.is(healthy.responses[0]?.body, 'c1 ok\n');
  t.true(
    c1.requests.some((r) => r.target === p.healthy && r.complete),
    'the normal request reached c1',
  );
  t.true(settledAfter, 'tunnel streams settle after the normal request');
}

test.serial('setup: each cluster reaches its own recording upstream with the gateway identity only', async (t) => {
  const c2Token = await env.token(['c2']);
  for (const transport of ['plain', 'tls'] as const) {
    c1.reset();
    c2.reset();
    const forged = `tether-subject: admin\r\ntether-identity: ${FORGED_IDENTITY}\r\n`;
    const one = await exchange(transport, `GET /setup-${transport} HTTP/1.1\r\nHost: ${C1_HOST}\r\nAuthorization: Bearer ${token}\r\n${forged}\r\n`, 1);
    const two = await exchange(transport, `POST /setup-${transport} HTTP/1.1\r\nHost: ${C2_HOST}\r\nAuthorization: Bearer ${c2Token}\r\n${forged}Content-Length: 5\r\n\r\nhello`, 1);
    t.is(one.responses[0]?.body, 'c1 ok\n', describe(one));
    t.is(two.responses[0]?.body, 'c2 ok\n', describe(two));
    t.true(await tunnelsSettled());
    t.deepEqual(c1.requests.map((r) => r.target), [`/setup-${transport}`]);
    t.deepEqual(c2.requests.map((r) => r.target), [`/setup-${transport}`]);
    t.is(c2.requests[0]?.body.toString(), 'hello');
    for (const [upstream, request] of [[c1, c1.requests[0]], [c2, c2.requests[0]]] as const) {
      t.deepEqual(request === undefined ? [] : values(request, 'tether-subject'), [SUBJECT]);
      t.deepEqual(request === undefined ? [] : values(request, 'tether-identity').map(identityOf), [{ sub: SUBJECT, iss: ISSUER }]);
      t.deepEqual(request === undefined ? [] : values(request, 'tether-cluster'), [upstream.name]);
    }
    t.deepEqual([...c1.refused, ...c2.refused], []);
  }
});

for (const transport of ['plain', 'tls'] as const) {
  for (const testCase of CASES) {
    test.serial(`${transport}: ${testCase.title}`, (t) => runCase(t, transport, testCase));
  }
}
