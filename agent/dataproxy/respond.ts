/** JSON answers shared by the blob server and the dataproxy API. */
import type { ServerResponse } from 'node:http';
import { TetherError } from '../../common/errors.js';
import { httpStatusFor } from './errors.js';

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** Answer a refusal: status by code, `tether-error` header, `{ code, message }` body. Returns the code. */
export function sendError(res: ServerResponse, reason: unknown, options: { close?: boolean } = {}): string {
  const error = TetherError.from(reason, 'DATAPROXY_STORE_FAILED');
  // Unexpected errors are reported by code only; their text may name local paths.
  const message = error.code === 'DATAPROXY_STORE_FAILED' ? 'blob store failure' : error.rawMessage;
  if (res.headersSent) {
    res.destroy();
    return error.code;
  }
  sendJson(res, httpStatusFor(error.code), { code: error.code, message }, { 'tether-error': error.code, ...(options.close === true ? { connection: 'close' } : {}) });
  return error.code;
}
