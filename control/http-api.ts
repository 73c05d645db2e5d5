/**
 * The JSON transport for browsers and curl: `POST /<package>.<Service>/<Method>` with the request
 * message in protobuf JSON, `Authorization: Bearer <token>`; the answer is the response message
 * in protobuf JSON, or `{ "code": "...", "message": "..." }` with the HTTP status of the code.
 * `GET /healthz` answers `ok`. Bodies above the API's size cap are refused before parsing.
 */
import { createServer as createHttpServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import { fromJson, toJson } from '@bufbuild/protobuf';
import type { DescMessage, JsonValue, MessageShape } from '@bufbuild/protobuf';
import { getErrorMessage, TetherError } from '../common/errors.js';
import type { ApiMethod } from './api-handlers.js';
import type { Dispatch } from './api-dispatch.js';
import { publicMessage } from './api-dispatch.js';
import { httpStatusFor } from './api-status.js';
import { ControlErrorCode } from './errors.js';
import { LIMITS } from './metadata-limits.js';

export interface HttpApiOptions {
  /** PEM key and certificate chain: serve HTTPS. */
  tls?: { key: string; cert: string };
  /** The operator console, answering every path under `/console` (control/console/). */
  console?: { handles(path: string): boolean; handle(request: IncomingMessage, response: ServerResponse): Promise<void> };
}

export interface HttpApi {
  server: Server;
  sockets: Set<Socket>;
}

function send(response: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  response.end(text);
}

function sendError(response: ServerResponse, error: TetherError): void {
  send(response, httpStatusFor(error.code), { code: error.code, message: publicMessage(error) });
}

async function readBody(request: IncomingMessage): Promise<Buffer> {
  const declared = Number(request.headers['content-length'] ?? 0);
  if (declared > LIMITS.requestBytes) throw new TetherError(ControlErrorCode.REQUEST_TOO_LARGE, `request body of ${declared} bytes is over the ${LIMITS.requestBytes}-byte limit`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > LIMITS.requestBytes) throw new TetherError(ControlErrorCode.REQUEST_TOO_LARGE, `request body is over the ${LIMITS.requestBytes}-byte limit`);
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}

export function createHttpApi(methods: Map<string, ApiMethod>, dispatch: Dispatch, options: HttpApiOptions = {}): HttpApi {
  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const path = (request.url ?? '/').split('?')[0] ?? '/';
    if (request.method === 'GET' && path === '/healthz') {
      response.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    if (options.console?.handles(path) === true) {
      await options.console.handle(request, response);
      return;
    }
    const method = methods.get(path);
    if (method === undefined) {
      send(response, 404, { code: ControlErrorCode.NOT_FOUND, message: `no method ${path}` });
      return;
    }
    if (request.method !== 'POST') {
      response.setHeader('allow', 'POST');
      send(response, 405, { code: ControlErrorCode.INVALID_ARGUMENT, message: 'use POST' });
      return;
    }
    try {
      const body = await readBody(request);
      let message: MessageShape<DescMessage>;
      try {
        const json = body.length === 0 ? {} : (JSON.parse(body.toString('utf8')) as JsonValue);
        message = fromJson(method.method.input, json);
      } catch (reason) {
        throw new TetherError(ControlErrorCode.INVALID_ARGUMENT, `request body is not a ${method.method.input.typeName} in JSON: ${getErrorMessage(reason)}`);
      }
      const result = (await dispatch(method, message, request.headers.authorization)) as MessageShape<DescMessage>;
      send(response, 200, toJson(method.method.output, result));
    } catch (reason) {
      if (!response.headersSent) sendError(response, TetherError.from(reason));
      else response.destroy();
    }
  };
  const listener = (request: IncomingMessage, response: ServerResponse): void => {
    void handle(request, response);
  };
  const server = options.tls === undefined ? createHttpServer(listener) : createHttpsServer({ key: options.tls.key, cert: options.tls.cert }, listener);
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  return { server, sockets };
}
