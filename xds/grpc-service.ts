/**
 * The one bridge between protobuf-es service descriptors (generated `GenService`s) and
 * `@grpc/grpc-js`: method paths, and (de)serialisers built from `toBinary`/`fromBinary`.
 *
 * A serialiser also accepts an already-encoded message (`Uint8Array`), so a server can send bytes
 * it assembled itself (the xDS server shares encoded resources between clients that way).
 */
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import type { DescMessage, DescMethod, DescService, MessageShape } from '@bufbuild/protobuf';
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';

/** A message, or its protobuf encoding made elsewhere. */
export type Encodable<Desc extends DescMessage> = MessageShape<Desc> | Uint8Array;

export function serializerFor<Desc extends DescMessage>(schema: Desc): (value: Encodable<Desc>) => Buffer {
  return (value) => {
    const bytes = value instanceof Uint8Array ? value : toBinary(schema, value);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

export function deserializerFor<Desc extends DescMessage>(schema: Desc): (bytes: Buffer) => MessageShape<Desc> {
  return (bytes) => fromBinary(schema, bytes);
}

/** `/package.Service/Method`, the HTTP/2 path gRPC uses. */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/** A grpc-js method definition for one protobuf-es method. */
export function methodDefinition(method: DescMethod): MethodDefinition<unknown, unknown> {
  const streams = {
    unary: [false, false],
    server_streaming: [false, true],
    client_streaming: [true, false],
    bidi_streaming: [true, true],
  } as const;
  const [requestStream, responseStream] = streams[method.methodKind];
  return {
    path: methodPath(method),
    requestStream,
    responseStream,
    requestSerialize: serializerFor(method.input) as (value: unknown) => Buffer,
    requestDeserialize: deserializerFor(method.input),
    responseSerialize: serializerFor(method.output) as (value: unknown) => Buffer,
    responseDeserialize: deserializerFor(method.output),
    originalName: method.localName,
  };
}

/**
 * A grpc-js `ServiceDefinition` keyed by each method's local (camelCase) name, usable with
 * `server.addService(def, impl)` and `makeGenericClientConstructor(def, name)`.
 */
export function serviceDefinition(service: DescService): ServiceDefinition {
  const definition: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) definition[method.localName] = methodDefinition(method);
  return definition;
}
