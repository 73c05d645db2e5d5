/**
 * Object keys and `tether-blob://` URIs. A key is a `/`-separated path of 1..32 segments, at most
 * 1024 bytes; each segment is 1..255 characters of `[A-Za-z0-9._=-]`, starting with a letter,
 * digit or `_` (so never `.`, `..` or a hidden name). Anything else is DATAPROXY_BAD_KEY: keys map
 * onto the filesystem store, so the grammar is what makes path traversal impossible.
 */
import { DataproxyErrorCode, dataproxyError } from './errors.js';

export const BLOB_SCHEME = 'tether-blob:';
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9._=-]{0,254}$/;
const MAX_KEY_BYTES = 1024;
const MAX_SEGMENTS = 32;

/** Validate a key; returns its segments. */
export function parseKey(key: string): string[] {
  if (key.length === 0 || Buffer.byteLength(key) > MAX_KEY_BYTES) throw dataproxyError(DataproxyErrorCode.BAD_KEY, `object key must be 1..${MAX_KEY_BYTES} bytes`);
  const segments = key.split('/');
  if (segments.length > MAX_SEGMENTS) throw dataproxyError(DataproxyErrorCode.BAD_KEY, `object key has more than ${MAX_SEGMENTS} segments`);
  for (const segment of segments) {
    if (!SEGMENT.test(segment)) throw dataproxyError(DataproxyErrorCode.BAD_KEY, 'object key segments use only letters, digits, "_", "-", ".", "=" and do not start with "." or "-"');
  }
  return segments;
}

export function isValidKey(key: string): boolean {
  try {
    parseKey(key);
    return true;
  } catch {
    return false;
  }
}

/** A key from the raw (still percent-encoded) path of a request, after `prefix`. */
export function keyFromRawPath(rawPath: string, prefix: string): string {
  if (!rawPath.startsWith(prefix)) throw dataproxyError(DataproxyErrorCode.BAD_KEY, 'not an object path');
  const encoded = rawPath.slice(prefix.length).split('/');
  let segments: string[];
  try {
    segments = encoded.map((part) => decodeURIComponent(part));
  } catch {
    throw dataproxyError(DataproxyErrorCode.BAD_KEY, 'object path is not valid percent-encoding');
  }
  // A decoded "/" inside one segment would change the key's shape: refused by the segment grammar.
  const key = segments.join('/');
  if (segments.some((segment) => segment.includes('/'))) throw dataproxyError(DataproxyErrorCode.BAD_KEY, 'object path segment contains an encoded "/"');
  parseKey(key);
  return key;
}

export function encodeKeyPath(key: string): string {
  return key.split('/').map(encodeURIComponent).join('/');
}

export function blobUri(bucket: string, key: string): string {
  return `tether-blob://${bucket}/${key}`;
}

/** Split a `tether-blob://<bucket>/<key>` URI; the key must be valid. */
export function parseBlobUri(uri: string): { bucket: string; key: string } {
  const match = /^tether-blob:\/\/([A-Za-z0-9][A-Za-z0-9.-]{0,62})\/(.+)$/.exec(uri);
  if (match === null) throw dataproxyError(DataproxyErrorCode.BAD_URI, 'expected a tether-blob://<bucket>/<key> URI');
  const key = match[2] as string;
  parseKey(key);
  return { bucket: match[1] as string, key };
}
