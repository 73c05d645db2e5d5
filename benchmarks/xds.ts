/**
 * xDS server at scale: N simulated Envoy-like ADS clients (SotW; wildcard CDS and LDS, every EDS
 * name, the route configuration), each ACKing every response, against a snapshot of 1,000
 * clusters, 1,000 load assignments of 10 endpoints and a route configuration with one virtual host
 * per cluster. Measures the full initial sync, then the time from one endpoint change to each
 * client's ACK (p50, p99, max, as the server sees the ACKs; the change is published with
 * `updateSnapshot`, the endpoint fast path), and the server's heap and CPU. Three change rounds;
 * the best and the worst round's p99 are both reported.
 *
 * The clients run in a child process (this file with `--clients-process`), so the heap and CPU
 * figures are the server's alone. Each client is one ADS stream; clients share HTTP/2 connections
 * in groups of `STREAMS_PER_CONNECTION`. Clients only read nonce/version/type from responses
 * (no full decode), as a client that cares about the server would not add its own cost.
 *
 *   node --import ./bin/typescript.js --expose-gc benchmarks/xds.ts [--clients=1000,2000] [--protocol=sotw,delta]
 */
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Client, credentials } from '@grpc/grpc-js';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import { create, toBinary } from '@bufbuild/protobuf';
import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { XdsServer } from '../xds/server.js';
import type { SettleEvent } from '../xds/stream-session.js';
import { edsCluster, httpListener, loadAssignment, routeConfiguration } from '../xds/builders.js';
import type { SnapshotInput } from '../xds/snapshot.js';
import { TypeUrl } from '../xds/resource-types.js';
import { AggregatedDiscoveryService } from '../xds/gen/envoy/service/discovery/v3/ads_pb.js';
import { DeltaDiscoveryRequestSchema, DiscoveryRequestSchema } from '../xds/gen/envoy/service/discovery/v3/discovery_pb.js';
import { methodPath } from '../xds/grpc-service.js';

/** `--import` this in a child Node process to run the repository's TypeScript. */
const TYPESCRIPT_LOADER = new URL('../bin/typescript.js', import.meta.url).href;

const CLUSTERS = 1000;
const ENDPOINTS_PER_CLUSTER = 10;
const STREAMS_PER_CONNECTION = 100;

