import test from 'ava';
import * as https from 'node:https';
import { once } from 'node:events';
import * as tls from 'node:tls';
import type { Agent, AgentEvent } from '../../agent/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { closeH2, connectH2, h1Request, h2Request, splitHostPort } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

let env: TunnelEnv;
let upstream: Upstream;
let releaseHold: () => void = () => undefined;
const held = new Promise<void>((resolve) => {
  releaseHold = resolve;
});

test.before(async () => {
  upstream = await startHttp1Upstream((req, res) => {
    if (req.url === '/hold') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('start;');
      void held.then(() => res.end('end'));
      return;
    }
    req.resume();
    res.end(`ok ${String(req.headers['tether-cluster'])}`);
  });
  env = await startTunnelEnv({ clusters: ['c1', 'c2'], agents: [{ clusterId: 'c1', routes: [{ prefix: '/', upstream: upstream.url }] }] });
});

test.after.always(async () => {
  releaseHold();
  await env?.close();
  await upstream?.close();
});

/** Start an agent with `cert` and resolve with the first refusal code it reports. */
async function refusalOf(agentPromise: Promise<Agent>): Promise<string | undefined> {
  const agent = await agentPromise;
  const [event] = (await once(agent.events, 'refused')) as [AgentEvent];
  await agent.close();
  return event.code;
}

test.serial('an agent of cluster c1 serves c1 only: requests for c2 find no tunnel', async (t) => {
  const c1 = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token: await env.token(['c1', 'c2']) });
  t.is(c1.body.toString(), 'ok c1');
  const c2 = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c2', token: await env.token(['c1', 'c2']) });
  t.is(c2.status, 503);
  t.is(c2.headers['tether-error'], 'NO_TUNNEL');
});

test.serial('refused agent certificates: unregistered cluster, expired, untrusted, wrong trust domain, revoked', async (t) => {
  const pki = env.pki;
  t.is(await refusalOf(env.startAgent({ clusterId: 'c9', agentId: 'x' })), 'CLUSTER_NOT_REGISTERED');
  t.is(await refusalOf(env.startAgent({ cert: await pki.expiredAgentCert({ clusterId: 'c2' }) })), 'CERT_EXPIRED');
  t.is(await refusalOf(env.startAgent({ cert: await pki.untrustedAgentCert({ clusterId: 'c2' }) })), 'CERT_UNTRUSTED');
  t.is(await refusalOf(env.startAgent({ cert: await pki.wrongTrustDomainAgentCert({ clusterId: 'c2' }) })), 'CERT_IDENTITY_MISMATCH');
  const revoked = await pki.agentCert({ clusterId: 'c2', agentId: 'revoked' });
  const gateway = await env.startGateway({ revokedSerials: [revoked.serialNumber] });
  const agent = await env.startAgent({ cert: revoked, gateways: [gateway.address] });
  const [event] = (await once(agent.events, 'refused')) as [AgentEvent];
  await agent.close();
  t.is(event.code, 'CERT_REVOKED');
  t.is(gateway.tunnels.count(), 0);
  const metrics = await env.gateway.registry.getSingleMetricAsString('tether_gateway_tunnel_handshakes_total');
  t.regex(metrics, /result="refused",reason="CERT_EXPIRED"/);
  // None of them ever served c2.
  const c2 = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c2', token: await env.token(['c2']) });
  t.is(c2.status, 503);
});

test.serial('the agent refuses a gateway whose certificate it does not trust, with the certificate code', async (t) => {
  const bad = await env.pki.untrustedGatewayCert();
  const gateway = await env.startGateway({ tls: { key: bad.key, cert: bad.cert, ca: env.pki.trustBundlePem } });
  const agent = await env.startAgent({ clusterId: 'c2', agentId: 'picky', gateways: [gateway.address] });
  const [event] = (await once(agent.events, 'failed')) as [AgentEvent];
  await agent.close();
  t.is(event.code, 'CERT_UNTRUSTED');
  t.is(gateway.tunnels.count(), 0);
});

test.serial('revoking a live agent certificate disconnects its tunnels, and it cannot come back', async (t) => {
  const cert = await env.pki.agentCert({ clusterId: 'c2', agentId: 'soon-revoked' });
  const gateway = await env.startGateway();
  const agent = await env.startAgent({ cert, gateways: [gateway.address] });
  await agent.waitForConnections(2);
  t.is(gateway.tunnels.count('c2'), 2);
  const refused = once(agent.events, 'refused');
  gateway.setRevokedSerials([cert.serialNumber]);
  t.is(gateway.tunnels.count('c2'), 0);
  const [event] = (await refused) as [AgentEvent];
  t.is(event.code, 'CERT_REVOKED');
  await agent.close();
});

