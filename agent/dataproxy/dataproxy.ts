/**
 * The dataproxy: issues signed, time-limited, single-object, method-bound URLs for the data
 * plane's blob store (research/architecture.md D3/D4). Bytes never pass through it; its signing
 * keys never leave the data plane (they are held here and by the blob server in the same agent).
 *
 * Upload (D3): project and domain required, content MD5 (base64) required; `expiresInSec` in
 * [1, max], unset = max (default max 1 h). Key = `<storagePrefix>/[org/]project/domain/
 * <filenameRoot or base32(md5)>/<filename or 20 random chars>`. An existing object with the same
 * MD5 yields a URL anyway (the PUT is an idempotent success); with another MD5 the request is
 * refused (DATAPROXY_OBJECT_EXISTS). The URL is a PUT that must carry `Content-MD5`.
 * Download (D4): `expiresInSec` in [1, max]; the object is looked up first (DATAPROXY_NOT_FOUND),
 * then a GET is signed.
 */
import { randomBytes } from 'node:crypto';
import type { Registry } from 'prom-client';
import { getErrorCode } from '../../common/errors.js';
import { DataproxyErrorCode, dataproxyError } from './errors.js';
import type { BlobStore } from './blob-store.js';
import { blobUri, encodeKeyPath, parseBlobUri, parseKey } from './keys.js';
import { dataproxyMetrics } from './metrics.js';
import type { DataproxyMetrics } from './metrics.js';
import { signQuery } from './signing.js';
import type { SignedMethod } from './signing.js';

export const DEFAULT_MAX_EXPIRES_IN_SEC = 3600;
export const DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024;
/** Path prefix of objects on the blob server: `<publicUrl>/o/<key>`. */
export const OBJECT_PATH_PREFIX = '/o/';

export interface DataproxyOptions {
  store: BlobStore;
  /** The bucket name in this data plane's `tether-blob://<bucket>/<key>` URIs. */
  bucket: string;
  /** Base URL of the blob server as clients reach it, e.g. `https://blobs.corp.internal:8443`. */
  publicUrl: string | (() => string);
  /** HMAC keys (≥ 32 bytes); the first signs, all verify (rotation). Never leaves the data plane. */
  signingKeys: readonly Buffer[];
  maxExpiresInSec?: number;
  maxUploadBytes?: number;
  storagePrefix?: string;
  /** When set, API requests whose `tether-cluster` differs are refused. */
  clusterId?: string;
  now?: () => number;
  registry?: Registry;
}

export interface UploadLocationRequest {
  org?: string;
  project: string;
  domain: string;
  /** Object name; default 20 random characters. */
  filename?: string;
  /** Folder under project/domain; default base32 of the MD5 (so identical content shares a folder). */
  filenameRoot?: string;
  /** Base64 MD5 of the content (RFC 1864 Content-MD5). */
  contentMd5: string;
  contentLength?: number;
  expiresInSec?: number;
}

export interface UriUploadRequest {
  /** `tether-blob://<bucket>/<key>` to upload to. */
  uri: string;
  contentMd5: string;
  contentLength?: number;
  expiresInSec?: number;
}

export interface UploadLocation {
  signedUrl: string;
  nativeUrl: string;
  /** ISO 8601. */
  expiresAt: string;
  /** Headers the client must send with the PUT. */
  headers: Record<string, string>;
}

export interface DownloadLinkRequest {
  uri: string;
  expiresInSec?: number;
}

export interface DownloadLink {
  signedUrl: string;
  expiresAt: string;
  contentLength: number;
  contentMd5: string;
}

/** What the executor needs: links for its inputs and upload locations for its outputs. */
export interface SignedUrlIssuer {
  createDownloadLink(request: DownloadLinkRequest): Promise<DownloadLink>;
  createUploadLocationForUri(request: UriUploadRequest): Promise<UploadLocation>;
  /** The URI of `key` in this data plane's bucket. */
  uriFor(key: string): string;
}

const MD5_BASE64 = /^[A-Za-z0-9+/]{22}==$/;
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

/** RFC 4648 base32, lowercase, unpadded. */
export function base32(bytes: Buffer): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32[(value << (5 - bits)) & 31];
  return out;
}

function invalid(message: string): Error {
  return dataproxyError(DataproxyErrorCode.INVALID_ARGUMENT, message);
}

export function checkMd5(md5: unknown): string {
  if (typeof md5 !== 'string' || !MD5_BASE64.test(md5)) throw invalid('contentMd5 must be the base64 MD5 of the content (24 characters)');
  return md5;
}

export class Dataproxy implements SignedUrlIssuer {
  readonly bucket: string;
  readonly store: BlobStore;
  readonly maxExpiresInSec: number;
  readonly maxUploadBytes: number;
  readonly clusterId: string | undefined;
  readonly metrics: DataproxyMetrics | null;
  readonly #options: DataproxyOptions;
  readonly #now: () => number;

  constructor(options: DataproxyOptions) {
    if (options.signingKeys.length === 0 || options.signingKeys.some((key) => key.length < 32)) throw invalid('signingKeys: at least one key of 32 bytes or more');
    if (!/^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$/.test(options.bucket)) throw invalid('bucket: letters, digits, "." and "-", at most 63');
    this.#options = options;
    this.bucket = options.bucket;
    this.store = options.store;
    this.maxExpiresInSec = options.maxExpiresInSec ?? DEFAULT_MAX_EXPIRES_IN_SEC;
    this.maxUploadBytes = options.maxUploadBytes ?? DEFAULT_MAX_UPLOAD_BYTES;
    this.clusterId = options.clusterId;
    this.#now = options.now ?? Date.now;
    this.metrics = options.registry === undefined ? null : dataproxyMetrics(options.registry);
  }

