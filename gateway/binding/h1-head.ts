/**
 * Strict HTTP/1.1 message heads (RFC 9112) for connection binding: the gateway reads every head on
 * a bound connection itself, so it must never read one differently from the upstream. Anything a
 * lenient parser might read two ways is refused: bare LF or CR, obs-fold, whitespace before the
 * colon, control characters in values, a Transfer-Encoding other than exactly `chunked`, both
 * Content-Length and Transfer-Encoding, more than one Content-Length (even equal ones), request
 * targets with spaces or control characters.
 */

/** Why a head was refused: the tunnel code it is answered with, and a message. */
export interface HeadError {
  code: 'BAD_REQUEST' | 'HEADERS_TOO_LARGE' | 'BODY_TOO_LARGE';
  message: string;
}

/** How a message's body is delimited. */
export type BodyFraming = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'close' };

export interface RequestHead {
  method: string;
  /** The request-target as sent. */
  target: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number;
  /** Header fields in order: names lowercased, values with surrounding whitespace removed. */
  names: string[];
  values: string[];
  framing: BodyFraming;
}

export interface ResponseHead {
  status: number;
  names: string[];
  values: string[];
  /** Transfer-Encoding / Content-Length as sent; resolved against the request by `responseFraming`. */
  chunked: boolean;
  length: number | null;
  /** The header names `connection: close`. */
  close: boolean;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const TARGET = /^[\x21-\x7e\x80-\xff]+$/;
const STATUS_LINE = /^HTTP\/1\.([01]) (\d{3})(?: [\t\x20-\x7e\x80-\xff]*)?$/;
const MAX_LENGTH_DIGITS = 15;

/**
 * Where the head that starts at `from` ends (the index just past its CRLFCRLF), -1 when it is not
 * complete yet. A bare LF anywhere in it is reported by `parse*Head`, not here: this only finds the
 * end.
 */
export function headEnd(buffer: Buffer, from = 0): number {
  const at = buffer.indexOf('\r\n\r\n', from, 'latin1');
  return at === -1 ? -1 : at + 4;
}

/** Split a complete head (without its final CRLFCRLF) into lines; null when a line break is not CRLF. */
function lines(text: string): string[] | null {
  return STRAY_BREAK.test(text) ? null : text.split('\r\n');
}

/** One field line: its name and its value without surrounding whitespace, allowed characters only. */
const FIELD = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)[ \t]*$/;
/** A CR not followed by LF, or an LF not preceded by CR. */
const STRAY_BREAK = /\r(?!\n)|(?<!\r)\n/;

function fields(parts: string[], names: string[], values: string[]): HeadError | null {
  for (let i = 1; i < parts.length; i++) {
    const line = parts[i] as string;
    const match = FIELD.exec(line);
    if (match === null) return fieldError(line);
    names.push((match[1] as string).toLowerCase());
    values.push(match[2] as string);
  }
  return null;
}

/** Why `line` is not a field line (the slow path: only for refusals). */
function fieldError(line: string): HeadError {
  const first = line.charCodeAt(0);
  if (first === 0x20 || first === 0x09) return { code: 'BAD_REQUEST', message: 'obsolete line folding is not accepted' };
  const colon = line.indexOf(':');
  if (colon <= 0) return { code: 'BAD_REQUEST', message: 'a header line has no field name' };
  const name = line.slice(0, colon);
  if (!TOKEN.test(name)) return { code: 'BAD_REQUEST', message: `invalid header field name ${JSON.stringify(name)}` };
  return { code: 'BAD_REQUEST', message: `header ${name} has a control character in its value` };
}

/** Content-Length and Transfer-Encoding of one head, or the reason they are ambiguous. */
function lengthFields(names: string[], values: string[]): { chunked: boolean; length: number | null; te: boolean } | HeadError {
  let length: number | null = null;
  let lengths = 0;
  let te = 0;
  let chunked = false;
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    if (name === 'content-length') {
      lengths++;
      const value = values[i] as string;
      if (value.length === 0 || value.length > MAX_LENGTH_DIGITS || !/^\d+$/.test(value)) return { code: 'BAD_REQUEST', message: `invalid content-length ${JSON.stringify(value)}` };
      length = Number(value);
    } else if (name === 'transfer-encoding') {
      te++;
      chunked = (values[i] as string).toLowerCase() === 'chunked';
    }
  }
  if (lengths > 1) return { code: 'BAD_REQUEST', message: 'more than one content-length' };
  if (te > 1) return { code: 'BAD_REQUEST', message: 'more than one transfer-encoding field' };
  return { chunked, length, te: te > 0 };
}