function snapshotInput(generation: number): SnapshotInput {
  const names = Array.from({ length: CLUSTERS }, (_, i) => `svc-${i}`);
  return {
    clusters: names.map((name) => edsCluster({ name })),
    endpoints: names.map((name, i) =>
      loadAssignment(
        name,
        Array.from({ length: ENDPOINTS_PER_CLUSTER }, (_, j) => ({
          address: `10.${(i >> 8) & 255}.${i & 255}.${j + 1}`,
          // Generation bumps one endpoint of svc-0: the "one endpoint change".
          port: i === 0 && j === 0 ? 8080 + generation : 8080,
        })),
      ),
    ),
    routes: [routeConfiguration('routes', names.map((name) => ({ name, domains: [`${name}.internal`], routes: [{ prefix: '/', cluster: name }] })))],
    listeners: [httpListener('ingress', '0.0.0.0', 10000, 'routes')],
  };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;
const heapMiB = () => round(process.memoryUsage().heapUsed / 2 ** 20);

function gc(): void {
  const collect = (globalThis as { gc?: () => void }).gc;
  if (collect) {
    collect();
    collect();
  }
}

interface ChildMessage {
  synced?: number;
}

async function measure(clients: number, protocol: 'sotw' | 'delta'): Promise<Record<string, number>> {
  gc();
  const heapBefore = heapMiB();
  const server = new XdsServer();
  let generation = 0;
  const t0 = performance.now();
  server.setSnapshot(snapshotInput(generation));
  const snapshotBuildMs = performance.now() - t0;
  const { port } = await server.listen();

  const cpu0 = process.cpuUsage();
  const syncStart = performance.now();
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ['--clients-process', String(port), String(clients), protocol], {
    execArgv: ['--import', TYPESCRIPT_LOADER],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      child.on('message', (message: ChildMessage) => {
        if (message.synced === clients) resolve();
      });
      child.once('exit', (code) => reject(new Error(`client process exited ${code}`)));
    });
    const initialSyncMs = performance.now() - syncStart;
    const syncCpu = process.cpuUsage(cpu0);
    gc();
    const heapAfterSync = heapMiB();

    // One endpoint change → every client's ACK.
    const results: Record<string, number>[] = [];
    for (let round_ = 0; round_ < 3; round_ += 1) {
      generation += 1;
      const changed = snapshotInput(generation).endpoints?.slice(0, 1) ?? [];
      const latencies: number[] = [];
      const cpu1 = process.cpuUsage();
      let publishedAt = 0;
      let version = '';
      const done = new Promise<void>((resolve) => {
        const onAck = (event: SettleEvent) => {
          if (event.type !== 'endpoint' || event.version !== version) return;
          latencies.push(performance.now() - publishedAt);
          if (latencies.length === clients) {
            server.off('ack', onAck);
            resolve();
          }
        };
        server.on('ack', onAck);
      });
      publishedAt = performance.now();
      version = server.updateSnapshot({ endpoints: changed }).version(TypeUrl.endpoint);
      const publishMs = performance.now() - publishedAt;
      await done;
      const cpu = process.cpuUsage(cpu1);
      latencies.sort((a, b) => a - b);
      results.push({ p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies[latencies.length - 1] ?? NaN, publishMs, cpuMs: (cpu.user + cpu.system) / 1000 });
    }
    const best = results.reduce((a, b) => ((b.p99 ?? Infinity) < (a.p99 ?? Infinity) ? b : a));
    const worst = results.reduce((a, b) => ((b.p99 ?? 0) > (a.p99 ?? 0) ? b : a));
    gc();
    return {
      clients,
      snapshotBuildMs: round(snapshotBuildMs),
      initialSyncMs: round(initialSyncMs),
      initialSyncServerCpuMs: round((syncCpu.user + syncCpu.system) / 1000),
      changeToAllAcksP50Ms: round(best.p50 ?? NaN),
      changeToAllAcksP99Ms: round(best.p99 ?? NaN),
      changeToAllAcksMaxMs: round(best.max ?? NaN),
      changeToAllAcksWorstRoundP99Ms: round(worst.p99 ?? NaN),
      changePublishMs: round(best.publishMs ?? NaN),
      changeServerCpuMs: round(best.cpuMs ?? NaN),
      heapBeforeMiB: heapBefore,
      heapAfterSyncMiB: heapAfterSync,
      heapServerMiB: round(heapAfterSync - heapBefore),
      rssMiB: round(process.memoryUsage().rss / 2 ** 20),
    };
  } finally {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
    await server.close();
  }
}

export async function run(args: string[] = []): Promise<Record<string, number>> {
  const flag = args.find((a) => a.startsWith('--clients='));
  const counts = (flag?.slice('--clients='.length) ?? '1000,2000').split(',').map(Number).filter((n) => n > 0);
  const protocols = (args.find((a) => a.startsWith('--protocol='))?.slice('--protocol='.length) ?? 'sotw').split(',');
  const out: Record<string, number> = { clusters: CLUSTERS, endpointsPerCluster: ENDPOINTS_PER_CLUSTER };
  for (const protocol of protocols) {
    if (protocol !== 'sotw' && protocol !== 'delta') throw new Error(`--protocol: sotw or delta, not ${protocol}`);
    for (const clients of counts) {
      const result = await measure(clients, protocol);
      const prefix = protocol === 'sotw' ? `c${clients}` : `delta_c${clients}`;
      for (const [key, value] of Object.entries(result)) if (key !== 'clients') out[`${prefix}_${key}`] = value;
    }
  }
  return out;
}

// ---- the simulated clients (child process) ------------------------------------------------

function readHeader(bytes: Buffer): { version: string; typeUrl: string; nonce: string } {
  const reader = new BinaryReader(bytes);
  let version = '';
  let typeUrl = '';
  let nonce = '';
  while (reader.pos < reader.len) {
    const [field, wire] = reader.tag();
    if (field === 1 && wire === WireType.LengthDelimited) version = reader.string();
    else if (field === 4 && wire === WireType.LengthDelimited) typeUrl = reader.string();
    else if (field === 5 && wire === WireType.LengthDelimited) nonce = reader.string();
    else reader.skip(wire, field);
  }
  return { version, typeUrl, nonce };
}

