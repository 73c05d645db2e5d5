/**
 * Moving bytes with signed URLs, streaming (the executor's inputs and outputs; also handy for
 * tests and the CLI). One connection per transfer (no keep-alive pool left behind). Refusals from
 * the blob server come back as TetherErrors with the server's code.
 */
import { createHash } from 'node:crypto';
import { constants, createWriteStream } from 'node:fs';
import type { ReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import type { IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { Transform } from 'node:stream';
import type { Readable, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TetherError } from '../../common/errors.js';

export const BLOB_CLIENT_FAILED = 'BLOB_CLIENT_FAILED';

/** Files to upload are opened without following a final symlink (a task cannot swap one in). */
async function openNoFollow(file: string): Promise<{ size: number; stream: ReadStream }> {
  const handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new TetherError(BLOB_CLIENT_FAILED, 'not a regular file');
    return { size: info.size, stream: handle.createReadStream() };
  } catch (reason) {
    await handle.close();
    throw reason;
  }
}

export interface TransferOptions {
  signal?: AbortSignal;
  /** Roots to trust for an `https:` blob server (PEM); default the system's. */
  ca?: string;
}

function send(url: string, method: string, headers: Record<string, string | number>, body: Readable | null, options: TransferOptions): Promise<IncomingMessage> {
  const target = new URL(url);
  const request = target.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(target, { method, headers, agent: false, ...(options.signal === undefined ? {} : { signal: options.signal }), ...(options.ca === undefined ? {} : { ca: options.ca }) }, resolve);
    req.on('error', reject);
    if (body === null) req.end();
    else body.pipe(req);
  });
}

async function refusal(res: IncomingMessage, what: string): Promise<TetherError> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    if (size < 4096) chunks.push(chunk);
    size += chunk.length;
  }
  let code = BLOB_CLIENT_FAILED;
  let message = `${what}: HTTP ${res.statusCode ?? 0}`;
  try {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { code?: unknown; message?: unknown };
    if (typeof body.code === 'string') code = body.code;
    if (typeof body.message === 'string') message = `${what}: ${body.message}`;
  } catch {
    // not a JSON refusal
  }
  return new TetherError(code, message, { details: { status: res.statusCode } });
}

class Md5Counter extends Transform {
  readonly hash = createHash('md5');
  bytes = 0;
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
    callback(null, chunk);
  }
}

/** GET `url` into `file`; verifies the server's Content-MD5 when it sends one. */
export async function downloadToFile(url: string, file: string, options: TransferOptions = {}): Promise<{ size: number; md5: string }> {
  const res = await send(url, 'GET', {}, null, options);
  if (res.statusCode !== 200) throw await refusal(res, 'download refused');
  const counter = new Md5Counter();
  await pipeline(res, counter, createWriteStream(file), ...(options.signal === undefined ? [] : [{ signal: options.signal }]));
  const md5 = counter.hash.digest('base64');
  const expected = res.headers['content-md5'];
  if (typeof expected === 'string' && expected !== md5) throw new TetherError(BLOB_CLIENT_FAILED, 'downloaded bytes do not match the object MD5');
  return { size: counter.bytes, md5 };
}

/** Base64 MD5 and size of a file, streaming. */
export async function fileMd5(file: string): Promise<{ size: number; md5: string }> {
  const hash = createHash('md5');
  const { size, stream } = await openNoFollow(file);
  await pipeline(stream, hash);
  return { size, md5: hash.digest('base64') };
}

/** PUT `file` to a signed upload URL with the headers the dataproxy returned. */
export async function uploadFile(url: string, headers: Record<string, string>, file: string, options: TransferOptions = {}): Promise<{ created: boolean }> {
  const { size, stream } = await openNoFollow(file);
  let res: IncomingMessage;
  try {
    res = await send(url, 'PUT', { ...headers, 'content-length': size }, stream, options);
  } finally {
    if (!stream.destroyed) stream.destroy();
  }
  if (res.statusCode !== 200 && res.statusCode !== 201) throw await refusal(res, 'upload refused');
  res.resume();
  return { created: res.statusCode === 201 };
}

/** PUT any stream (length known) to a signed upload URL; returns the status and body. */
export async function uploadStream(url: string, headers: Record<string, string | number>, body: Readable, options: TransferOptions = {}): Promise<{ status: number; body: string }> {
  const res = await send(url, 'PUT', headers, body, options);
  const chunks: Buffer[] = [];
  for await (const chunk of res as AsyncIterable<Buffer>) chunks.push(chunk);
  return { status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') };
}
