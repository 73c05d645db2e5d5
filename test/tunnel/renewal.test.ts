import test from 'ava';
import { CertificateSource } from '../../certs/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

let env: TunnelEnv;
let upstream: Upstream;
let release: () => void = () => undefined;

test.before(async () => {
  upstream = await startHttp1Upstream((req, res) => {
    req.resume();
    if (req.url === '/hold') {
      res.writeHead(200);
      res.write('a;');
      release = () => res.end('b');
      return;
    }
    res.end('ok');
  });
  env = await startTunnelEnv();
});

test.after.always(async () => {
  release();
  await env?.close();
  await upstream?.close();
});

test('agent certificate renewal: in-flight streams survive, new connections present the new certificate', async (t) => {
  const source = new CertificateSource({ issue: (csr) => env.pki.ca.signCsr(csr, { kind: 'workload', clusterId: 'c1', agentId: 'renewing' }, { ttlMs: 3_600_000 }) });
  await source.start();
  const first = source.current().serialNumber;
  const { keyPem, chainPem } = source.current();
  const agent = await env.startAgent({ clusterId: 'c1', cert: { key: keyPem, cert: chainPem }, routes: [{ prefix: '/', upstream: upstream.url }] });
  const unsubscribe = agent.useCertificateSource(source, env.pki.trustBundlePem);
  try {
    await agent.waitForConnections(2);
    t.deepEqual(env.gateway.tunnels.all().map((x) => x.serialNumber), [first, first]);
    const token = await env.token(['c1']);
    const held = h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path: '/hold' });
    while (env.gateway.tunnels.all().every((x) => x.activeStreams === 0)) await new Promise((resolve) => setTimeout(resolve, 5));
    const renewed = await source.renewNow();
    t.not(renewed.serialNumber, first);
    // Replace the idle connection; the one carrying the held stream stays.
    const idle = env.gateway.tunnels.all().find((x) => x.activeStreams === 0);
    idle?.session.destroy();
    const deadline = Date.now() + 5000;
    while (!env.gateway.tunnels.all().some((x) => x.serialNumber === renewed.serialNumber) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    t.deepEqual(env.gateway.tunnels.all().map((x) => x.serialNumber).sort(), [first, renewed.serialNumber].sort());
    release();
    const reply = await held;
    t.is(reply.body.toString(), 'a;b');
  } finally {
    unsubscribe();
    await agent.close();
    await source.close();
  }
});