/** A head's lines, its fields and their framing, or why they are refused (request and response alike). */
function splitHead(buffer: Buffer, start: number, end: number): { parts: string[]; names: string[]; values: string[]; lengths: { chunked: boolean; length: number | null; te: boolean } } | HeadError {
  const parts = lines(buffer.toString('latin1', start, end - 4));
  if (parts === null) return { code: 'BAD_REQUEST', message: 'line breaks must be CRLF' };
  const names: string[] = [];
  const values: string[] = [];
  const error = fields(parts, names, values);
  if (error !== null) return error;
  const lengths = lengthFields(names, values);
  if ('code' in lengths) return lengths;
  return { parts, names, values, lengths };
}

/** Parse a request head: `buffer[start, end)` where `end` is just past its CRLFCRLF. */
export function parseRequestHead(buffer: Buffer, start: number, end: number): RequestHead | HeadError {
  const split = splitHead(buffer, start, end);
  if (!('parts' in split)) return split;
  const { parts, names, values, lengths } = split;
  const requestLine = parts[0] as string;
  const firstSpace = requestLine.indexOf(' ');
  const lastSpace = requestLine.lastIndexOf(' ');
  if (firstSpace <= 0 || lastSpace === firstSpace) return { code: 'BAD_REQUEST', message: 'malformed request line' };
  const method = requestLine.slice(0, firstSpace);
  const target = requestLine.slice(firstSpace + 1, lastSpace);
  const version = requestLine.slice(lastSpace + 1);
  if (!TOKEN.test(method) || !TARGET.test(target)) return { code: 'BAD_REQUEST', message: 'malformed request line' };
  if (version !== 'HTTP/1.1' && version !== 'HTTP/1.0') return { code: 'BAD_REQUEST', message: `unsupported version ${JSON.stringify(version)}` };
  if (lengths.te && lengths.length !== null) return { code: 'BAD_REQUEST', message: 'both content-length and transfer-encoding' };
  if (lengths.te && !lengths.chunked) return { code: 'BAD_REQUEST', message: 'transfer-encoding other than chunked' };
  // Exactly one Host in HTTP/1.1, at most one in HTTP/1.0 (RFC 9112 §3.2): the upstream must not
  // pick its own among several, nor answer a missing one itself.
  let hosts = 0;
  for (const name of names) if (name === 'host') hosts++;
  if (hosts > 1 || (hosts === 0 && version === 'HTTP/1.1')) return { code: 'BAD_REQUEST', message: hosts > 1 ? 'more than one Host field' : 'an HTTP/1.1 request without a Host field' };
  const framing: BodyFraming = lengths.chunked ? { kind: 'chunked' } : lengths.length !== null && lengths.length > 0 ? { kind: 'length', length: lengths.length } : { kind: 'none' };
  return { method, target, minor: version === 'HTTP/1.1' ? 1 : 0, names, values, framing };
}

/** Parse a response head (from the upstream, through the agent). */
export function parseResponseHead(buffer: Buffer, start: number, end: number): ResponseHead | HeadError {
  const split = splitHead(buffer, start, end);
  if (!('parts' in split)) return split;
  const { parts, names, values, lengths } = split;
  const match = STATUS_LINE.exec(parts[0] as string);
  if (match === null) return { code: 'BAD_REQUEST', message: 'malformed status line' };
  let close = match[1] === '0';
  for (let i = 0; i < names.length; i++) if (names[i] === 'connection' && /(^|,)\s*close\s*(,|$)/i.test(values[i] as string)) close = true;
  return { status: Number(match[2]), names, values, chunked: lengths.chunked, length: lengths.te ? null : lengths.length, close };
}

/** How the body of `head`, the answer to a `method` request, is delimited (RFC 9112 §6.3). */
export function responseFraming(head: ResponseHead, method: string): BodyFraming {
  if (method === 'HEAD' || head.status === 204 || head.status === 304 || head.status < 200) return { kind: 'none' };
  if (head.chunked) return { kind: 'chunked' };
  if (head.length !== null) return head.length === 0 ? { kind: 'none' } : { kind: 'length', length: head.length };
  return { kind: 'close' };
}

export function isHeadError(value: object): value is HeadError {
  return 'code' in value;
}

/** The value of the first `name` field, or undefined. */
export function field(head: { names: string[]; values: string[] }, name: string): string | undefined {
  const at = head.names.indexOf(name);
  return at === -1 ? undefined : head.values[at];
}
