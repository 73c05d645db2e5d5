/**
 * A raw xDS test client that does exactly what a test tells it, including what well-behaved clients
 * do not: stale nonces, NACKs, resubscribes, reconnects with initial_resource_versions, requests
 * without a type URL. One `AdsTestClient` per server; it opens any number of SotW or Delta
 * streams over ADS or the per-type services.
 *
 * Responses are queued per stream; `next()` waits for the next one (bounded by a deadline so a
 * broken server fails the test instead of hanging it). To prove that a request got *no* response,
 * send it and then a probe request that always gets one; responses on a stream are ordered, so if
 * the next response is the probe's, the first request was not answered (`expectSilenceThenProbe`).
 */
import { create, fromBinary } from '@bufbuild/protobuf';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { Client, credentials } from '@grpc/grpc-js';
import type { ClientDuplexStream, ServiceError } from '@grpc/grpc-js';
import type { Any } from '@bufbuild/protobuf/wkt';
import { AggregatedDiscoveryService } from '../../xds/gen/envoy/service/discovery/v3/ads_pb.js';
import {
  DeltaDiscoveryRequestSchema,
  DiscoveryRequestSchema,
} from '../../xds/gen/envoy/service/discovery/v3/discovery_pb.js';
import type {
  DeltaDiscoveryRequest,
  DeltaDiscoveryResponse,
  DiscoveryRequest,
  DiscoveryResponse,
} from '../../xds/gen/envoy/service/discovery/v3/discovery_pb.js';
import { NodeSchema } from '../../xds/gen/envoy/config/core/v3/base_pb.js';
import type { Node } from '../../xds/gen/envoy/config/core/v3/base_pb.js';
import { ClientStatusDiscoveryService, ClientStatusRequestSchema } from '../../xds/gen/envoy/service/status/v3/csds_pb.js';
import type { ClientStatusResponse } from '../../xds/gen/envoy/service/status/v3/csds_pb.js';
import { methodDefinition } from '../../xds/grpc-service.js';
import { resourceTypeByUrl } from '../../xds/resource-types.js';
import type { ResourceKind } from '../../xds/resource-types.js';
import { resourceType } from '../../xds/resource-types.js';

const DEFAULT_WAIT_MS = 5000;

export function envoyNode(id = 'envoy-1'): Node {
  return create(NodeSchema, { id, cluster: 'test', userAgentName: 'envoy' });
}

export function grpcNode(id = 'grpc-1'): Node {
  return create(NodeSchema, { id, cluster: 'test', userAgentName: 'gRPC Node Pure JS' });
}

/** Name of a resource in a response (decoding its Any by type). */
export function nameOfAny(any: Any): string {
  const type = resourceTypeByUrl(any.typeUrl);
  if (!type) throw new Error(`unknown type ${any.typeUrl}`);
  const message = fromBinary(type.schema, any.value) as unknown as Record<string, unknown>;
  return String(type.kind === 'endpoint' ? message.clusterName : message.name);
}

export function decodeAny<T>(any: Any): T {
  const type = resourceTypeByUrl(any.typeUrl);
  if (!type) throw new Error(`unknown type ${any.typeUrl}`);
  return fromBinary(type.schema, any.value) as unknown as T;
}

export function namesOf(response: DiscoveryResponse): string[] {
  return response.resources.map(nameOfAny).sort();
}

export function deltaNamesOf(response: DeltaDiscoveryResponse): string[] {
  return response.resources.map((r) => r.name).sort();
}

class Queue<T> {
  readonly #items: T[] = [];
  readonly #waiters: Array<{ resolve: (item: T) => void; reject: (reason: Error) => void; timer: NodeJS.Timeout }> = [];
  #error: Error | null = null;
  ended = false;

  push(item: T): void {
    const waiter = this.#waiters.shift();
    if (waiter) {
      clearTimeout(waiter.timer);
      waiter.resolve(item);
    } else {
      this.#items.push(item);
    }
  }

