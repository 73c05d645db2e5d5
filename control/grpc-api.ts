/**
 * The gRPC transport: every service of control/proto registered on a grpc-js server through the
 * protobuf-es bridge (xds/grpc-service.ts). Errors carry a gRPC status and the stable code in the
 * `tether-code` trailer.
 */
import { Metadata, Server } from '@grpc/grpc-js';
import type { sendUnaryData, ServerCredentials, ServerUnaryCall, UntypedServiceImplementation } from '@grpc/grpc-js';
import { TetherError } from '../common/errors.js';
import { serviceDefinition } from '../xds/grpc-service.js';
import { API_SERVICES } from './api-handlers.js';
import type { ApiMethod } from './api-handlers.js';
import type { Dispatch } from './api-dispatch.js';
import { publicMessage } from './api-dispatch.js';
import { grpcStatusFor } from './api-status.js';
import { LIMITS } from './metadata-limits.js';

export const CODE_TRAILER = 'tether-code';

export function createGrpcApi(methods: Map<string, ApiMethod>, dispatch: Dispatch): Server {
  const server = new Server({ 'grpc.max_receive_message_length': LIMITS.requestBytes });
  for (const service of API_SERVICES) {
    const implementation: UntypedServiceImplementation = {};
    for (const descriptor of service.methods) {
      const method = methods.get(`/${service.typeName}/${descriptor.name}`);
      if (method === undefined) continue;
      implementation[descriptor.localName] = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
        const authorization = call.metadata.get('authorization')[0];
        dispatch(method, call.request, typeof authorization === 'string' ? authorization : undefined).then(
          (response) => callback(null, response),
          (reason: unknown) => {
            const error = TetherError.from(reason);
            const trailer = new Metadata();
            trailer.set(CODE_TRAILER, error.code);
            callback({ code: grpcStatusFor(error.code), details: `[${error.code}] ${publicMessage(error)}`, metadata: trailer });
          },
        );
      };
    }
    server.addService(serviceDefinition(service), implementation);
  }
  return server;
}

/** Bind on host:port (0 = any free port); resolves with the port. */
export function bindGrpc(server: Server, host: string, port: number, credentials: ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(`${host.includes(':') ? `[${host}]` : host}:${port}`, credentials, (error, boundPort) => (error === null ? resolve(boundPort) : reject(error)));
  });
}
