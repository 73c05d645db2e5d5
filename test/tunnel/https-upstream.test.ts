import test from 'ava';
import * as http2 from 'node:http2';
import * as https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Server } from 'node:net';
import { failOnLeaks } from '../helpers/leaks.js';
import { h1Request } from '../helpers/tunnel-clients.js';
import { TEST_BINDING, startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';

failOnLeaks(test);

let env: TunnelEnv;
const servers: Array<{ server: Server; sockets: Set<Socket> }> = [];

async function listen(server: Server): Promise<number> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  servers.push({ server, sockets });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

test.before(async () => {
  env = await startTunnelEnv();
  const cert = await env.pki.gatewayCert();
  const h2 = http2.createSecureServer({ key: cert.key, cert: cert.cert, allowHTTP1: true }, (req, res) => {
    req.resume();
    res.end(`h2-server saw HTTP/${req.httpVersion}`);
  });
  const h1 = https.createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
    req.resume();
    res.end(`h1-server saw HTTP/${req.httpVersion}`);
  });
  const h2Port = await listen(h2);
  const h1Port = await listen(h1);
  const agent = await env.startAgent({
    clusterId: 'c1',
    upstreamCa: env.pki.trustBundlePem,
    routes: [
      { prefix: '/h2', upstream: `https://127.0.0.1:${h2Port}` },
      { prefix: '/h1', upstream: `https://127.0.0.1:${h1Port}` },
    ],
  });
  await agent.waitForConnections(2);
});

test.after.always(async () => {
  await env?.close();
  for (const { server, sockets } of servers) {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

test('https:// upstreams: ALPN picks HTTP/2 or HTTP/1.1 (http2-wrapper), verified against upstreamCa', async (t) => {
  const token = await env.token(['c1']);
  const viaH2 = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path: '/h2/x' });
  t.is(viaH2.status, 200, viaH2.body.toString());
  // Per request, the agent's http2-wrapper client lets ALPN pick HTTP/2. A bound connection relays
  // the client's own HTTP/1.1 bytes, so the agent offers only http/1.1 (h2-only upstreams refuse
  // that handshake, and the connection then goes per request).
  t.is(viaH2.body.toString(), TEST_BINDING === 'connection' ? 'h2-server saw HTTP/1.1' : 'h2-server saw HTTP/2.0');
  const viaH1 = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, path: '/h1/x' });
  t.is(viaH1.status, 200);
  t.is(viaH1.body.toString(), 'h1-server saw HTTP/1.1');
});