  fail(error: Error): void {
    this.#error = error;
    for (const waiter of this.#waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
  }

  get pending(): number {
    return this.#items.length;
  }

  next(waitMs: number, what: string): Promise<T> {
    const item = this.#items.shift();
    if (item !== undefined) return Promise.resolve(item);
    if (this.#error) return Promise.reject(this.#error);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        const index = this.#waiters.findIndex((w) => w.timer === timer);
        if (index >= 0) this.#waiters.splice(index, 1);
        reject(new Error(`no ${what} within ${waitMs} ms`));
      }, waitMs);
      this.#waiters.push({ resolve, reject, timer });
    });
  }
}

type Service = 'ads' | ResourceKind;

export class TestStream<Req, Res> {
  readonly #queue = new Queue<Res>();
  /** The gRPC status the stream ended with, once it has. */
  status: ServiceError | null = null;
  readonly closed: Promise<ServiceError | null>;

  constructor(readonly call: ClientDuplexStream<Req, Res>) {
    call.on('data', (response: Res) => this.#queue.push(response));
    this.closed = new Promise((resolve) => {
      call.on('error', (error: ServiceError) => {
        this.status = error;
        this.#queue.fail(error);
        resolve(error);
      });
      call.on('end', () => {
        this.#queue.fail(new Error('stream ended'));
        resolve(null);
      });
    });
  }

  send(request: Req): void {
    this.call.write(request);
  }

  next(waitMs = DEFAULT_WAIT_MS): Promise<Res> {
    return this.#queue.next(waitMs, 'response');
  }

  get buffered(): number {
    return this.#queue.pending;
  }

  close(): void {
    this.call.end();
    this.call.cancel();
  }
}

export type SotwStream = TestStream<DiscoveryRequest, DiscoveryResponse>;
export type DeltaStream = TestStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

export class AdsTestClient {
  readonly #client: Client;
  readonly #streams: Array<TestStream<unknown, unknown>> = [];

  constructor(readonly address: string) {
    this.#client = new Client(address, credentials.createInsecure());
  }

  #method(service: Service, delta: boolean) {
    const desc = service === 'ads' ? AggregatedDiscoveryService : resourceType(service).service;
    const method = desc.methods.find((m) => m.methodKind === 'bidi_streaming' && m.name.startsWith('Delta') === delta);
    if (!method) throw new Error(`no ${delta ? 'delta' : 'sotw'} method on ${service}`);
    return methodDefinition(method);
  }

  sotw(service: Service = 'ads'): SotwStream {
    const def = this.#method(service, false);
    const call = this.#client.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize) as ClientDuplexStream<DiscoveryRequest, DiscoveryResponse>;
    const stream = new TestStream(call);
    this.#streams.push(stream as TestStream<unknown, unknown>);
    return stream;
  }

  delta(service: Service = 'ads'): DeltaStream {
    const def = this.#method(service, true);
    const call = this.#client.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize) as ClientDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;
    const stream = new TestStream(call);
    this.#streams.push(stream as TestStream<unknown, unknown>);
    return stream;
  }

  /** One CSDS fetch. */
  csds(nodeId?: string): Promise<ClientStatusResponse> {
    const method = ClientStatusDiscoveryService.methods.find((m) => m.localName === 'fetchClientStatus');
    if (!method) throw new Error('no fetchClientStatus');
    const def = methodDefinition(method);
    const request = create(ClientStatusRequestSchema, {
      nodeMatchers: nodeId === undefined ? [] : [{ nodeId: { matchPattern: { case: 'exact', value: nodeId } } }],
    });
    return new Promise((resolve, reject) => {
      this.#client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, request, (error, response) => {
        if (error) reject(error);
        else resolve(response as ClientStatusResponse);
      });
    });
  }

  close(): void {
    for (const stream of this.#streams) stream.close();
    this.#client.close();
  }
}

export function sotwRequest(init: MessageInitShape<typeof DiscoveryRequestSchema>): DiscoveryRequest {
  return create(DiscoveryRequestSchema, init);
}

export function deltaRequest(init: MessageInitShape<typeof DeltaDiscoveryRequestSchema>): DeltaDiscoveryRequest {
  return create(DeltaDiscoveryRequestSchema, init);
}
