/**
 * Issue 10 must-show, with a real load balancer: HAProxy 2.x in front of the built-in router's
 * sovereign front, the way a customer runs it, in two variants on loopback ports:
 *
 * - TLS passthrough: `mode tcp`, the client's TLS goes through to the router, `send-proxy-v2`;
 * - TLS terminated by HAProxy with its own certificate and re-encrypted to the router
 *   (`ssl verify required ca-file …`, `send-proxy-v2`).
 *
 * Through either: a valid token → 200 from the upstream, with the client's real address and port
 * (as HAProxy saw them) in the router's access log; no token 401, wrong audience 401, wrong role
 * 403, expired token 401, each with its code. A connection straight to the router, without a PROXY
 * header, is refused. Skipped with a message where the `haproxy` package is not installed; a
 * failure under CI=true.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { failOnLeaks } from '../helpers/leaks.js';
import { sovereignRequest, startSovereign } from './fixtures.js';
import type { Echo, SovereignRig } from './fixtures.js';
import { HAPROXY_PACKAGE, findHaproxy, freePort, startHaproxy } from './haproxy.js';
import type { Haproxy } from './haproxy.js';

const binary = findHaproxy();
const ci = process.env.CI === 'true';

interface World {
  rig: SovereignRig;
  haproxy: Haproxy;
  directory: string;
  /** HAProxy frontends: TLS passthrough, and TLS terminated and re-encrypted. */
  passthrough: number;
  terminating: number;
}

let world: World | null = null;

if (binary === null && !ci) {
  test.skip(`HAProxy in front of the sovereign router: not run, ${HAPROXY_PACKAGE} is not installed (Debian package "${HAPROXY_PACKAGE}": apt-get install ${HAPROXY_PACKAGE})`, () => undefined);
} else if (binary === null) {
  test(`HAProxy is installed (CI requires the Debian package "${HAPROXY_PACKAGE}")`, (t) => {
    t.fail(`no haproxy binary found (set HAPROXY_BIN or install the Debian package "${HAPROXY_PACKAGE}"; .ci/run installs it)`);
  });
} else {
  const haproxyBinary = binary;
  failOnLeaks(test);

  test.before(async () => {
    const rig = await startSovereign();
    const directory = await mkdtemp(path.join(tmpdir(), 'tether-haproxy-'));
    try {
      // HAProxy's own certificate (for the terminating variant), from the customer's CA; PEM with the key.
      const lb = await rig.pki.gatewayCert({ dnsNames: ['localhost', 'lb.customer.test'], ipAddresses: ['127.0.0.1'] });
      const pem = path.join(directory, 'haproxy.pem');
      const ca = path.join(directory, 'customer-ca.pem');
      await writeFile(pem, `${lb.cert.trim()}\n${lb.key.trim()}\n`, { mode: 0o600 });
      await writeFile(ca, rig.pki.trustBundlePem);
      const passthrough = await freePort();
      const terminating = await freePort();
      const haproxy = await startHaproxy(
        haproxyBinary,
        directory,
        `
frontend sovereign_passthrough
  bind 127.0.0.1:${passthrough}
  mode tcp
  default_backend router_passthrough
backend router_passthrough
  mode tcp
  server router 127.0.0.1:${rig.port} send-proxy-v2

frontend sovereign_terminating
  bind 127.0.0.1:${terminating} ssl crt ${pem}
  mode tcp
  default_backend router_reencrypt
backend router_reencrypt
  mode tcp
  server router 127.0.0.1:${rig.port} ssl verify required ca-file ${ca} sni str(localhost) send-proxy-v2
`,
      );
      world = { rig, haproxy, directory, passthrough, terminating };
    } catch (reason) {
      await rig.close();
      await rm(directory, { recursive: true, force: true });
      throw reason;
    }
  });

  test.after.always(async () => {
    if (world === null) return;
    await world.haproxy.stop();
    await world.rig.close();
    await rm(world.directory, { recursive: true, force: true });
  });

  const through = async (t: ExecutionContext, variant: 'passthrough' | 'terminating'): Promise<void> => {
    if (world === null) return t.fail('no HAProxy world');
    const { rig } = world;
    const port = world[variant];
    const ask = (headers: Record<string, string>) => sovereignRequest(port, rig.certificate.ca, { headers });
    const bearer = async (claims = {}, options = {}) => ({ authorization: `Bearer ${await rig.idp.mint(claims, options)}` });

    const ok = await ask(await bearer());
    t.is(ok.status, 200, world.haproxy.output());
    const echo = JSON.parse(ok.body) as Echo;
    t.is(echo.path, '/data/x', 'the upstream answered');
    t.is(echo.headers['x-customer-subject'], 'alice');
    t.is(echo.headers.authorization, undefined);
    const record = await rig.access((r) => r.stage === 'request' && r.client?.port === ok.localPort, `the access line of client port ${ok.localPort}`);
    t.deepEqual(record.client, { address: '127.0.0.1', port: ok.localPort }, "the client's address and port, as HAProxy saw them");
    t.not(record.peer.port, ok.localPort, 'the connected peer is HAProxy, not the client');
    t.is(record.proxy, 2);
    t.is(record.status, 200);
    t.is(record.code, 'OK');
    t.is(record.subject, 'alice');

    const refusals: Array<[string, Record<string, string>, number, string]> = [
      ['no token', {}, 401, 'UNAUTHENTICATED'],
      ['wrong audience', await bearer({}, { audience: 'someone-else' }), 401, 'TOKEN_WRONG_AUDIENCE'],
      ['wrong role', await bearer({ roles: ['writer'] }), 403, 'RBAC_DENIED'],
      ['expired token', await bearer({}, { expiresInSec: -300 }), 401, 'TOKEN_EXPIRED'],
    ];
    for (const [what, headers, status, code] of refusals) {
      const reply = await ask(headers);
      t.is(reply.status, status, what);
      t.is(reply.headers['tether-error'], code, what);
      const refused = await rig.access((r) => r.client?.port === reply.localPort, `the access line of the ${what} request`);
      t.is(refused.code, code, `${what}: logged with its code`);
      t.is(refused.client?.address, '127.0.0.1');
    }
  };

  test('through HAProxy, TLS passthrough with send-proxy-v2: 200 with the real client address logged; 401/401/403/401 with their codes', (t) => through(t, 'passthrough'));
  test('through HAProxy terminating TLS and re-encrypting (verify required) with send-proxy-v2: the same', (t) => through(t, 'terminating'));

  test('a connection straight to the router, without a PROXY header, is refused', async (t) => {
    if (world === null) return t.fail('no HAProxy world');
    const { rig } = world;
    const token = await rig.idp.mint();
    const error = await t.throwsAsync(sovereignRequest(rig.port, rig.certificate.ca, { headers: { authorization: `Bearer ${token}` } }));
    t.truthy(error);
    const record = await rig.access((r) => r.code === 'PROXY_PROTOCOL_REQUIRED', 'the refused direct connection');
    t.is(record.stage, 'connection');
    t.is(record.status, null);
    t.regex(await rig.front.registry.getSingleMetricAsString('tether_sovereign_connections_total'), /result="PROXY_PROTOCOL_REQUIRED"\} 1$/m);
  });
}