  uriFor(key: string): string {
    parseKey(key);
    return blobUri(this.bucket, key);
  }

  #expiry(expiresInSec: unknown): number {
    if (expiresInSec === undefined || expiresInSec === null || expiresInSec === 0) return this.maxExpiresInSec;
    if (typeof expiresInSec !== 'number' || !Number.isInteger(expiresInSec) || expiresInSec < 1 || expiresInSec > this.maxExpiresInSec) {
      throw invalid(`expiresInSec must be an integer in [1, ${this.maxExpiresInSec}]`);
    }
    return expiresInSec;
  }

  #length(contentLength: unknown): number | undefined {
    if (contentLength === undefined || contentLength === null) return undefined;
    if (typeof contentLength !== 'number' || !Number.isSafeInteger(contentLength) || contentLength < 0) throw invalid('contentLength must be a non-negative integer');
    if (contentLength > this.maxUploadBytes) throw dataproxyError(DataproxyErrorCode.TOO_LARGE, `contentLength exceeds the upload limit of ${this.maxUploadBytes} bytes`);
    return contentLength;
  }

  #sign(method: SignedMethod, key: string, ttlSec: number, md5?: string, length?: number): { signedUrl: string; expiresAt: string } {
    const expires = Math.floor(this.#now() / 1000) + ttlSec;
    const query = signQuery(this.#options.signingKeys[0] as Buffer, { method, bucket: this.bucket, key, expires, ...(md5 === undefined ? {} : { md5 }), ...(length === undefined ? {} : { length }) });
    const base = typeof this.#options.publicUrl === 'function' ? this.#options.publicUrl() : this.#options.publicUrl;
    return { signedUrl: `${base.replace(/\/+$/, '')}${OBJECT_PATH_PREFIX}${encodeKeyPath(key)}?${query}`, expiresAt: new Date(expires * 1000).toISOString() };
  }

  async #count<T>(operation: string, work: () => Promise<T>): Promise<T> {
    try {
      const result = await work();
      this.metrics?.requests.inc({ operation, code: 'OK' });
      return result;
    } catch (reason) {
      this.metrics?.requests.inc({ operation, code: getErrorCode(reason) ?? 'INTERNAL' });
      throw reason;
    }
  }

  /** D3: a signed PUT for a new object under project/domain. */
  createUploadLocation(request: UploadLocationRequest): Promise<UploadLocation> {
    return this.#count('create_upload_location', async () => {
      for (const field of ['project', 'domain'] as const) {
        if (typeof request[field] !== 'string' || request[field] === '') throw invalid(`${field} is required`);
      }
      const md5 = checkMd5(request.contentMd5);
      const optional = (field: 'org' | 'filename' | 'filenameRoot'): string | undefined => {
        const value = request[field];
        if (value === undefined || value === null || value === '') return undefined;
        if (typeof value !== 'string') throw invalid(`${field} must be a string`);
        return value;
      };
      const org = optional('org');
      const root = optional('filenameRoot') ?? base32(Buffer.from(md5, 'base64'));
      const filename = optional('filename') ?? base32(randomBytes(13)).slice(0, 20);
      const key = [this.#options.storagePrefix ?? 'uploads', ...(org === undefined ? [] : [org]), request.project, request.domain, root, filename].join('/');
      return this.#upload(key, md5, request.contentLength, request.expiresInSec);
    });
  }

  /** A signed PUT for an exact `tether-blob://` URI of this bucket (the executor's outputs). */
  createUploadLocationForUri(request: UriUploadRequest): Promise<UploadLocation> {
    return this.#count('create_upload_location', async () => {
      const key = this.#ownKey(request.uri);
      return this.#upload(key, checkMd5(request.contentMd5), request.contentLength, request.expiresInSec);
    });
  }

  async #upload(key: string, md5: string, contentLength: unknown, expiresInSec: unknown): Promise<UploadLocation> {
    parseKey(key);
    const ttl = this.#expiry(expiresInSec);
    const length = this.#length(contentLength);
    const existing = await this.store.stat(key);
    if (existing !== null && existing.md5 !== md5) throw dataproxyError(DataproxyErrorCode.OBJECT_EXISTS, 'an object with other content exists under this key');
    const { signedUrl, expiresAt } = this.#sign('PUT', key, ttl, md5, length);
    const headers: Record<string, string> = { 'content-md5': md5 };
    if (length !== undefined) headers['content-length'] = String(length);
    return { signedUrl, nativeUrl: blobUri(this.bucket, key), expiresAt, headers };
  }

  /** D4: look the object up, then sign a GET. */
  createDownloadLink(request: DownloadLinkRequest): Promise<DownloadLink> {
    return this.#count('create_download_link', async () => {
      if (typeof request.uri !== 'string') throw invalid('uri is required');
      const key = this.#ownKey(request.uri);
      const ttl = this.#expiry(request.expiresInSec);
      const info = await this.store.stat(key);
      if (info === null) throw dataproxyError(DataproxyErrorCode.NOT_FOUND, 'no such object');
      return { ...this.#sign('GET', key, ttl), contentLength: info.size, contentMd5: info.md5 };
    });
  }

  #ownKey(uri: string): string {
    const { bucket, key } = parseBlobUri(uri);
    if (bucket !== this.bucket) throw dataproxyError(DataproxyErrorCode.BAD_URI, `bucket "${bucket}" is not this data plane's`);
    return key;
  }
}
