/**
 * Real mutual TLS between Node `tls` endpoints on 127.0.0.1: OpenSSL verifies the chains against
 * our trust bundle, `checkTlsPeer` maps the result and adds the SPIFFE identity and revocation
 * checks; `verifyCertificateChain` must reach the same verdict on the same chain.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { checkTlsPeer, parseOneCertificate, tlsVerifyError, verifyCertificateChain } from '../../certs/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki, type TestPki, type TlsMaterial } from '../helpers/pki.js';

failOnLeaks(test);

interface ServerHandle {
  port: number;
  close(): Promise<void>;
}

/** A gateway-like server that requires client certificates and replies with its verdict. */
async function startServer(t: ExecutionContext, pki: TestPki, opts: { revokedSerials?: Set<string>; material?: TlsMaterial } = {}): Promise<ServerHandle> {
  const material = opts.material ?? (await pki.gatewayCert());
  const sockets = new Set<tls.TLSSocket>();
  const server = tls.createServer({ key: material.key, cert: material.cert, ca: pki.trustBundlePem, requestCert: true, rejectUnauthorized: false }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    const verdict = checkTlsPeer(socket, { expectedTrustDomain: pki.trustDomain, requireSpiffe: true, usage: 'client', revokedSerials: opts.revokedSerials });
    socket.end(verdict.ok ? `hello ${verdict.peer.spiffeId}\n` : `refused ${verdict.error.code}\n`);
  });
  server.on('tlsClientError', () => {});
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const handle: ServerHandle = {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  t.teardown(() => handle.close());
  return handle;
}

/** Connect with `client` material; resolve with the server's reply and the client's view of the server. */
function connect(port: number, client: TlsMaterial | undefined, ca: string): Promise<{ reply: string; serverPeer: ReturnType<typeof checkTlsPeer> }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, ...(client === undefined ? {} : { key: client.key, cert: client.cert }) });
    let reply = '';
    let serverPeer: ReturnType<typeof checkTlsPeer> | undefined;
    socket.setEncoding('utf8');
    socket.on('secureConnect', () => {
      serverPeer = checkTlsPeer(socket, { usage: 'server' });
    });
    socket.on('data', (chunk: string) => {
      reply += chunk;
    });
    socket.on('end', () => {
      socket.destroy();
      if (serverPeer === undefined) reject(new Error('no handshake'));
      else resolve({ reply: reply.trim(), serverPeer });
    });
    socket.on('error', (error) => {
      socket.destroy();
      reject(error);
    });
  });
}

async function chainVerdict(pki: TestPki, chainPem: string, revokedSerials?: Set<string>): Promise<string> {
  try {
    const peer = await verifyCertificateChain(chainPem, { trustBundlePem: pki.trustBundlePem, expectedTrustDomain: pki.trustDomain, requireSpiffe: true, usage: 'client', revokedSerials });
    return `hello ${peer.spiffeId}`;
  } catch (reason) {
    return `refused ${(reason as { code?: string }).code}`;
  }
}

test('mutual TLS with issued certificates succeeds and both sides learn the peer identity', async (t) => {
  const pki = await createTestPki();
  const server = await startServer(t, pki);
  const agent = await pki.agentCert({ clusterId: 'prod', agentId: 'agent-1' });
  const { reply, serverPeer } = await connect(server.port, agent, pki.trustBundlePem);
  t.is(reply, 'hello spiffe://tether.test/cluster/prod/agent/agent-1');
  t.true(serverPeer.ok);
  if (serverPeer.ok) {
    t.deepEqual(serverPeer.peer.ipAddresses.sort(), ['127.0.0.1', '::1'].sort());
    t.is(serverPeer.peer.spiffeId, undefined);
  }
  t.is(await chainVerdict(pki, agent.cert), reply);
});

test('the server refuses expired, not-yet-valid, untrusted, revoked and wrong-identity client certificates with specific codes', async (t) => {
  const pki = await createTestPki();
  const revokedAgent = await pki.agentCert({ agentId: 'revoked' });
  const revokedSerials = new Set([revokedAgent.serialNumber]);
  const server = await startServer(t, pki, { revokedSerials });
  const cases: Array<[string, TlsMaterial, string]> = [
    ['expired', await pki.expiredAgentCert(), 'CERT_EXPIRED'],
    ['not yet valid', await pki.notYetValidAgentCert(), 'CERT_NOT_YET_VALID'],
    ['untrusted CA', await pki.untrustedAgentCert(), 'CERT_UNTRUSTED'],
    ['revoked', revokedAgent, 'CERT_REVOKED'],
    ['wrong trust domain', await pki.wrongTrustDomainAgentCert(), 'CERT_IDENTITY_MISMATCH'],
    ['server certificate as client (no SPIFFE ID)', await pki.gatewayCert(), 'CERT_IDENTITY_MISMATCH'],
  ];
  for (const [name, material, code] of cases) {
    const { reply } = await connect(server.port, material, pki.trustBundlePem);
    t.is(reply, `refused ${code}`, name);
    t.is(await chainVerdict(pki, material.cert, revokedSerials), reply, `verifyCertificateChain agrees (${name})`);
  }
  const { reply } = await connect(server.port, undefined, pki.trustBundlePem);
  t.is(reply, 'refused CERT_MISSING');
});

test('revoking the intermediate refuses every certificate it issued, through the peer chain OpenSSL verified', async (t) => {
  const pki = await createTestPki();
  const intermediateSerial = parseOneCertificate(pki.ca.intermediateCertificatePem).serialNumber;
  const server = await startServer(t, pki, { revokedSerials: new Set([intermediateSerial]) });
  const { reply } = await connect(server.port, await pki.agentCert(), pki.trustBundlePem);
  t.is(reply, 'refused CERT_REVOKED');
});

test('a client refuses an expired or untrusted server certificate during the handshake', async (t) => {
  const pki = await createTestPki();
  const agent = await pki.agentCert();
  for (const [material, code] of [
    [await pki.expiredGatewayCert(), 'CERT_EXPIRED'],
    [await pki.untrustedGatewayCert(), 'CERT_UNTRUSTED'],
  ] as const) {
    const server = await startServer(t, pki, { material });
    const error = await t.throwsAsync(connect(server.port, agent, pki.trustBundlePem));
    t.is(tlsVerifyError(error)?.code, code);
    await server.close();
  }
  // a certificate for another host name is an identity mismatch
  const server = await startServer(t, pki, { material: await pki.gatewayCert({ dnsNames: ['gw.example.com'], ipAddresses: ['10.9.9.9'] }) });
  const error = await t.throwsAsync(connect(server.port, agent, pki.trustBundlePem));
  t.is(tlsVerifyError(error)?.code, 'CERT_IDENTITY_MISMATCH');
  t.is(tlsVerifyError(new Error('ECONNRESET')), null);
});
