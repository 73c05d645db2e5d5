/**
 * The dataproxy's JSON API, served on the agent and reached by clients through the tunnel (or the
 * sovereign router). `POST /tether.dataproxy.v1.DataProxyService/CreateUploadLocation` and
 * `.../CreateDownloadLink`, JSON bodies (≤ 64 KiB) as in `UploadLocationRequest` and
 * `DownloadLinkRequest`, answers as in `UploadLocation` and `DownloadLink`.
 *
 * Authentication: this handler does not verify tokens. It trusts the `tether-subject` and
 * `tether-cluster` headers that the gateway (tunnel mode) or the router (sovereign mode) sets
 * after verifying the client's token and authorising it for this cluster; the gateway strips every
 * client-sent `tether-*` header, so these cannot be forged through it. A request without both is
 * refused (DATAPROXY_UNAUTHENTICATED), one for another cluster too (DATAPROXY_WRONG_CLUSTER).
 * Consequently this handler must be reachable only through the gateway's tunnel or the router:
 * bind its server to loopback (the default) or mount it behind the router.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../../common/log.js';
import { silentLogger } from '../../common/log.js';
import { getErrorCode } from '../../common/errors.js';
import type { Closable } from '../../common/lifecycle.js';
import type { Dataproxy, DownloadLinkRequest, UploadLocationRequest } from './dataproxy.js';
import { DataproxyErrorCode, dataproxyError } from './errors.js';
import { OwnedHttpServer } from './http-server.js';
import type { RequestHandler } from './http-server.js';
import { sendError, sendJson } from './respond.js';

export const API_PREFIX = '/tether.dataproxy.v1.DataProxyService/';
export const SUBJECT_HEADER = 'tether-subject';
export const CLUSTER_HEADER = 'tether-cluster';
const MAX_BODY_BYTES = 64 * 1024;

/** What the `authorize` hook is asked: may `subject` do `operation` (on the project/domain, or on `uri`)? */
export interface DataAccessRequest {
  subject: string;
  cluster: string;
  operation: 'data.write' | 'data.read';
  org?: string;
  project?: string;
  domain?: string;
  uri?: string;
}

export interface DataproxyApiOptions {
  logger?: Logger;
  /**
   * A per-request RBAC decision after the gateway's per-cluster one (e.g. the control plane's
   * AccessService.Check). Default: every authenticated subject may. False → DATAPROXY_PERMISSION_DENIED.
   */
  authorize?: (request: DataAccessRequest) => boolean | Promise<boolean>;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  const text = Array.isArray(value) ? value[0] : value;
  return text === undefined || text.trim() === '' ? undefined : text.trim();
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw dataproxyError(DataproxyErrorCode.INVALID_ARGUMENT, `request body exceeds ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw dataproxyError(DataproxyErrorCode.INVALID_ARGUMENT, 'request body is not JSON');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw dataproxyError(DataproxyErrorCode.INVALID_ARGUMENT, 'request body must be a JSON object');
  return body as Record<string, unknown>;
}

/** The API as a request handler `(req, res) => void`, to mount behind the agent's router. */
export function createDataproxyHandler(dataproxy: Dataproxy, options: DataproxyApiOptions = {}): RequestHandler {
  const logger = options.logger ?? silentLogger();
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const method = path.startsWith(API_PREFIX) ? path.slice(API_PREFIX.length) : '';
    if (method !== 'CreateUploadLocation' && method !== 'CreateDownloadLink') throw dataproxyError(DataproxyErrorCode.NO_ROUTE, `no such operation: ${path.slice(0, 100)}`);
    if (req.method !== 'POST') throw dataproxyError(DataproxyErrorCode.METHOD_NOT_ALLOWED, 'use POST');
    const subject = header(req, SUBJECT_HEADER);
    const cluster = header(req, CLUSTER_HEADER);
    if (subject === undefined || cluster === undefined) throw dataproxyError(DataproxyErrorCode.UNAUTHENTICATED, 'the request carries no verified identity (tether-subject/tether-cluster)');
    if (dataproxy.clusterId !== undefined && cluster !== dataproxy.clusterId) throw dataproxyError(DataproxyErrorCode.WRONG_CLUSTER, 'the request is for another cluster');
    const body = await readJson(req);
    if (options.authorize !== undefined) {
      const text = (value: unknown): string | undefined => (typeof value === 'string' && value !== '' ? value : undefined);
      const scope = { org: text(body.org), project: text(body.project), domain: text(body.domain), uri: text(body.uri) };
      const request: DataAccessRequest = { subject, cluster, operation: method === 'CreateUploadLocation' ? 'data.write' : 'data.read' };
      for (const [name, value] of Object.entries(scope)) if (value !== undefined) request[name as 'org' | 'project' | 'domain' | 'uri'] = value;
      if (!(await options.authorize(request))) throw dataproxyError(DataproxyErrorCode.PERMISSION_DENIED, `${subject} may not ${request.operation} here`);
    }
    if (method === 'CreateUploadLocation') {
      const location = await dataproxy.createUploadLocation(body as unknown as UploadLocationRequest);
      logger.info({ subject, operation: method, uri: location.nativeUrl }, 'upload location issued');
      sendJson(res, 200, location);
    } else {
      const link = await dataproxy.createDownloadLink(body as unknown as DownloadLinkRequest);
      logger.info({ subject, operation: method, uri: body.uri }, 'download link issued');
      sendJson(res, 200, link);
    }
  };
  return (req, res) => {
    handle(req, res).catch((reason: unknown) => {
      const code = sendError(res, reason);
      if (getErrorCode(reason) === null || code === DataproxyErrorCode.STORE_FAILED) logger.error({ err: reason }, 'dataproxy API failure');
    });
  };
}

/** The API on its own `node:http` server (tests, and agents that do not mount it on the router). */
export class DataproxyApiServer implements Closable {
  readonly http: OwnedHttpServer;

  constructor(dataproxy: Dataproxy, options: DataproxyApiOptions = {}) {
    this.http = new OwnedHttpServer(createDataproxyHandler(dataproxy, options));
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
}
