/**
 * The requests of a bound HTTP/2 connection as the gateway checks them: pseudo-header fields and
 * the rest of a decoded header block (RFC 9113 §8.3.1), the fields binding compares, and the
 * header object admission takes.
 */
import type { IncomingHttpHeaders } from 'node:http2';
import type { HeaderField } from './hpack-block.js';

const NAME_OK = /^[a-z0-9!#$%&'*+\-.^_`|~]+$/;
const VALUE_OK = /^[^\0\r\n]*$/;
/** Connection-specific fields an HTTP/2 request must not carry (RFC 9113 §8.2.2). */
const CONNECTION_SPECIFIC = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);

export interface Request {
  method: string;
  scheme: string;
  authority: string | undefined;
  path: string;
  fields: HeaderField[];
}

/** A request's pseudo-header fields and the rest, or null for a malformed one (RFC 9113 §8.3.1). */
export function requestOf(fields: HeaderField[]): Request | null {
  let method: string | undefined;
  let scheme: string | undefined;
  let authority: string | undefined;
  let path: string | undefined;
  const rest: HeaderField[] = [];
  for (const f of fields) {
    if (f.name.charCodeAt(0) === 0x3a) {
      if (rest.length > 0) return null;
      switch (f.name) {
        case ':method':
          if (method !== undefined) return null;
          method = f.value;
          break;
        case ':scheme':
          if (scheme !== undefined) return null;
          scheme = f.value;
          break;
        case ':authority':
          if (authority !== undefined) return null;
          authority = f.value;
          break;
        case ':path':
          if (path !== undefined) return null;
          path = f.value;
          break;
        default:
          return null;
      }
      continue;
    }
    if (!NAME_OK.test(f.name) || !VALUE_OK.test(f.value) || CONNECTION_SPECIFIC.has(f.name)) return null;
    if (f.name === 'te' && f.value.trim().toLowerCase() !== 'trailers') return null;
    rest.push(f);
  }
  if (method === undefined || !VALUE_OK.test(method) || !NAME_OK.test(method.toLowerCase())) return null;
  if (method === 'CONNECT') return { method, scheme: scheme ?? '', authority, path: path ?? '', fields: rest };
  if (scheme === undefined || path === undefined || path.charCodeAt(0) !== 0x2f || !VALUE_OK.test(path) || /[\s]/.test(path)) return null;
  if (authority !== undefined && !VALUE_OK.test(authority)) return null;
  // A Host field stands in for :authority (RFC 9113 §8.3.1); both must then agree.
  const host = rest.find((f) => f.name === 'host')?.value;
  if (authority === undefined) authority = host;
  else if (host !== undefined && host !== authority) return null;
  return { method, scheme, authority, path, fields: rest };
}

export function fieldOf(request: Request, name: string): string | undefined {
  let value: string | undefined;
  for (const f of request.fields) {
    if (f.name !== name) continue;
    // Two of a field that decides the binding: never equal to one.
    if (value !== undefined) return '\0';
    value = f.value;
  }
  return value;
}

export function headersOf(request: Request): IncomingHttpHeaders {
  const headers: IncomingHttpHeaders = { ':method': request.method, ':scheme': request.scheme, ':path': request.path };
  if (request.authority !== undefined) headers[':authority'] = request.authority;
  for (const f of request.fields) {
    const before = headers[f.name];
    if (before === undefined) headers[f.name] = f.value;
    else if (f.name === 'cookie') headers.cookie = `${String(before)}; ${f.value}`;
  }
  return headers;
}

/** Consecutive views of the same buffer become one (one write each). */
export function merge(pieces: Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  for (const piece of pieces) {
    const last = out[out.length - 1];
    if (last !== undefined && last.buffer === piece.buffer && last.byteOffset + last.length === piece.byteOffset) {
      out[out.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + piece.length);
    } else out.push(piece);
  }
  return out;
}
