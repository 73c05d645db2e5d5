/**
 * Fuzz target (a): the gateway's HTTP/1.1 front door (Node's parser per request; gateway/binding's
 * strict head scan and framer when binding), on the cleartext and the TLS port. A case takes a
 * valid authenticated request (or a pipeline of them), applies one to four mutations, writes the
 * bytes in one to four pieces, and reads what comes back until the gateway closes, or goes quiet
 * (then the client half-closes and the gateway must close within a deadline).
 *
 * Every response must be a 100, the upstream's 200 (it marks its answers), or an error status
 * with a `tether-error` code that maps to that status. Never a hang. The campaign checks the
 * upstream's side (test/fuzz/campaign.ts): whatever reached it was authenticated as the token's
 * subject, for c1, without the client's credential.
 */
import { TunnelCodes, statusOf } from '../../gateway/tunnel/index.js';
import { FuzzFailure, closed, connectClient, watch, within, type CaseOutcome, type GatewayPorts } from './harness.js';
import type { Random } from './prng.js';

/** The header the fuzz upstream puts on every answer, so an answer from it is told from the gateway's. */
export const UPSTREAM_MARK = 'x-fuzz-upstream';

/** How long the gateway may stay silent before the client half-closes, and how long it then has to close. */
const QUIET_MS = 250;
const AFTER_ANSWER_MS = 60;
const CLOSE_MS = 4_000;

export interface H1Context {
  ports: GatewayPorts;
  /** A valid token for c1 (subject alice). */
  token: string;
}

const CRLF = '\r\n';
const HOST_C1 = 'c1.tether.localhost';

function request(method: string, path: string, fields: Array<[string, string]>, body = ''): string {
  return `${method} ${path} HTTP/1.1${CRLF}${fields.map(([n, v]) => `${n}: ${v}${CRLF}`).join('')}${CRLF}${body}`;
}

/** Valid starting points: what a client could send, before mutation. */
function template(rng: Random, token: string): string {
  const auth: [string, string] = ['authorization', `Bearer ${token}`];
  const host: [string, string] = ['host', HOST_C1];
  const path = `/fuzz/${rng.string(rng.range(1, 12), 'abcdefghij0123456789-._~')}`;
  switch (rng.int(9)) {
    case 0:
      return request('GET', path, [host, auth]);
    case 1: {
      const body = rng.string(rng.range(0, 64), 'abcdefgh');
      return request('POST', path, [host, auth, ['content-type', 'text/plain'], ['content-length', String(body.length)]], body);
    }
    case 2: {
      const chunks = [rng.string(rng.range(1, 20), 'xyz'), rng.string(rng.range(1, 20), 'uvw')];
      const body = `${chunks.map((c) => `${c.length.toString(16)}${CRLF}${c}${CRLF}`).join('')}0${CRLF}${rng.chance(0.3) ? `x-trailer: t${CRLF}` : ''}${CRLF}`;
      return request('POST', path, [host, auth, ['transfer-encoding', 'chunked']], body);
    }
    case 3:
      // Keep-alive pipeline of two.
      return request('GET', path, [host, auth]) + request('GET', `${path}/2`, [host, auth]);
    case 4:
      // The second one is for c2 (c1's token cannot reach it) or has no token.
      return request('GET', path, [host, auth]) + (rng.chance(0.5) ? request('GET', '/other', [['host', 'c2.tether.localhost'], auth]) : request('GET', '/anon', [host]));
    case 5:
      // Forged identity headers the gateway must replace.
      return request('GET', path, [host, auth, ['tether-subject', 'admin'], ['tether-identity', 'eyJzdWIiOiJhZG1pbiJ9'], ['tether-cluster', 'c1']]);
    case 6:
      return request('GET', path, [['host', 'fuzz.invalid'], ['tether-cluster', 'c1'], auth]);
    case 7:
      return `GET ${path} HTTP/1.0${CRLF}host: ${HOST_C1}${CRLF}authorization: Bearer ${token}${CRLF}${CRLF}`;
    default: {
      const body = rng.string(rng.range(1, 32), 'klmn');
      return request('PUT', path, [host, auth, ['content-length', String(body.length)], ['connection', 'close']], body) + request('GET', '/late', [host, auth]);
    }
  }
}

