/**
 * CertificateSource: in-memory keys, renewal at half the remaining lifetime with jitter, retry
 * after a failed renewal, and a live TLS server whose context is swapped on renewal without
 * dropping the connection it is serving.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import test from 'ava';
import { CertificateSource, generateCsr, normalizeSerial, type CertificateMaterial } from '../../certs/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';

failOnLeaks(test);

/** Resolves with the first material a subscriber of `source` receives that satisfies `predicate`. */
function nextMaterial(source: CertificateSource, predicate: (m: CertificateMaterial) => boolean): Promise<CertificateMaterial> {
  return new Promise((resolve) => {
    const unsubscribe = source.subscribe((m) => {
      if (!predicate(m)) return;
      unsubscribe();
      resolve(m);
    });
  });
}

/**
 * Wait for `promise`, failing after `ms`. The source's timers are unref'd (they must not keep a
 * process alive), so while a test waits for a renewal this ref'd deadline keeps the loop running.
 */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

function readLine(socket: tls.TLSSocket): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffer = '';
    const onData = (chunk: Buffer): void => {
      buffer += chunk.toString('utf8');
      const newline = buffer.indexOf('\n');
      if (newline >= 0) {
        cleanup();
        resolve(buffer.slice(0, newline));
      }
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error('connection closed'));
    };
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onClose);
    };
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.on('error', onClose);
  });
}

test('a short-lived certificate renews before expiry and a live TLS server keeps serving across the swap', async (t) => {
  const pki = await createTestPki();
  let issued = 0;
  const source = new CertificateSource({
    issue: async (csrPem) => {
      issued++;
      return pki.ca.signCsr(csrPem, { kind: 'server', ipAddresses: ['127.0.0.1'] }, { ttlMs: 2000 });
    },
  });
  t.teardown(() => source.close());
  await source.start();
  const first = source.current();
  t.is(issued, 1);
  t.regex(first.keyPem, /BEGIN PRIVATE KEY/);
  const remaining = first.notAfter.getTime() - first.obtainedAt.getTime();
  const plannedDelay = (source.nextRenewalAt?.getTime() ?? 0) - first.obtainedAt.getTime();
  t.true(plannedDelay >= remaining * 0.45 - 5 && plannedDelay <= remaining * 0.55 + 5, `renewal planned at ${plannedDelay} ms of ${remaining} ms`);

  const sockets = new Set<tls.TLSSocket>();
  const server = tls.createServer(source.secureContextOptions(), (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.pipe(socket); // echo
  });
  const unbind = source.bindServer(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  t.teardown(async () => {
    unbind();
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const connect = async (): Promise<tls.TLSSocket> => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca: pki.trustBundlePem });
    t.teardown(() => socket.destroy());
    await once(socket, 'secureConnect');
    return socket;
  };

  const live = await connect();
  t.is(normalizeSerial(live.getPeerX509Certificate()?.serialNumber ?? ''), first.serialNumber);
  live.write('before\n');
  t.is(await readLine(live), 'before');

  const renewed = await within(nextMaterial(source, (m) => m.serialNumber !== first.serialNumber), 10_000, 'the renewal');
  const renewedAt = Date.now();
  t.true(renewedAt < first.notAfter.getTime(), 'renewed before the first certificate expired');
  t.true(renewedAt - first.obtainedAt.getTime() >= remaining * 0.45 - 50, 'not renewed much before half-life');
  t.not(renewed.keyPem, first.keyPem, 'a fresh key pair per renewal');
  t.is(issued, 2);

  // The connection made under the old certificate is still up and serving.
  live.write('after renewal\n');
  t.is(await readLine(live), 'after renewal');

  // A new connection sees the new certificate.
  const fresh = await connect();
  const freshSerial = normalizeSerial(fresh.getPeerX509Certificate()?.serialNumber ?? '');
  t.not(freshSerial, first.serialNumber);
  t.is(freshSerial, source.current().serialNumber);
  fresh.write('new\n');
  t.is(await readLine(fresh), 'new');
  live.end();
  fresh.end();
});

test('a failed renewal keeps the current certificate, reports the error and retries with backoff', async (t) => {
  const pki = await createTestPki();
  let calls = 0;
  const source = new CertificateSource({
    issue: async (csrPem) => {
      calls++;
      if (calls === 2) throw new Error('control plane unavailable');
      return pki.ca.signCsr(csrPem, { kind: 'workload', clusterId: 'c1', agentId: 'a1' }, { ttlMs: 1500 });
    },
    retry: { initialDelayMs: 20, maxDelayMs: 100 },
  });
  t.teardown(() => source.close());
  const failed = new Promise<string>((resolve) => source.onError((error) => resolve(error.code)));
  await source.start();
  const first = source.current();
  t.is(first.spiffeId, 'spiffe://tether.test/cluster/c1/agent/a1');
  t.is(await within(failed, 10_000, 'the renewal failure'), 'CERT_ISSUE_FAILED');
  t.is(source.current().serialNumber, first.serialNumber, 'still serving the old certificate');
  const renewed = await within(nextMaterial(source, (m) => m.serialNumber !== first.serialNumber), 10_000, 'the retried renewal');
  t.is(calls, 3);
  t.is(renewed.spiffeId, first.spiffeId);
});

test('jitter keeps the renewal within ±10 % of half the remaining lifetime', async (t) => {
  const pki = await createTestPki();
  for (const [random, factor] of [
    [() => 0, 0.45],
    [() => 0.5, 0.5],
    [() => 0.999_999, 0.55],
  ] as const) {
    const source = new CertificateSource({ issue: (csr) => pki.ca.signCsr(csr, { kind: 'workload', clusterId: 'c', agentId: 'a' }, { ttlMs: 3_600_000 }), random });
    t.teardown(() => source.close());
    await source.start();
    const m = source.current();
    const delay = (source.nextRenewalAt?.getTime() ?? 0) - m.obtainedAt.getTime();
    const expected = (m.notAfter.getTime() - m.obtainedAt.getTime()) * factor;
    t.true(Math.abs(delay - expected) <= 1, `${delay} vs ${expected}`);
    await source.close();
    t.is(source.nextRenewalAt, undefined);
  }
});

test('the issued chain must be for the in-memory key; late subscribers get the current value asynchronously', async (t) => {
  const pki = await createTestPki();
  const stranger = await generateCsr();
  const wrongKey = new CertificateSource({ issue: () => pki.ca.signCsr(stranger.csrPem, { kind: 'workload', clusterId: 'c', agentId: 'a' }) });
  t.teardown(() => wrongKey.close());
  t.is((await t.throwsAsync(wrongKey.start()))?.message.startsWith('[CERT_KEY_MISMATCH]'), true);
  t.is(t.throws(() => wrongKey.current())?.message.startsWith('[CERT_NOT_READY]'), true);

  const source = new CertificateSource({ issue: (csr) => pki.ca.signCsr(csr, { kind: 'workload', clusterId: 'c', agentId: 'a' }) });
  t.teardown(() => source.close());
  await source.start();
  let delivered: CertificateMaterial | undefined;
  const got = new Promise<CertificateMaterial>((resolve) => {
    source.subscribe((m) => {
      delivered = m;
      resolve(m);
    });
  });
  t.is(delivered, undefined, 'not called synchronously');
  t.is((await got).serialNumber, source.current().serialNumber);
  // an unsubscribed listener never hears
  let heard = false;
  const unsubscribe = source.subscribe(() => {
    heard = true;
  });
  unsubscribe();
  await Promise.resolve();
  await Promise.resolve();
  t.false(heard);
});
