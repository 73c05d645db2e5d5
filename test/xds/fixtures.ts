/** Shared set-up for the xDS conformance tests (not a test file itself). */
import type { ExecutionContext } from 'ava';
import { XdsServer } from '../../xds/server.js';
import type { XdsServerOptions } from '../../xds/server.js';
import { edsCluster, httpListener, loadAssignment, routeConfiguration, tlsSecret } from '../../xds/builders.js';
import type { SnapshotInput } from '../../xds/snapshot.js';
import { TypeUrl } from '../../xds/resource-types.js';
import { AdsTestClient, sotwRequest, deltaRequest } from '../helpers/ads-client.js';
import type { DeltaStream, SotwStream } from '../helpers/ads-client.js';
import type { DiscoveryResponse } from '../../xds/gen/envoy/service/discovery/v3/discovery_pb.js';

export const PROBE_SECRETS = 12;

/** Clusters c1, c2 (EDS), their assignments, route config rc → c1, listener l1 → rc, probe secrets. */
export function baseInput(overrides: Partial<SnapshotInput> = {}): SnapshotInput {
  return {
    clusters: [edsCluster({ name: 'c1' }), edsCluster({ name: 'c2' })],
    endpoints: [loadAssignment('c1', [{ address: '127.0.0.1', port: 9001 }]), loadAssignment('c2', [{ address: '127.0.0.1', port: 9002 }])],
    routes: [routeConfiguration('rc', [{ name: 'all', domains: ['*'], routes: [{ prefix: '/', cluster: 'c1' }] }])],
    listeners: [httpListener('l1', '127.0.0.1', 10000, 'rc')],
    secrets: Array.from({ length: PROBE_SECRETS }, (_, i) => tlsSecret(`probe-${i}`, 'cert', 'key')),
    ...overrides,
  };
}

export interface Rig {
  server: XdsServer;
  client: AdsTestClient;
}

export async function rig(t: ExecutionContext, input: SnapshotInput = baseInput(), options: XdsServerOptions = {}): Promise<Rig> {
  const server = new XdsServer(options);
  server.setSnapshot(input);
  const { port } = await server.listen();
  const client = new AdsTestClient(`127.0.0.1:${port}`);
  t.teardown(async () => {
    client.close();
    await server.close();
  });
  return { server, client };
}

/** ACK a SotW response, keeping the subscription `names`. */
export function ack(stream: SotwStream, response: DiscoveryResponse, names: string[] = []): void {
  stream.send(sotwRequest({ typeUrl: response.typeUrl, versionInfo: response.versionInfo, responseNonce: response.nonce, resourceNames: names }));
}

/**
 * Proves a request was not answered: subscribes to one more probe secret (always answered, U3);
 * the next response on the stream must be that probe's.
 */
export class SotwProber {
  #names: string[] = [];
  #nonce = '';
  #version = '';

  constructor(private readonly stream: SotwStream) {}

  async expectNothingBefore(t: ExecutionContext, message: string): Promise<void> {
    const name = `probe-${this.#names.length}`;
    this.#names.push(name);
    this.stream.send(sotwRequest({ typeUrl: TypeUrl.secret, resourceNames: this.#names, responseNonce: this.#nonce, versionInfo: this.#version }));
    const next = await this.stream.next();
    t.is(next.typeUrl, TypeUrl.secret, `${message} (got a ${next.typeUrl} response instead)`);
    this.#nonce = next.nonce;
    this.#version = next.versionInfo;
  }
}

export class DeltaProber {
  #count = 0;
  #nonce = '';

  constructor(private readonly stream: DeltaStream) {}

  async expectNothingBefore(t: ExecutionContext, message: string): Promise<void> {
    const name = `ghost-probe-${this.#count++}`;
    this.stream.send(deltaRequest({ typeUrl: TypeUrl.secret, resourceNamesSubscribe: [name], responseNonce: this.#nonce }));
    const next = await this.stream.next();
    t.is(next.typeUrl, TypeUrl.secret, `${message} (got a ${next.typeUrl} response instead)`);
    t.deepEqual(next.removedResources, [name]);
    this.#nonce = next.nonce;
  }
}
