/** `tether xds --config F`: the file format, reload on change, and refusal of bad edits. */
import test from 'ava';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { failOnLeaks } from '../helpers/leaks.js';
import { AdsTestClient, envoyNode, grpcNode, namesOf, sotwRequest, decodeAny } from '../helpers/ads-client.js';
import { ConfigFileSource, parseXdsConfig } from '../../xds/config-file.js';
import { XdsServer } from '../../xds/server.js';
import { TypeUrl } from '../../xds/resource-types.js';
import { silentLogger } from '../../common/log.js';
import { isTetherError } from '../../common/errors.js';
import type { TetherError } from '../../common/errors.js';
import type { ClusterLoadAssignment } from '../../xds/gen/envoy/config/endpoint/v3/endpoint_pb.js';
import { SotwProber, ack } from './fixtures.js';
import { TYPESCRIPT_LOADER } from '../helpers/typescript-loader.js';

failOnLeaks(test);

function firstPort(cla: ClusterLoadAssignment): number | undefined {
  const host = cla.endpoints[0]?.lbEndpoints[0]?.hostIdentifier;
  if (host?.case !== 'endpoint') return undefined;
  const address = host.value.address?.address;
  if (address?.case !== 'socketAddress') return undefined;
  return address.value.portSpecifier.case === 'portValue' ? address.value.portSpecifier.value : undefined;
}

const GOOD = `
services:
  - name: web
    endpoints: [{ address: 127.0.0.1, port: 8081 }]
  - name: web-canary
    endpoints: [{ address: 127.0.0.1, port: 8082 }]
routes:
  - name: main
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - prefix: /
            weighted: [{ cluster: web, weight: 90 }, { cluster: web-canary, weight: 10 }]
listeners:
  - { name: ingress, address: 127.0.0.1, port: 10000, routes: main }
  - { name: "web.internal:80", routes: main }
`;

test('the file format: services, routes with weights, Envoy and gRPC listeners; field errors are named', (t) => {
  const config = parseXdsConfig(GOOD, 'f.yaml');
  t.is(config.services.length, 2);
  t.is(config.listeners[1]?.address, undefined);
  const typo = t.throws(() => parseXdsConfig(GOOD.replace('endpoints: [{ address: 127.0.0.1, port: 8081 }]', 'endpoint: [{ address: 127.0.0.1, port: 8081 }]'), 'f.yaml'));
  t.true(isTetherError(typo, 'XDS_CONFIG_INVALID'));
  t.regex(typo?.message ?? '', /f\.yaml: .*config\.services\[0\]/);
  const both = t.throws(() => parseXdsConfig(GOOD.replace('weighted: [', 'cluster: web\n            weighted: ['), 'f.yaml'));
  t.regex(both?.message ?? '', /config\.routes\[0\]\.virtualHosts\[0\]\.routes\[0\]: give exactly one of cluster or weighted/);
  const port = t.throws(() => parseXdsConfig(GOOD.replace('port: 8082', 'port: 70000'), 'f.yaml'));
  t.regex(port?.message ?? '', /config\.services\[1\]\.endpoints\[0\]\.port/);
  t.regex(t.throws(() => parseXdsConfig('services: [', 'f.yaml'))?.message ?? '', /not valid YAML/);
});

test('a served file reloads on change; a bad edit is refused with a clear message and the last good config keeps serving', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-xds-'));
  const file = join(dir, 'xds.yaml');
  await writeFile(file, GOOD);
  const server = new XdsServer({ validateFor: ['envoy', 'grpc'] });
  const source = new ConfigFileSource(file, server, silentLogger(), 10);
  await source.start();
  const { port } = await server.listen();
  const client = new AdsTestClient(`127.0.0.1:${port}`);
  t.teardown(async () => {
    client.close();
    await source.close();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  const envoy = client.sotw();
  envoy.send(sotwRequest({ node: envoyNode(), typeUrl: TypeUrl.endpoint, resourceNames: ['web', 'web-canary'] }));
  const eds = await envoy.next();
  t.deepEqual(namesOf(eds), ['web', 'web-canary']);
  ack(envoy, eds, ['web', 'web-canary']);
  const grpc = client.sotw();
  grpc.send(sotwRequest({ node: grpcNode(), typeUrl: TypeUrl.listener, resourceNames: ['web.internal:80'] }));
  t.deepEqual(namesOf(await grpc.next()), ['web.internal:80']);

  const good = server.snapshot();
  // A dangling cluster reference.
  let rejected = once(source, 'rejected') as Promise<[TetherError]>;
  await writeFile(file, GOOD.replace('cluster: web-canary', 'cluster: web-canry'));
  let [error] = await rejected;
  t.is(error.code, 'XDS_SNAPSHOT_INCONSISTENT');
  t.regex(error.message, /xds\.yaml: snapshot refused: dangling references: route "main" virtual_hosts\[0\]\.routes\[0\]\.route\.weighted_clusters\.clusters\[1\]\.name: cluster "web-canry" is not in the snapshot/);
  t.is(server.snapshot(), good);
  // Something a gRPC client would NACK (a host name instead of an IP address).
  rejected = once(source, 'rejected') as Promise<[TetherError]>;
  await writeFile(file, GOOD.replace('address: 127.0.0.1, port: 8082', 'address: canary.local, port: 8082'));
  [error] = await rejected;
  t.is(error.code, 'XDS_VALIDATION_FAILED');
  t.regex(error.message, /endpoint "web-canary" endpoints\[0\]\.lb_endpoints\[0\]\.endpoint\.address\.socket_address\.address: "canary\.local" is not an IP address literal/);
  t.is(server.snapshot(), good);
  await new SotwProber(envoy).expectNothingBefore(t, 'nothing was pushed for the refused edits');

  const loaded = once(source, 'loaded');
  await writeFile(file, GOOD.replace('port: 8082', 'port: 8083'));
  await loaded;
  const update = await envoy.next();
  t.deepEqual(namesOf(update), ['web-canary']);
  const cla = decodeAny<ClusterLoadAssignment>(update.resources[0]!);
  t.is(firstPort(cla), 8083);
});

test('tether xds --config F serves the file over gRPC and stops on SIGTERM', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-xds-cli-'));
  const file = join(dir, 'xds.yaml');
  await writeFile(file, GOOD);
  const script = `
    import { Command } from 'commander';
    import { registerXdsCommand } from ${JSON.stringify(new URL('../../cli/commands/xds.ts', import.meta.url).pathname)};
    const program = new Command('tether');
    registerXdsCommand(program);
    await program.parseAsync(['xds', '--config', ${JSON.stringify(file)}, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'], { from: 'user' });
  `;
  const child = spawn(process.execPath, ['--import', TYPESCRIPT_LOADER, '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TETHER_LOG_LEVEL: 'silent' } });
  t.teardown(async () => {
    if (child.exitCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
    await rm(dir, { recursive: true, force: true });
  });
  let out = '';
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes('\n')) resolve(out);
    });
    child.once('exit', (code) => reject(new Error(`exited ${code}`)));
  });
  const port = Number(/on 127\.0\.0\.1:(\d+);/.exec(line)?.[1]);
  t.true(port > 0, line);
  const client = new AdsTestClient(`127.0.0.1:${port}`);
  const stream = client.sotw();
  stream.send(sotwRequest({ node: envoyNode(), typeUrl: TypeUrl.cluster }));
  t.deepEqual(namesOf(await stream.next()), ['web', 'web-canary']);
  client.close();
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const [code] = await exited;
  t.is(code, 0);
});
