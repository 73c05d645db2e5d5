/** Clients that talk to a gateway in tests: HTTP/1.1 over TLS, HTTP/2 over TLS, plain h2c/HTTP/1.1. */
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as https from 'node:https';

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  trailers: Record<string, string | string[] | undefined>;
}

export interface RequestSpec {
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  /** Send `host: <cluster>.tether.localhost`. */
  cluster?: string;
  token?: string;
}

function buildHeaders(spec: RequestSpec): Record<string, string> {
  const headers: Record<string, string> = { ...spec.headers };
  if (spec.cluster !== undefined) headers.host = `${spec.cluster}.tether.localhost`;
  if (spec.token !== undefined) headers.authorization = `Bearer ${spec.token}`;
  return headers;
}

/** One HTTP/1.1 request over TLS to `address` (`host:port`). */
export function h1Request(address: string, ca: string, spec: RequestSpec, agent?: https.Agent): Promise<Reply> {
  const [host, port] = splitHostPort(address);
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host, port, servername: 'localhost', ca, method: spec.method ?? 'GET', path: spec.path ?? '/', headers: buildHeaders(spec), agent: agent ?? false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), trailers: res.trailers }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(spec.body);
  });
}

/** One HTTP/1.1 request over cleartext. */
export function plainH1Request(baseUrl: string, spec: RequestSpec): Promise<Reply> {
  const url = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: url.hostname, port: url.port, method: spec.method ?? 'GET', path: spec.path ?? '/', headers: buildHeaders(spec), agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), trailers: res.trailers }));
      },
    );
    req.on('error', reject);
    req.end(spec.body);
  });
}

/** One request on an HTTP/2 session. */
export function h2Request(session: http2.ClientHttp2Session, spec: RequestSpec): Promise<Reply> {
  const headers: http2.OutgoingHttpHeaders = { ':method': spec.method ?? 'GET', ':path': spec.path ?? '/', ...buildHeaders(spec) };
  if (typeof headers.host === 'string') {
    headers[':authority'] = headers.host;
    delete headers.host;
  }
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: spec.body === undefined });
    let status = 0;
    let responseHeaders: http.IncomingHttpHeaders = {};
    let trailers: Record<string, string | string[] | undefined> = {};
    const chunks: Buffer[] = [];
    stream.on('response', (h) => {
      status = Number(h[':status']);
      responseHeaders = h;
    });
    stream.on('trailers', (t) => {
      trailers = t;
    });
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve({ status, headers: responseHeaders, body: Buffer.concat(chunks), trailers }));
    stream.on('error', reject);
    if (spec.body !== undefined) stream.end(spec.body);
  });
}

export function connectH2(url: string, ca?: string): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url, ca === undefined ? {} : { ca, servername: 'localhost' });
    session.once('connect', () => resolve(session));
    session.once('error', reject);
  });
}

export function closeH2(session: http2.ClientHttp2Session): Promise<void> {
  return new Promise((resolve) => {
    if (session.destroyed) return resolve();
    session.close(() => resolve());
  });
}

export function splitHostPort(address: string): [string, number] {
  const i = address.lastIndexOf(':');
  return [address.slice(0, i).replace(/^\[|\]$/g, ''), Number(address.slice(i + 1))];
}
