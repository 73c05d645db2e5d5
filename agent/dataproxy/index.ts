/**
 * The dataproxy (data plane): signed, time-limited, single-object, method-bound URLs for the data
 * plane's blob store, the embedded filesystem blob store and the blob server clients reach with
 * those URLs, and the JSON API clients reach through the tunnel.
 */
export { Dataproxy, base32, checkMd5, DEFAULT_MAX_EXPIRES_IN_SEC, DEFAULT_MAX_UPLOAD_BYTES, OBJECT_PATH_PREFIX } from './dataproxy.js';
export type { DataproxyOptions, DownloadLink, DownloadLinkRequest, SignedUrlIssuer, UploadLocation, UploadLocationRequest, UriUploadRequest } from './dataproxy.js';
export { FsBlobStore } from './blob-store.js';
export type { BlobInfo, BlobStore, WriteOptions, WriteResult } from './blob-store.js';
export { BlobServer } from './blob-server.js';
export type { BlobServerOptions } from './blob-server.js';
export { API_PREFIX, CLUSTER_HEADER, createDataproxyHandler, DataproxyApiServer, SUBJECT_HEADER } from './api.js';
export type { DataAccessRequest, DataproxyApiOptions } from './api.js';
export { BLOB_CLIENT_FAILED, downloadToFile, fileMd5, uploadFile, uploadStream } from './blob-client.js';
export { DataproxyErrorCode, httpStatusFor } from './errors.js';
export { blobUri, isValidKey, parseBlobUri, parseKey } from './keys.js';
export { DataproxyMetrics, dataproxyMetrics } from './metrics.js';
export { OwnedHttpServer } from './http-server.js';
export type { RequestHandler } from './http-server.js';
export { signQuery, verifyQuery } from './signing.js';
export type { SignedFields, SignedMethod } from './signing.js';
export { loadSigningKeys } from './signing-key.js';
export { startEmbeddedDataproxy } from './embedded.js';
export type { EmbeddedDataproxy, EmbeddedDataproxyOptions } from './embedded.js';
