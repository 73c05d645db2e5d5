/**
 * The blob server: the "object store" endpoint clients reach directly with a signed URL (DESIGN.md
 * §2.7), serving the filesystem store. `PUT /o/<key>?<signature>` uploads, `GET`/`HEAD` download.
 * Bodies stream in both directions (never buffered whole). Checks, in order: key grammar
 * (DATAPROXY_BAD_KEY), signature (403), expiry (403), method (405); for a PUT then the
 * `Content-MD5` header equals the signed MD5 (400), the declared length is within limits (413),
 * an existing object with other content (409) — then the bytes are streamed to a temporary file
 * while hashed and stored only if their MD5 is the signed one.
 *
 * Refusing a PUT whose body is still arriving: closing at once would make the client's kernel
 * drop the refusal when our RST arrives, so the server reads and discards up to 8 MiB more of the
 * body first (then cuts the connection). Clients that send `Expect: 100-continue` get every check
 * that needs no body before they send it, and a refusal without sending the body at all.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { Registry } from 'prom-client';
import type { Closable } from '../../common/lifecycle.js';
import type { Logger } from '../../common/log.js';
import { silentLogger } from '../../common/log.js';
import { DataproxyErrorCode, dataproxyError } from './errors.js';
import type { BlobStore } from './blob-store.js';
import { DEFAULT_MAX_UPLOAD_BYTES, OBJECT_PATH_PREFIX } from './dataproxy.js';
import { OwnedHttpServer } from './http-server.js';
import { keyFromRawPath } from './keys.js';
import { dataproxyMetrics } from './metrics.js';
import type { DataproxyMetrics } from './metrics.js';
import { sendError, sendJson } from './respond.js';
import { verifyQuery } from './signing.js';

export interface BlobServerOptions {
  store: BlobStore;
  bucket: string;
  /** The same keyring as the dataproxy's. */
  signingKeys: readonly Buffer[];
  maxUploadBytes?: number;
  /** Serve HTTPS with this key and certificate (PEM); default plain HTTP (loopback/dev). */
  tls?: { key: string; cert: string };
  /** Longest a single upload or download may take; default 1 h (the longest URL lifetime). */
  requestTimeoutMs?: number;
  now?: () => number;
  registry?: Registry;
  logger?: Logger;
}

/** Bytes of a refused upload read and discarded before the connection is cut. */
const LINGER_BYTES = 8 * 1024 * 1024;

/** Read and discard what is left of a refused request body (bounded), so the refusal arrives. */
function lingerDrain(req: IncomingMessage): void {
  if (req.readableEnded || req.destroyed) return;
  let seen = 0;
  req.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (seen > LINGER_BYTES) req.socket.destroy();
  });
  req.resume();
}

export class BlobServer implements Closable {
  readonly http: OwnedHttpServer;
  readonly #options: BlobServerOptions;
  readonly #now: () => number;
  readonly #maxUploadBytes: number;
  readonly #metrics: DataproxyMetrics | null;
  readonly #logger: Logger;