async function clientsProcess(port: number, count: number, protocol: string): Promise<void> {
  const delta = protocol === 'delta';
  const method = AggregatedDiscoveryService.methods.find((m) => m.localName === (delta ? 'deltaAggregatedResources' : 'streamAggregatedResources'));
  if (!method) throw new Error('no ADS method');
  const path = methodPath(method);
  const serialize = (value: Uint8Array) => Buffer.from(value);
  const deserialize = (value: Buffer) => value;
  const edsNames = Array.from({ length: CLUSTERS }, (_, i) => `svc-${i}`);
  const namesFor: Record<string, string[]> = { [TypeUrl.cluster]: [], [TypeUrl.listener]: [], [TypeUrl.endpoint]: edsNames, [TypeUrl.route]: ['routes'] };
  // Requests are assembled from pre-encoded parts (names, type URL) plus version and nonce, so the
  // simulated clients spend little CPU of their own (a C++ Envoy would not be the bottleneck).
  const fixedParts = new Map<string, Uint8Array>();
  for (const [typeUrl, names] of Object.entries(namesFor)) {
    fixedParts.set(typeUrl, toBinary(DiscoveryRequestSchema, create(DiscoveryRequestSchema, { typeUrl, resourceNames: names })));
  }
  const ackBytes = (typeUrl: string, version: string, nonce: string): Uint8Array => {
    const writer = new BinaryWriter();
    writer.raw(fixedParts.get(typeUrl) ?? new Uint8Array());
    writer.tag(1, WireType.LengthDelimited).string(version);
    writer.tag(5, WireType.LengthDelimited).string(nonce);
    return writer.finish();
  };
  const channels: Client[] = [];
  let synced = 0;
  for (let i = 0; i < count; i += 1) {
    if (i % STREAMS_PER_CONNECTION === 0) {
      // Distinct options keep grpc-js from sharing one connection among all channels.
      channels.push(new Client(`127.0.0.1:${port}`, credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1, 'grpc.max_receive_message_length': 64 * 2 ** 20 }));
    }
    const channel = channels[channels.length - 1]!;
    const call = channel.makeBidiStreamRequest(path, serialize, deserialize) as ClientDuplexStream<Uint8Array, Buffer>;
    const seen = new Set<string>();
    const node = { id: `envoy-${i}`, cluster: 'bench', userAgentName: 'envoy' };
    call.on('data', (bytes: Buffer) => {
      const { version, typeUrl, nonce } = readHeader(bytes);
      call.write(delta ? toBinary(DeltaDiscoveryRequestSchema, create(DeltaDiscoveryRequestSchema, { typeUrl, responseNonce: nonce })) : ackBytes(typeUrl, version, nonce));
      if (!seen.has(typeUrl)) {
        seen.add(typeUrl);
        if (seen.size === 4) {
          synced += 1;
          if (synced === count || synced % 100 === 0) process.send?.({ synced });
        }
      }
    });
    call.on('error', () => undefined);
    for (const typeUrl of [TypeUrl.cluster, TypeUrl.endpoint, TypeUrl.listener, TypeUrl.route]) {
      const first = typeUrl === TypeUrl.cluster ? node : undefined;
      call.write(
        delta
          ? toBinary(DeltaDiscoveryRequestSchema, create(DeltaDiscoveryRequestSchema, { node: first, typeUrl, resourceNamesSubscribe: namesFor[typeUrl] ?? [] }))
          : toBinary(DiscoveryRequestSchema, create(DiscoveryRequestSchema, { node: first, typeUrl, resourceNames: namesFor[typeUrl] ?? [] })),
      );
    }
  }
  process.on('SIGTERM', () => {
    for (const channel of channels) channel.close();
    process.exit(0);
  });
}

const entry = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (entry && process.argv[2] === '--clients-process') {
  await clientsProcess(Number(process.argv[3]), Number(process.argv[4]), process.argv[5] ?? 'sotw');
} else if (entry) {
  const results = await run(process.argv.slice(2));
  process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
}
