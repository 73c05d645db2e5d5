/**
 * The embedded object store: a folder on the data plane's disk.
 *
 *   <root>/objects/<key>   the bytes (written once, never overwritten)
 *   <root>/meta/<key>      JSON { md5, size, createdAt } written after the object
 *   <root>/tmp/            uploads in progress (removed on failure)
 *
 * Writes stream to a temporary file while hashing, then claim the key with `link()`, which fails
 * when the key exists: two concurrent uploads cannot both win, and an object is never replaced.
 * If the key exists the stored MD5 decides: the same content is an idempotent success, other
 * content is DATAPROXY_OBJECT_EXISTS. Keys are validated by `parseKey` and resolved inside the
 * objects folder only (checked again after resolution).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import type { ReadStream } from 'node:fs';
import { link, lstat, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { Transform } from 'node:stream';
import type { Readable, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { getErrorCode, isTetherError } from '../../common/errors.js';
import { DataproxyErrorCode, dataproxyError } from './errors.js';
import { parseKey } from './keys.js';

export interface BlobInfo {
  size: number;
  /** Base64 MD5 of the content. */
  md5: string;
}

export interface WriteOptions {
  /** Base64 MD5 the bytes must have. */
  md5: string;
  /** Refuse (DATAPROXY_TOO_LARGE) past this many bytes. */
  maxBytes: number;
  /** When set, the upload must be exactly this long (DATAPROXY_LENGTH_MISMATCH). */
  length?: number;
}

export interface WriteResult extends BlobInfo {
  /** False when an identical object was already stored (idempotent upload). */
  created: boolean;
}

/** What the dataproxy needs from an object store (the filesystem one is the embedded default). */
export interface BlobStore {
  stat(key: string): Promise<BlobInfo | null>;
  openRead(key: string): Promise<{ info: BlobInfo; stream: ReadStream }>;
  write(key: string, source: Readable, options: WriteOptions): Promise<WriteResult>;
}

/** Counts and hashes bytes as they pass; errors once past `maxBytes`. */
class HashingCounter extends Transform {
  readonly hash = createHash('md5');
  bytes = 0;
  readonly #maxBytes: number;

  constructor(maxBytes: number) {
    super();
    this.#maxBytes = maxBytes;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.#maxBytes) {
      callback(dataproxyError(DataproxyErrorCode.TOO_LARGE, `the upload exceeds ${this.#maxBytes} bytes`));
      return;
    }
    this.hash.update(chunk);
    callback(null, chunk);
  }
}

function ignore(): void {}

function storeFailed(reason: unknown): Error {
  if (isTetherError(reason)) return reason;
  const errno = getErrorCode(reason);
  // A key that collides with an existing prefix (a file where a folder is needed, or the reverse).
  if (errno === 'ENOTDIR' || errno === 'EISDIR') return dataproxyError(DataproxyErrorCode.BAD_KEY, 'object key conflicts with an existing object or prefix');
  return dataproxyError(DataproxyErrorCode.STORE_FAILED, `blob store failure (${errno ?? 'error'})`);
}

export class FsBlobStore implements BlobStore {
  readonly root: string;
  readonly #objects: string;
  readonly #meta: string;
  readonly #tmp: string;

  constructor(root: string) {
    this.root = resolve(root);
    this.#objects = join(this.root, 'objects');
    this.#meta = join(this.root, 'meta');
    this.#tmp = join(this.root, 'tmp');
  }