test.serial('bad client input gets its error and leaves the tunnel and other streams untouched', async (t) => {
  const token = await env.token(['c1']);
  const tunnelIds = env.gateway.tunnels.all().map((x) => x.id).sort();
  t.is(tunnelIds.length, 2);

  // A long response in flight on the tunnel while the bad input arrives.
  const [host, port] = splitHostPort(env.gateway.address);
  const holdChunks: string[] = [];
  const holdDone = new Promise<number>((resolve, reject) => {
    const req = https.request({ host, port, servername: 'localhost', ca: env.pki.trustBundlePem, path: '/hold', headers: { host: 'c1.tether.localhost', authorization: `Bearer ${token}` }, agent: false }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (c: string) => holdChunks.push(c));
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
  await waitFor(() => holdChunks.length > 0);

  // 1. Oversize headers, HTTP/1.1 and HTTP/2.
  const big = 'x'.repeat(40 * 1024);
  const h1Big = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, headers: { 'x-big': big } });
  t.is(h1Big.status, 431);
  t.is(h1Big.headers['tether-error'], 'HEADERS_TOO_LARGE');
  const session = await connectH2(env.gateway.url, env.pki.trustBundlePem);
  const h2Big = await h2Request(session, { cluster: 'c1', token, headers: { 'x-big': big } });
  t.is(h2Big.status, 431);
  t.is(h2Big.headers['tether-error'], 'HEADERS_TOO_LARGE');
  await closeH2(session);

  // 2. Conflicting Content-Length and Transfer-Encoding (request smuggling shape).
  const smuggle = await rawTls('h1', `POST / HTTP/1.1\r\nHost: c1.tether.localhost\r\nAuthorization: Bearer ${token}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: c1.tether.localhost\r\n\r\n`);
  t.regex(smuggle, /^HTTP\/1\.1 400 /);
  t.regex(smuggle, /tether-error: BAD_REQUEST/);
  t.false(smuggle.includes('ok c1'));

  // 3. An HTTP/2 connection error (DATA on stream 0): the client gets GOAWAY PROTOCOL_ERROR.
  const preface = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
  const settings = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);
  const badData = Buffer.from([0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
  const reply = await rawTls('h2', Buffer.concat([preface, settings, badData]), (bytes) => hasGoaway(bytes, 1));
  t.true(hasGoaway(Buffer.from(reply, 'latin1'), 1), 'GOAWAY with PROTOCOL_ERROR');

  // The tunnel is the same and the held stream completes.
  releaseHold();
  t.is(await holdDone, 200);
  t.is(holdChunks.join(''), 'start;end');
  t.deepEqual(env.gateway.tunnels.all().map((x) => x.id).sort(), tunnelIds);
  const after = await h1Request(env.gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token });
  t.is(after.status, 200);
});

test.serial('request body over the configured limit gets 413 (declared and streamed)', async (t) => {
  const gateway = await env.startGateway({ limits: { maxRequestBodyBytes: 1000 } });
  const agent = await env.startAgent({ clusterId: 'c1', agentId: 'a-limit', gateways: [gateway.address], routes: [{ prefix: '/', upstream: upstream.url }] });
  await agent.waitForConnections(2);
  const token = await env.token(['c1']);
  const declared = await h1Request(gateway.address, env.pki.trustBundlePem, { cluster: 'c1', token, method: 'POST', body: Buffer.alloc(2000) });
  t.is(declared.status, 413);
  t.is(declared.headers['tether-error'], 'BODY_TOO_LARGE');
  const session = await connectH2(gateway.url, env.pki.trustBundlePem);
  const streamed = await h2Request(session, { cluster: 'c1', token, method: 'POST', body: Buffer.alloc(5000) });
  t.is(streamed.status, 413, `status ${streamed.status}`);
  const small = await h2Request(session, { cluster: 'c1', token, method: 'POST', body: Buffer.alloc(500) });
  t.is(small.status, 200);
  await closeH2(session);
  await agent.close();
});


async function waitFor(predicate: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Send raw bytes on a TLS connection with the given ALPN; resolve with everything read until close. */
function rawTls(alpn: 'h1' | 'h2', payload: string | Buffer, done?: (bytes: Buffer) => boolean): Promise<string> {
  const [host, port] = splitHostPort(env.gateway.address);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host, port, servername: 'localhost', ca: env.pki.trustBundlePem, ALPNProtocols: [alpn === 'h2' ? 'h2' : 'http/1.1'] });
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      if (done?.(Buffer.concat(chunks)) === true) socket.destroy();
    });
    socket.once('secureConnect', () => socket.write(payload));
    socket.once('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.once('error', (e) => (chunks.length > 0 ? undefined : reject(e)));
    socket.setTimeout(5000, () => socket.destroy());
  });
}

/** Whether `bytes` (a server's HTTP/2 frames) contain a GOAWAY with `errorCode`. */
function hasGoaway(bytes: Buffer, errorCode: number): boolean {
  let offset = 0;
  while (offset + 9 <= bytes.length) {
    const length = bytes.readUIntBE(offset, 3);
    const type = bytes[offset + 3];
    if (type === 7 && offset + 9 + 8 <= bytes.length && bytes.readUInt32BE(offset + 9 + 4) === errorCode) return true;
    offset += 9 + length;
  }
  return false;
}
