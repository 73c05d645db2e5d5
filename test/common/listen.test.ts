import test from 'ava';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { TetherError, getErrorCode } from '../../common/errors.js';
import { LISTEN_ADDRESS_UNAVAILABLE, PORT_IN_USE, PORT_NOT_PERMITTED, listenAs } from '../../common/listen.js';
import { failOnLeaks } from '../helpers/leaks.js';

failOnLeaks(test);

function listen(server: Server, port: number, host: string): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}

function close(server: Server): Promise<void> {
  return new Promise((resolve) => (server.listening ? server.close(() => resolve()) : resolve()));
}

/** A Node listen error as `net.Server` emits it (`port` is left out when it is 0). */
function listenErrno(code: string, address: string, port?: number): Error {
  return Object.assign(new Error(`listen ${code}: ${address}${port === undefined ? '' : `:${port}`}`), {
    code,
    syscall: 'listen',
    address,
    ...(port === undefined ? {} : { port }),
  });
}

test('a taken port: PORT_IN_USE naming the address and the flag, the Node error kept as cause', async (t) => {
  const holder = createServer();
  const second = createServer();
  t.teardown(async () => {
    await close(second);
    await close(holder);
  });
  const { port } = await listen(holder, 0, '127.0.0.1');
  const error = await t.throwsAsync(listenAs(listen(second, port, '127.0.0.1'), { host: '127.0.0.1', port, flag: '--control-listen' }), {
    instanceOf: TetherError,
  });
  t.is(error.code, PORT_IN_USE);
  t.is(error.rawMessage, `--control-listen 127.0.0.1:${port} is taken (EADDRINUSE); choose another with --control-listen HOST:PORT, or port 0`);
  t.is(getErrorCode(error.cause), 'EADDRINUSE');
  t.deepEqual(error.details, { flag: '--control-listen', host: '127.0.0.1', port, errno: 'EADDRINUSE' });
});

test('a privileged port: PORT_NOT_PERMITTED; an address not of this machine: LISTEN_ADDRESS_UNAVAILABLE', async (t) => {
  const denied = await t.throwsAsync(listenAs(Promise.reject(listenErrno('EACCES', '0.0.0.0', 80)), { host: '0.0.0.0', port: 80, flag: '--listen' }), {
    instanceOf: TetherError,
  });
  t.is(denied.code, PORT_NOT_PERMITTED);
  t.regex(denied.rawMessage, /^--listen 0\.0\.0\.0:80 is not permitted \(EACCES; .*\); choose another with --listen HOST:PORT, or port 0$/);

  const unavailable = await t.throwsAsync(listenAs(Promise.reject(listenErrno('EADDRNOTAVAIL', '192.0.2.1')), { host: '192.0.2.1', port: 0, flag: '--listen' }), {
    instanceOf: TetherError,
  });
  t.is(unavailable.code, LISTEN_ADDRESS_UNAVAILABLE);
  t.is(unavailable.rawMessage, '--listen 192.0.2.1:0: 192.0.2.1 is not an address of this machine (EADDRNOTAVAIL); choose another with --listen HOST:PORT');

  const v6 = await t.throwsAsync(listenAs(Promise.reject(listenErrno('EADDRINUSE', '::1', 7080)), { host: '::1', port: 7080, flag: '--control-listen' }));
  t.regex(v6.message, /^\[PORT_IN_USE\] --control-listen \[::1\]:7080 is taken/);
});

test('anything else passes through unchanged: another port, another address, not a listen error, a TetherError', async (t) => {
  const target = { host: '127.0.0.1', port: 7080, flag: '--control-listen' };
  for (const reason of [
    listenErrno('EADDRINUSE', '127.0.0.1', 7081), // another listener of the same start (e.g. a fixed admin port)
    listenErrno('EADDRINUSE', '127.0.0.2', 7080),
    Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:7080'), { code: 'ECONNREFUSED', syscall: 'connect', address: '127.0.0.1', port: 7080 }),
    listenErrno('EMFILE', '127.0.0.1', 7080),
    new TetherError('CA_NOT_FOUND', 'no CA'),
    'a string',
  ]) {
    const thrown = await t.throwsAsync(listenAs(Promise.reject(reason as Error), target), { any: true });
    t.is(thrown, reason);
  }
  t.is(await listenAs(Promise.resolve(42), target), 42);
});