const SPECIAL_BYTES = [0x00, 0x0d, 0x0a, 0x20, 0x09, 0x3a, 0x7f, 0x80, 0xff, 0x3b, 0x2c, 0x22, 0x5c];
const LENGTH_VALUES = ['-1', '+5', '0x10', '99999999999999999999', '1e3', ' 5', '5 ,5', '5, 6', '', '00000000000000000000005', '4294967301', '18446744073709551621', '5\t', '٥'];
const CODINGS = ['chunked, chunked', ' chunked', 'gzip, chunked', 'Chunked', 'xchunked', 'chunked;q=1', 'identity', 'chunked\u000b', ''];
const CHUNK_LINES = ['zz', '-1', 'fffffffffffffffff', '1;a=b', ' 5', '5 ', '0x5', '', '5;' + 'e'.repeat(200), '1\n', '10000000'];
const METHODS = ['GET', 'POST', 'HEAD', 'OPTIONS', 'CONNECT', 'TRACE', 'PRI', 'get', 'G ET', 'X'.repeat(80), '', 'DELETE'];
const TARGETS = ['*', '/', 'http://c1.tether.localhost/abs', 'https://c2.tether.localhost/', '//double', '/%00', '/a b', '/' + 'p'.repeat(20_000), 'c1.tether.localhost:443', '/\u0080\u00ff', 'ftp://x/'];
const VERSIONS = ['HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/1.2', 'HTTP/0.9', 'http/1.1', '', 'HTTP/1.1 ', 'HTTP/11'];
const NAME_CHARS = 'abcdefghijklmnopqrstuvwxyz-_0123456789!#$%&*+.^`|~ ():;"@[]{}\u0080\u0000\t';
const VALUE_CHARS = 'abcdefghijklmnopqrstuvwxyz 0123456789!#$%&*+.^`|~();:,"\t\u0080\u00ff\u0000\u007f';

/** Indexes where `needle` starts in `bytes`. */
function occurrences(bytes: Buffer, needle: string): number[] {
  const found: number[] = [];
  for (let at = bytes.indexOf(needle); at !== -1; at = bytes.indexOf(needle, at + 1)) found.push(at);
  return found;
}

function splice(bytes: Buffer, at: number, remove: number, insert: Buffer | string): Buffer {
  return Buffer.concat([bytes.subarray(0, at), Buffer.isBuffer(insert) ? insert : Buffer.from(insert, 'latin1'), bytes.subarray(at + remove)]);
}

/** Replace the value of the first header named `name` (case-insensitive), or add the field after the request line. */
function setField(bytes: Buffer, name: string, value: string, rng: Random): Buffer {
  const text = bytes.toString('latin1');
  const match = new RegExp(`\\r\\n${name}:[^\\r\\n]*`, 'i').exec(text);
  if (match !== null && rng.chance(0.7)) return splice(bytes, match.index, match[0].length, `${CRLF}${name}: ${value}`);
  const lineEnd = text.indexOf(CRLF);
  return splice(bytes, lineEnd === -1 ? bytes.length : lineEnd, 0, `${CRLF}${name}: ${value}`);
}

type Mutation = (bytes: Buffer, rng: Random) => Buffer;

