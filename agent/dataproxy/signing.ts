/**
 * Signed blob URLs. A URL names one object and is bound to one method, an expiry, and for uploads
 * the content MD5 (and optionally the length); all of these, plus the bucket, are covered by an
 * HMAC-SHA256 over a canonical string with a key that exists only in the data plane:
 *
 *   tether-blob-v1 \n METHOD \n bucket \n key \n expires(unix s) \n md5(base64 or "") \n length(or "")
 *
 * Query parameters: `x-method`, `x-expires`, `x-md5`, `x-length`, `x-sig` (base64url). Changing any
 * of them, or the path, breaks the signature (DATAPROXY_SIGNATURE_INVALID). Verification compares
 * MACs in constant time and accepts any key of the keyring (first = signing key, the others are
 * still-valid previous keys, for rotation).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { DataproxyErrorCode, dataproxyError } from './errors.js';

export type SignedMethod = 'GET' | 'PUT';

export interface SignedFields {
  method: SignedMethod;
  bucket: string;
  key: string;
  /** Unix seconds. */
  expires: number;
  /** Base64 MD5 of the content (uploads). */
  md5?: string;
  /** Exact byte length (uploads, optional). */
  length?: number;
}

const PARAMS = ['x-method', 'x-expires', 'x-md5', 'x-length', 'x-sig'] as const;
const MAC_BYTES = 32;

function canonical(fields: SignedFields): string {
  return ['tether-blob-v1', fields.method, fields.bucket, fields.key, String(fields.expires), fields.md5 ?? '', fields.length === undefined ? '' : String(fields.length)].join('\n');
}

function mac(key: Buffer, fields: SignedFields): Buffer {
  return createHmac('sha256', key).update(canonical(fields)).digest();
}

/** The query string (without `?`) that signs `fields`. */
export function signQuery(signingKey: Buffer, fields: SignedFields): string {
  const query = new URLSearchParams();
  query.set('x-method', fields.method);
  query.set('x-expires', String(fields.expires));
  if (fields.md5 !== undefined) query.set('x-md5', fields.md5);
  if (fields.length !== undefined) query.set('x-length', String(fields.length));
  query.set('x-sig', mac(signingKey, fields).toString('base64url'));
  return query.toString();
}

/**
 * Check a request's query against the keyring. Order: signature (403), expiry (403), method (405):
 * an expired URL is reported as expired only when its signature is intact, so a forged expiry is
 * always SIGNATURE_INVALID.
 */
export function verifyQuery(keyring: readonly Buffer[], bucket: string, key: string, rawQuery: string, requestMethod: string, nowMs: number): SignedFields {
  const query = new URLSearchParams(rawQuery);
  for (const name of PARAMS) {
    if (query.getAll(name).length > 1) throw dataproxyError(DataproxyErrorCode.SIGNATURE_INVALID, `repeated ${name}`);
  }
  const method = query.get('x-method');
  const expiresText = query.get('x-expires');
  const md5 = query.get('x-md5') ?? undefined;
  const lengthText = query.get('x-length') ?? undefined;
  const sigText = query.get('x-sig');
  if ((method !== 'GET' && method !== 'PUT') || expiresText === null || sigText === null || !/^\d{1,12}$/.test(expiresText) || (lengthText !== undefined && !/^\d{1,15}$/.test(lengthText))) {
    throw dataproxyError(DataproxyErrorCode.SIGNATURE_INVALID, 'the URL is not a signed blob URL');
  }
  const fields: SignedFields = { method, bucket, key, expires: Number(expiresText), ...(md5 === undefined ? {} : { md5 }), ...(lengthText === undefined ? {} : { length: Number(lengthText) }) };
  const given = Buffer.from(sigText, 'base64url');
  // Compare against a fixed-size buffer even when the given one is malformed, so the time taken
  // does not depend on how much of the signature is right.
  const candidate = given.length === MAC_BYTES ? given : Buffer.alloc(MAC_BYTES);
  let valid = false;
  for (const signingKey of keyring) {
    if (timingSafeEqual(mac(signingKey, fields), candidate)) valid = true;
  }
  // Only the canonical encoding is accepted (the last base64url character has two spare bits).
  const canonicalEncoding = given.toString('base64url') === sigText;
  if (!valid || given.length !== MAC_BYTES || !canonicalEncoding) throw dataproxyError(DataproxyErrorCode.SIGNATURE_INVALID, 'the URL signature is not valid');
  if (Math.floor(nowMs / 1000) > fields.expires) throw dataproxyError(DataproxyErrorCode.URL_EXPIRED, 'the signed URL has expired');
  const allowed = method === 'GET' ? requestMethod === 'GET' || requestMethod === 'HEAD' : requestMethod === 'PUT';
  if (!allowed) throw dataproxyError(DataproxyErrorCode.METHOD_NOT_ALLOWED, `the URL was signed for ${method}, not ${requestMethod}`, { signed: method });
  return fields;
}
