/**
 * `agentListen`: agents get a TLS port of their own and the client port stops asking clients for a
 * certificate. Whether a server sent a CertificateRequest is read from the real `openssl s_client`
 * (Debian package `openssl`), which prints the requested signature algorithms only then.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import * as tls from 'node:tls';
import { failOnLeaks } from '../helpers/leaks.js';
import { h1Request, splitHostPort } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

const haveOpenssl = spawnSync('openssl', ['version']).status === 0;
if (!haveOpenssl && process.env.CI !== undefined) throw new Error('openssl is required in CI (Debian package "openssl")');
if (!haveOpenssl) console.warn('skipping the CertificateRequest checks: install the Debian package "openssl"');
const opensslTest = haveOpenssl ? test.serial : test.serial.skip;

let upstream: Upstream;
let apart: TunnelEnv;
let shared: TunnelEnv;

test.before(async () => {
  upstream = await startHttp1Upstream((req, res) => {
    req.resume();
    res.end(`ok ${String(req.headers['tether-cluster'])}`);
  });
  const agents = [{ clusterId: 'c1', routes: [{ prefix: '/', upstream: upstream.url }] }];
  apart = await startTunnelEnv({ clusters: ['c1'], gateway: { agentListen: { host: '127.0.0.1', port: 0 } }, agents });
  shared = await startTunnelEnv({ clusters: ['c1'], agents });
});

test.after.always(async () => {
  await apart?.close();
  await shared?.close();
  await upstream?.close();
});

/** Whether the server at `address` asks for a client certificate when offered `alpn`. */
async function asksForCertificate(address: string, alpn: string): Promise<boolean> {
  const child = spawn('openssl', ['s_client', '-connect', address, '-alpn', alpn, '-servername', 'localhost'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (out += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  if (!out.includes('SSL handshake has read')) throw new Error(`openssl s_client did not finish a handshake (exit ${String(code)}):\n${out}`);
  return /Requested Signature Algorithms/.test(out);
}

/** The error a TLS handshake offering `alpn` ends in, or null when it succeeds. */
function handshakeError(address: string, alpn: string, ca: string): Promise<string | null> {
  const [host, port] = splitHostPort(address);
  return new Promise((resolve) => {
    const socket = tls.connect({ host, port, servername: 'localhost', ca, ALPNProtocols: [alpn] });
    socket.once('secureConnect', () => {
      socket.destroy();
      resolve(null);
    });
    socket.once('error', (error: Error & { code?: string }) => {
      socket.destroy();
      resolve(error.code ?? error.message);
    });
  });
}

test.serial('with agentListen, agents dial their own port and client requests go through the tunnel', async (t) => {
  const gateway = apart.gateway;
  t.not(gateway.agentAddress, gateway.address);
  t.deepEqual(apart.agents[0]?.config.gateways, [gateway.agentAddress]);
  const reply = await h1Request(gateway.address, apart.pki.trustBundlePem, { cluster: 'c1', token: await apart.token(['c1']) });
  t.is(reply.status, 200);
  t.is(reply.body.toString(), 'ok c1');
  t.is(gateway.replicas()[0]?.address, gateway.agentAddress, 'agents are told the agent port');
});

test.serial('with agentListen, the client port refuses the tunnel ALPN and the agent port refuses client ALPNs', async (t) => {
  const ca = apart.pki.trustBundlePem;
  t.is(await handshakeError(apart.gateway.address, 'tether-tunnel/1', ca), 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL');
  t.is(await handshakeError(apart.gateway.agentAddress, 'h2', ca), 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL');
  t.is(await handshakeError(apart.gateway.address, 'h2', ca), null);
});

opensslTest('with agentListen, clients are not asked for a certificate; agents are; one shared port asks everyone', async (t) => {
  t.false(await asksForCertificate(apart.gateway.address, 'http/1.1'), 'client port, agents apart');
  t.true(await asksForCertificate(apart.gateway.agentAddress, 'tether-tunnel/1'), 'agent port');
  t.true(await asksForCertificate(shared.gateway.address, 'http/1.1'), 'one shared port (the default)');
});