  async init(): Promise<void> {
    await Promise.all([mkdir(this.#objects, { recursive: true }), mkdir(this.#meta, { recursive: true }), mkdir(this.#tmp, { recursive: true })]);
  }

  #path(base: string, key: string): string {
    const path = join(base, ...parseKey(key));
    if (!path.startsWith(base + sep)) throw dataproxyError(DataproxyErrorCode.BAD_KEY, 'object key leaves the store');
    return path;
  }

  async stat(key: string): Promise<BlobInfo | null> {
    const path = this.#path(this.#objects, key);
    let size: number;
    try {
      const stats = await lstat(path);
      if (!stats.isFile()) return null;
      size = stats.size;
    } catch (reason) {
      const errno = getErrorCode(reason);
      if (errno === 'ENOENT' || errno === 'ENOTDIR') return null;
      throw storeFailed(reason);
    }
    return { size, md5: await this.#md5(key, path) };
  }

  /** The stored MD5; recomputed (and saved) if the metadata is missing (a crash between link and meta). */
  async #md5(key: string, path: string): Promise<string> {
    const metaPath = this.#path(this.#meta, key);
    try {
      const meta = JSON.parse(await readFile(metaPath, 'utf8')) as { md5?: unknown };
      if (typeof meta.md5 === 'string') return meta.md5;
    } catch {
      // fall through: recompute
    }
    const hash = createHash('md5');
    await pipeline(createReadStream(path), hash);
    const md5 = hash.digest('base64');
    await this.#writeMeta(key, md5, (await lstat(path)).size).catch(() => undefined);
    return md5;
  }

  async #writeMeta(key: string, md5: string, size: number): Promise<void> {
    const metaPath = this.#path(this.#meta, key);
    await mkdir(join(metaPath, '..'), { recursive: true });
    const tmp = join(this.#tmp, `meta-${randomBytes(8).toString('hex')}`);
    await writeFile(tmp, JSON.stringify({ md5, size, createdAt: new Date().toISOString() }));
    await rename(tmp, metaPath);
  }

  async openRead(key: string): Promise<{ info: BlobInfo; stream: ReadStream }> {
    const info = await this.stat(key);
    if (info === null) throw dataproxyError(DataproxyErrorCode.NOT_FOUND, 'no such object');
    return { info, stream: createReadStream(this.#path(this.#objects, key)) };
  }

  async write(key: string, source: Readable, options: WriteOptions): Promise<WriteResult> {
    const path = this.#path(this.#objects, key);
    const tmp = join(this.#tmp, `put-${randomBytes(12).toString('hex')}`);
    const counter = new HashingCounter(options.length === undefined ? options.maxBytes : Math.min(options.maxBytes, options.length));
    try {
      // The source is piped, not handed to pipeline(): a refusal must not destroy it (for a request
      // body, that would destroy the socket before the refusal is answered).
      const aborted = (): void => {
        if (!source.readableEnded) counter.destroy(dataproxyError(DataproxyErrorCode.STORE_FAILED, 'the upload was interrupted'));
      };
      source.once('close', aborted);
      source.on('error', aborted);
      source.pipe(counter);
      try {
        await pipeline(counter, createWriteStream(tmp, { flags: 'wx' }));
      } catch (reason) {
        throw isTetherError(reason) ? reason : storeFailed(reason);
      } finally {
        source.unpipe(counter);
        source.off('close', aborted);
        // A late error on the source (the client resetting) must not go unhandled.
        source.off('error', aborted);
        source.on('error', ignore);
      }
      const md5 = counter.hash.digest('base64');
      if (options.length !== undefined && counter.bytes !== options.length) {
        throw dataproxyError(DataproxyErrorCode.LENGTH_MISMATCH, `received ${counter.bytes} bytes; the URL was signed for ${options.length}`);
      }
      if (md5 !== options.md5) throw dataproxyError(DataproxyErrorCode.MD5_MISMATCH, 'the MD5 of the received bytes differs from the signed Content-MD5');
      try {
        await mkdir(join(path, '..'), { recursive: true });
        await link(tmp, path);
      } catch (reason) {
        if (getErrorCode(reason) !== 'EEXIST') throw storeFailed(reason);
        const existing = await this.stat(key);
        if (existing === null) throw dataproxyError(DataproxyErrorCode.BAD_KEY, 'object key conflicts with an existing prefix');
        if (existing.md5 !== md5) throw dataproxyError(DataproxyErrorCode.OBJECT_EXISTS, 'an object with other content exists under this key');
        return { ...existing, created: false };
      }
      await this.#writeMeta(key, md5, counter.bytes);
      return { size: counter.bytes, md5, created: true };
    } finally {
      await rm(tmp, { force: true });
    }
  }
}
