/**
 * Stable error codes of the dataproxy and its blob server, each with the HTTP status it is
 * answered with. Every refusal carries its code in the JSON body (`{ code, message }`) and in the
 * `tether-error` response header.
 */
import { TetherError } from '../../common/errors.js';

export const DataproxyErrorCode = {
  /** The signature does not match the URL (any signed part was changed, or a key we do not hold). */
  SIGNATURE_INVALID: 'DATAPROXY_SIGNATURE_INVALID',
  /** The signed URL's expiry has passed. */
  URL_EXPIRED: 'DATAPROXY_URL_EXPIRED',
  /** The request method is not the one the URL was signed for (PUT for uploads, GET/HEAD for downloads). */
  METHOD_NOT_ALLOWED: 'DATAPROXY_METHOD_NOT_ALLOWED',
  /** The upload's Content-MD5 header, or the MD5 of the bytes received, differs from the signed MD5. */
  MD5_MISMATCH: 'DATAPROXY_MD5_MISMATCH',
  /** The upload's size differs from the signed content length. */
  LENGTH_MISMATCH: 'DATAPROXY_LENGTH_MISMATCH',
  /** The object exists with other content; objects are never overwritten. */
  OBJECT_EXISTS: 'DATAPROXY_OBJECT_EXISTS',
  /** No object under that key. */
  NOT_FOUND: 'DATAPROXY_NOT_FOUND',
  /** The upload is larger than the configured maximum (or its signed length). */
  TOO_LARGE: 'DATAPROXY_TOO_LARGE',
  /** The object key is malformed: empty, too long, `.`/`..` segments, characters outside the allowed set. */
  BAD_KEY: 'DATAPROXY_BAD_KEY',
  /** The URI is not a `tether-blob://<bucket>/<key>` URI of this data plane's bucket. */
  BAD_URI: 'DATAPROXY_BAD_URI',
  /** A request field is missing or out of range (project, domain, content MD5, expiry, JSON body). */
  INVALID_ARGUMENT: 'DATAPROXY_INVALID_ARGUMENT',
  /** The request reached the dataproxy API without the gateway's identity headers. */
  UNAUTHENTICATED: 'DATAPROXY_UNAUTHENTICATED',
  /** The API's `authorize` hook refused the subject for this operation. */
  PERMISSION_DENIED: 'DATAPROXY_PERMISSION_DENIED',
  /** The request is for another cluster than this data plane's. */
  WRONG_CLUSTER: 'DATAPROXY_WRONG_CLUSTER',
  /** Unknown API path. */
  NO_ROUTE: 'DATAPROXY_NO_ROUTE',
  /** The signing-key file is missing, malformed, holds a key under 32 bytes, or is readable by group/others. */
  KEY_FILE: 'DATAPROXY_KEY_FILE',
  /** The blob store failed (disk error); details are logged, not returned. */
  STORE_FAILED: 'DATAPROXY_STORE_FAILED',
} as const;

export type DataproxyErrorCode = (typeof DataproxyErrorCode)[keyof typeof DataproxyErrorCode];

const STATUS: Readonly<Record<DataproxyErrorCode, number>> = {
  DATAPROXY_SIGNATURE_INVALID: 403,
  DATAPROXY_URL_EXPIRED: 403,
  DATAPROXY_METHOD_NOT_ALLOWED: 405,
  DATAPROXY_MD5_MISMATCH: 400,
  DATAPROXY_LENGTH_MISMATCH: 400,
  DATAPROXY_OBJECT_EXISTS: 409,
  DATAPROXY_NOT_FOUND: 404,
  DATAPROXY_TOO_LARGE: 413,
  DATAPROXY_BAD_KEY: 400,
  DATAPROXY_BAD_URI: 400,
  DATAPROXY_INVALID_ARGUMENT: 400,
  DATAPROXY_UNAUTHENTICATED: 401,
  DATAPROXY_WRONG_CLUSTER: 403,
  DATAPROXY_PERMISSION_DENIED: 403,
  DATAPROXY_NO_ROUTE: 404,
  DATAPROXY_KEY_FILE: 500,
  DATAPROXY_STORE_FAILED: 500,
};

export function dataproxyError(code: DataproxyErrorCode, message: string, details?: Record<string, unknown>): TetherError {
  return new TetherError(code, message, details === undefined ? undefined : { details });
}

/** The HTTP status for a code (500 for anything that is not a dataproxy code). */
export function httpStatusFor(code: string): number {
  return (STATUS as Readonly<Record<string, number>>)[code] ?? 500;
}