const MUTATIONS: Array<[string, Mutation]> = [
  ['flip', (b, r) => (b.length === 0 ? b : splice(b, r.int(b.length), 1, Buffer.from([r.chance(0.6) ? r.pick(SPECIAL_BYTES) : r.int(256)])))],
  ['insert', (b, r) => splice(b, r.int(b.length + 1), 0, r.chance(0.5) ? r.pick(['\r', '\n', '\r\n', '\0', ' ', '\t', ':', '\r\n\r\n', '\n\n']) : r.bytes(r.range(1, 8)))],
  ['delete', (b, r) => splice(b, r.int(b.length + 1), r.range(1, 16), '')],
  ['truncate', (b, r) => b.subarray(0, r.int(b.length))],
  ['dup-crlf', (b, r) => {
    const at = occurrences(b, CRLF);
    return at.length === 0 ? b : splice(b, r.pick(at), 0, CRLF);
  }],
  ['drop-crlf', (b, r) => {
    const at = occurrences(b, CRLF);
    return at.length === 0 ? b : splice(b, r.pick(at), 2, '');
  }],
  ['bare-lf', (b, r) => {
    const at = occurrences(b, CRLF);
    return at.length === 0 ? b : splice(b, r.pick(at), 2, r.chance(0.5) ? '\n' : '\r');
  }],
  ['content-length', (b, r) => setField(b, r.pick(['content-length', 'Content-Length', 'content-length ', 'content_length']), r.chance(0.7) ? r.pick(LENGTH_VALUES) : String(r.int(100_000)), r)],
  ['two-lengths', (b, r) => {
    const lineEnd = b.indexOf(CRLF);
    return splice(b, lineEnd === -1 ? b.length : lineEnd, 0, `${CRLF}content-length: ${r.int(20)}${CRLF}content-length: ${r.int(20)}`);
  }],
  ['transfer-encoding', (b, r) => setField(b, r.pick(['transfer-encoding', 'Transfer-Encoding', 'transfer-encoding ', ' transfer-encoding']), r.pick(CODINGS), r)],
  ['chunk-line', (b, r) => {
    const text = b.toString('latin1');
    const bodyAt = text.indexOf(CRLF + CRLF);
    if (bodyAt === -1) return b;
    const lines = occurrences(b, CRLF).filter((at) => at > bodyAt + 2);
    if (lines.length === 0) return splice(b, b.length, 0, `${r.pick(CHUNK_LINES)}${CRLF}`);
    const at = r.pick(lines) + 2;
    const end = b.indexOf(CRLF, at);
    return splice(b, at, end === -1 ? 0 : end - at, r.pick(CHUNK_LINES));
  }],
  ['header-noise', (b, r) => {
    const name = r.chance(0.7) ? r.string(r.range(1, 24), NAME_CHARS.slice(0, 47)) : r.string(r.range(0, 24), NAME_CHARS);
    const value = r.chance(0.1) ? 'v'.repeat(r.range(8_000, 40_000)) : r.string(r.range(0, 64), VALUE_CHARS);
    const lines = occurrences(b, CRLF);
    return lines.length === 0 ? b : splice(b, r.pick(lines), 0, `${CRLF}${name}: ${value}`);
  }],
  ['many-headers', (b, r) => {
    const lineEnd = b.indexOf(CRLF);
    const n = r.range(50, 400);
    let fields = '';
    for (let i = 0; i < n; i++) fields += `${CRLF}x-h${i}: ${r.string(r.range(0, 12), 'abc')}`;
    return splice(b, lineEnd === -1 ? b.length : lineEnd, 0, fields);
  }],
  ['request-line', (b, r) => {
    const end = b.indexOf(CRLF);
    const line = b.toString('latin1', 0, end === -1 ? b.length : end).split(' ');
    const part = r.int(3);
    line[part] = r.pick(part === 0 ? METHODS : part === 1 ? TARGETS : VERSIONS);
    return splice(b, 0, end === -1 ? b.length : end, line.join(r.chance(0.9) ? ' ' : r.pick(['  ', '\t'])));
  }],
  ['obs-fold', (b, r) => {
    const lines = occurrences(b, CRLF);
    return lines.length === 0 ? b : splice(b, r.pick(lines), 0, `${CRLF}${r.pick([' ', '\t'])}folded`);
  }],
  ['pipeline-garbage', (b, r) => splice(b, b.length, 0, r.chance(0.5) ? r.bytes(r.range(1, 200)) : r.pick(['GET / HTTP/1.1\r\n\r\n', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', '0\r\n\r\n', 'HTTP/1.1 200 OK\r\n\r\n', '\r\n\r\n\r\n']))],
  ['expect', (b, r) => setField(b, 'expect', r.pick(['100-continue', '100-Continue', 'nothing', '']), r)],
  ['upgrade', (b, r) => setField(setField(b, 'connection', 'upgrade', r), 'upgrade', r.pick(['websocket', 'h2c', 'tls/1.0', '']), r)],
];

/** One response read off the wire. */
interface Answer {
  status: number;
  fields: Map<string, string>;
}

/**
 * Reads responses from the bytes received so far: heads, then bodies by Content-Length or
 * chunked coding (a 1xx, 204 or 304 has none; after a HEAD nobody knows, so an unreadable rest is
 * left as `rest`).
 */
class ResponseReader {
  answers: Answer[] = [];
  private buffer: Buffer = Buffer.alloc(0);
  /** Bytes that did not parse as a response (reported, then the reader stops). */
  garbage: string | null = null;

  /** The last answer's body runs to the close. */
  private closeDelimited = false;

  push(chunk: Buffer): void {
    if (this.garbage !== null) return;
    this.buffer = Buffer.concat([this.buffer, chunk]);
    if (this.closeDelimited) {
      const text = this.buffer.toString('latin1');
      // Straight after the head: the answer was to a HEAD (no body, whatever its fields say).
      if (text.startsWith('HTTP/1.')) this.closeDelimited = false;
      else {
        const at = text.search(/HTTP\/1\.[01] \d{3}/);
        if (at !== -1) this.garbage = `after a body delimited by the close: ${text.slice(at, at + 200)}`;
        return;
      }
    }
    for (;;) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end === -1) return;
      const head = this.buffer.toString('latin1', 0, end);
      const lines = head.split('\r\n');
      const status = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(lines[0] ?? '');
      if (status === null) {
        this.garbage = head.slice(0, 200);
        return;
      }
      const fields = new Map<string, string>();
      for (const line of lines.slice(1)) {
        const colon = line.indexOf(':');
        if (colon > 0) fields.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
      }
      const code = Number(status[1]);
      let bodyEnd = end + 4;
      const length = fields.get('content-length');
      const chunked = fields.get('transfer-encoding')?.toLowerCase() === 'chunked';
      if (code >= 200 && code !== 204 && code !== 304 && length === undefined && !chunked) {
        // A body delimited by the close: everything after the head, to the end. No body here
        // (the upstream's `fuzz ok`, the gateway's `CODE: …`) holds a status line: one inside it
        // is a second answer written after such a body, which a client reads as more body.
        this.answers.push({ status: code, fields });
        this.closeDelimited = true;
        this.buffer = this.buffer.subarray(bodyEnd);
        this.push(Buffer.alloc(0));
        return;
      }
      // The answer to a HEAD has no body whatever its fields announce; no body here starts like a
      // status line.
      if (this.buffer.toString('latin1', bodyEnd, bodyEnd + 7) === 'HTTP/1.') {
        this.answers.push({ status: code, fields });
        this.buffer = this.buffer.subarray(bodyEnd);
        continue;
      }
      if (code >= 200 && code !== 204 && code !== 304 && chunked) {
        const after = this.chunkedEnd(bodyEnd);
        if (after === null) return;
        bodyEnd = after;
      } else if (code >= 200 && length !== undefined && Number(length) > 0) {
        if (this.buffer.length < bodyEnd + Number(length)) return;
        bodyEnd += Number(length);
      }
      this.answers.push({ status: code, fields });
      this.buffer = this.buffer.subarray(bodyEnd);
    }
  }

  /** Where a chunked body starting at `from` ends, or null when it has not all arrived. */
  private chunkedEnd(from: number): number | null {
    let at = from;
    for (;;) {
      const lineEnd = this.buffer.indexOf('\r\n', at);
      if (lineEnd === -1) return null;
      const size = parseInt(this.buffer.toString('latin1', at, lineEnd), 16);
      if (!Number.isFinite(size)) return null;
      if (size === 0) {
        const trailerEnd = this.buffer.indexOf('\r\n\r\n', lineEnd);
        if (this.buffer.indexOf('\r\n', lineEnd + 2) === lineEnd + 2) return lineEnd + 4;
        return trailerEnd === -1 ? null : trailerEnd + 4;
      }
      at = lineEnd + 2 + size + 2;
      if (at > this.buffer.length) return null;
    }
  }

  get pending(): number {
    return this.buffer.length;
  }
}

/** Checks one answer; returns its `tether-error` code, if any. */
function judge(answer: Answer): string | null {
  const code = answer.fields.get('tether-error');
  if (answer.status === 100) return null;
  const mark = answer.fields.get(UPSTREAM_MARK);
  if (mark !== undefined) {
    if (code !== undefined) throw new FuzzFailure(`the upstream's answer carries tether-error ${code}`);
    return null;
  }
  if (code === undefined) throw new FuzzFailure(`status ${answer.status} from the gateway without a tether-error code`);
  if (!Object.hasOwn(TunnelCodes, code)) throw new FuzzFailure(`unknown tether-error code ${code}`);
  if (statusOf(code) !== answer.status) throw new FuzzFailure(`tether-error ${code} with status ${answer.status} (expected ${statusOf(code)})`);
  return code;
}

export interface H1Case {
  secure: boolean;
  mutations: string[];
  bytes: Buffer;
  pieces: Buffer[];
}

/** The case for `rng`: which port, which mutations, the bytes and how they are split. */
export function h1Case(rng: Random, token: string): H1Case {
  let bytes: Buffer = Buffer.from(template(rng, token), 'latin1');
  const applied: string[] = [];
  const count = rng.range(1, 4);
  for (let i = 0; i < count; i++) {
    const [name, mutate] = rng.pick(MUTATIONS);
    applied.push(name);
    bytes = mutate(bytes, rng);
  }
  const cuts: number[] = [...new Set(Array.from({ length: rng.int(4) }, () => rng.int(bytes.length)))].sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    if (cut > from) pieces.push(bytes.subarray(from, cut));
    from = cut;
  }
  return { secure: rng.chance(0.4), mutations: applied, bytes, pieces };
}

export async function runH1Case(rng: Random, ctx: H1Context): Promise<CaseOutcome & { description: string }> {
  const c = h1Case(rng, ctx.token);
  const description = `${c.secure ? 'tls' : 'plain'} ${c.mutations.join('+')} (${c.bytes.length} bytes in ${c.pieces.length})`;
  const socket = await connectClient(ctx.ports, c.secure, 'http/1.1');
  const reader = new ResponseReader();
  socket.on('data', (chunk: Buffer) => reader.push(chunk));
  const gone = closed(socket);
  try {
    for (const piece of c.pieces) {
      if (socket.destroyed) break;
      socket.write(piece);
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    // Wait for the gateway to close, or to go quiet (shortly after an answer, longer before one).
    let how: 'done' | 'closed' | 'idle' = 'idle';
    while (!socket.destroyed) {
      const seen = reader.answers.length;
      how = await watch(socket, () => reader.answers.length > seen, seen === 0 ? QUIET_MS : AFTER_ANSWER_MS);
      if (how !== 'done') break;
    }
    if (how === 'idle') socket.end();
    await within(CLOSE_MS, `${description}: the gateway did not close after the client's FIN`, gone);
  } finally {
    socket.destroy();
  }
  if (reader.garbage !== null) throw new FuzzFailure(`${description}: not an HTTP/1.1 response: ${JSON.stringify(reader.garbage)}`);
  const codes: string[] = [];
  for (const answer of reader.answers) {
    try {
      const code = judge(answer);
      if (code !== null) codes.push(code);
    } catch (reason) {
      throw new FuzzFailure(`${description}: ${(reason as Error).message}`);
    }
  }
  const statuses = reader.answers.map((a) => {
    const mark = a.fields.get(UPSTREAM_MARK);
    if (mark === undefined) return String(a.status);
    return mark === 'refused' ? `upstream refused ${a.status} ${a.fields.get('x-fuzz-reason') ?? ''}` : 'upstream';
  });
  return { outcome: statuses.length === 0 ? 'closed without an answer' : `answered ${[...new Set(statuses)].sort().join(',')}`, codes, description };
}