  constructor(options: BlobServerOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#maxUploadBytes = options.maxUploadBytes ?? DEFAULT_MAX_UPLOAD_BYTES;
    this.#metrics = options.registry === undefined ? null : dataproxyMetrics(options.registry);
    this.#logger = options.logger ?? silentLogger();
    this.http = new OwnedHttpServer(this.handler, (req, res) => this.#serve(req, res, true), {
      requestTimeoutMs: options.requestTimeoutMs ?? 3_600_000,
      ...(options.tls === undefined ? {} : { tls: options.tls }),
    });
  }

  listen(port = 0, host = '127.0.0.1'): ReturnType<OwnedHttpServer['listen']> {
    return this.http.listen(port, host);
  }

  get url(): string {
    return this.http.url;
  }

  drain(graceMs?: number): Promise<void> {
    return this.http.drain(graceMs);
  }

  close(): Promise<void> {
    return this.http.close();
  }

  /** The request handler, for mounting on another server. */
  readonly handler = (req: IncomingMessage, res: ServerResponse): void => {
    this.#serve(req, res, false);
  };

  #serve(req: IncomingMessage, res: ServerResponse, expectContinue: boolean): void {
    const method = req.method ?? 'GET';
    this.#handle(req, res, method, expectContinue).then(
      (code) => this.#metrics?.blobRequests.inc({ method, code }),
      (reason: unknown) => {
        // A client waiting for 100 Continue has sent no body: close without reading.
        const continued = expectContinue && this.#continued.has(req);
        if (!expectContinue || continued) lingerDrain(req);
        const code = sendError(res, reason, { close: expectContinue && !continued });
        this.#metrics?.blobRequests.inc({ method, code });
        if (code === DataproxyErrorCode.STORE_FAILED) this.#logger.error({ err: reason }, 'blob store failure');
      },
    );
  }

  readonly #continued = new WeakSet<IncomingMessage>();

  async #handle(req: IncomingMessage, res: ServerResponse, method: string, expectContinue: boolean): Promise<string> {
    const raw = req.url ?? '/';
    const mark = raw.indexOf('?');
    const rawPath = mark === -1 ? raw : raw.slice(0, mark);
    const rawQuery = mark === -1 ? '' : raw.slice(mark + 1);
    if (method !== 'GET' && method !== 'HEAD' && method !== 'PUT') throw dataproxyError(DataproxyErrorCode.METHOD_NOT_ALLOWED, `${method} is not served`);
    const key = keyFromRawPath(rawPath, OBJECT_PATH_PREFIX);
    const signed = verifyQuery(this.#options.signingKeys, this.#options.bucket, key, rawQuery, method, this.#now());
    if (method === 'PUT') return this.#put(req, res, key, signed.md5, signed.length, expectContinue);
    if (expectContinue) res.writeContinue();
    return this.#get(req, res, key, method === 'HEAD');
  }

  async #put(req: IncomingMessage, res: ServerResponse, key: string, md5: string | undefined, length: number | undefined, expectContinue: boolean): Promise<string> {
    if (md5 === undefined) throw dataproxyError(DataproxyErrorCode.SIGNATURE_INVALID, 'an upload URL must be signed with a content MD5');
    if (req.headers['content-md5'] !== md5) throw dataproxyError(DataproxyErrorCode.MD5_MISMATCH, 'the Content-MD5 header must equal the signed content MD5');
    const limit = length === undefined ? this.#maxUploadBytes : Math.min(length, this.#maxUploadBytes);
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) throw dataproxyError(DataproxyErrorCode.TOO_LARGE, `the upload exceeds ${limit} bytes`);
    const existing = await this.#options.store.stat(key);
    if (existing !== null && existing.md5 !== md5) throw dataproxyError(DataproxyErrorCode.OBJECT_EXISTS, 'an object with other content exists under this key');
    if (expectContinue) {
      this.#continued.add(req);
      res.writeContinue();
    }
    const result = await this.#options.store.write(key, req, { md5, maxBytes: this.#maxUploadBytes, ...(length === undefined ? {} : { length }) });
    if (result.created) this.#metrics?.blobBytes.inc({ direction: 'in' }, result.size);
    sendJson(res, result.created ? 201 : 200, { created: result.created, size: result.size, contentMd5: result.md5 }, { etag: `"${Buffer.from(result.md5, 'base64').toString('hex')}"` });
    return 'OK';
  }

  async #get(req: IncomingMessage, res: ServerResponse, key: string, head: boolean): Promise<string> {
    const { info, stream } = head ? { info: await this.#statOrThrow(key), stream: null } : await this.#options.store.openRead(key);
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': info.size,
      'content-md5': info.md5,
      etag: `"${Buffer.from(info.md5, 'base64').toString('hex')}"`,
      'cache-control': 'private, no-store',
    });
    if (stream === null) {
      res.end();
      return 'OK';
    }
    req.resume();
    try {
      await pipeline(stream, res);
      this.#metrics?.blobBytes.inc({ direction: 'out' }, info.size);
    } catch {
      // The client went away mid-download; the response is already committed.
      res.destroy();
      return 'CLIENT_ABORTED';
    }
    return 'OK';
  }

  async #statOrThrow(key: string): Promise<{ size: number; md5: string }> {
    const info = await this.#options.store.stat(key);
    if (info === null) throw dataproxyError(DataproxyErrorCode.NOT_FOUND, 'no such object');
    return info;
  }
}
