/**
 * Outbound only, shown with network namespaces (issue 10, DESIGN.md I1 and I6). The topology,
 * made per run with unique names and addresses (10.a.b.0/28, nothing else leaves loopback):
 *
 *   root namespace: the vendor (a real gateway on V=10.a.b.1) and the client (on C=10.a.b.9)
 *        │ veth 10.a.b.0/30                       │ veth 10.a.b.8/30
 *   data plane namespace (D=10.a.b.2)        load balancer namespace (10.a.b.10)
 *     agent + upstream service                 HAProxy, send-proxy-v2
 *     sovereign listener on L=10.a.b.6 ◄──────── veth 10.a.b.4/30 (LB 10.a.b.5)
 *
 * The data plane has no default route: only its links. The vendor side has no route to the load
 * balancer's network (an `unreachable` route, since this host's default route would otherwise
 * send the packets out). The data plane's policy routing lets the listener's address L answer the
 * load balancer's network only (`from L lookup <table>`: that network, else unreachable).
 *
 * The data plane runs as a child process inside its namespace (netns-dataplane.ts). It first dials
 * the vendor's gateway (its outbound path works: a request through the gateway reaches the
 * service); then the customer signs sovereign: its tunnel closes and stays closed, its sovereign
 * listener comes up on L; a client through HAProxy gets 200 (RBAC admits the client's network,
 * known from PROXY protocol); from the vendor's address nothing connects in: L is unroutable, D
 * refuses every port the data plane listens on, and even with a route to L added by the vendor no
 * handshake completes.
 *
 * Needs iproute2, the right to create namespaces (root) and haproxy: skipped with a message naming
 * the package otherwise, unless CI is set, where it must run.
 */
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { failOnLeaks } from '../helpers/leaks.js';
import { plainH1Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv } from '../helpers/tunnel-env.js';
import { AUDIENCE, ISSUER, customerIdp, sovereignRequest } from './fixtures.js';
import { HAPROXY_PACKAGE, findHaproxy, startHaproxy } from './haproxy.js';
import type { DataPlaneConfig } from './netns-dataplane.js';
import { createCustomer, whenTrue, writeModeFile } from './mode-fixtures.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const IPROUTE2 = 'iproute2';
const ci = process.env.CI !== undefined && process.env.CI !== '';
const ipBinary = ['/usr/sbin/ip', '/sbin/ip', '/usr/bin/ip', '/bin/ip'].find((candidate) => existsSync(candidate)) ?? null;

/** Run `ip args…`; rejects with its stderr. */
function ip(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    if (ipBinary === null) return reject(new Error(`no ip binary (Debian package "${IPROUTE2}")`));
    execFile(ipBinary, args, { timeout: 10_000 }, (error, stdout, stderr) => {
      if (error !== null) reject(new Error(`ip ${args.join(' ')}: ${stderr.trim() || error.message}`));
      else resolve(stdout);
    });
  });
}

/** Why namespaces cannot be used here, or null when they can. */
async function unsupported(): Promise<string | null> {
  if (ipBinary === null) return `the ip command is missing (Debian package "${IPROUTE2}": apt-get install ${IPROUTE2})`;
  const probe = `tether-probe-${randomBytes(4).toString('hex')}`;
  try {
    await ip(['netns', 'add', probe]);
  } catch (reason) {
    return `network namespaces are not permitted here (${reason instanceof Error ? reason.message : String(reason)}; needs root and ${IPROUTE2})`;
  }
  await ip(['netns', 'del', probe]);
  return null;
}

const why = await unsupported();

/** One run's names and addresses. */
interface Topology {
  dp: string;
  lb: string;
  /** The vendor's address (root namespace) and the data plane's address on that link. */
  vendor: string;
  dpOut: string;
  /** The load balancer's and the listener's address on their link, and that network. */
  lbInner: string;
  listener: string;
  lbNetwork: string;
  /** The client's address (root namespace), the load balancer's on that link, and that network. */
  client: string;
  lbOuter: string;
  clientNetwork: string;
}

/** 10.a.b.0/28 not used by any route of this host. */
async function freeBlock(): Promise<[number, number]> {
  const routes = await ip(['-4', 'route', 'show', 'table', 'all']);
  for (let tries = 0; tries < 50; tries++) {
    const a = 200 + (randomBytes(1)[0] as number) % 50;
    const b = randomBytes(1)[0] as number;
    if (!routes.includes(`10.${a}.${b}.`)) return [a, b];
  }
  throw new Error('no free 10.x.y.0/28 block');
}

async function createTopology(t: ExecutionContext): Promise<Topology> {
  const id = randomBytes(3).toString('hex');
  const [a, b] = await freeBlock();
  const at = (n: number): string => `10.${a}.${b}.${n}`;
  const topology: Topology = {
    dp: `tether-dp-${id}`,
    lb: `tether-lb-${id}`,
    vendor: at(1),
    dpOut: at(2),
    lbInner: at(5),
    listener: at(6),
    lbNetwork: `${at(4)}/30`,
    client: at(9),
    lbOuter: at(10),
    clientNetwork: `${at(8)}/30`,
  };
  const { dp, lb } = topology;
  const vendorLink = [`tv${id}`, `tvd${id}`];
  const clientLink = [`tc${id}`, `tcl${id}`];
  const innerLink = [`ti${id}`, `tid${id}`];
  // Deleting the namespaces deletes the veth pairs with them (each has one end inside).
  t.teardown(async () => {
    for (const args of [['route', 'del', 'unreachable', topology.lbNetwork], ['netns', 'del', dp], ['netns', 'del', lb]]) await ip(args).catch(() => undefined);
  });
  await ip(['netns', 'add', dp]);
  await ip(['netns', 'add', lb]);
  for (const ns of [dp, lb]) await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
  // vendor link: root ↔ data plane
  await ip(['link', 'add', vendorLink[0] as string, 'type', 'veth', 'peer', 'name', vendorLink[1] as string, 'netns', dp]);
  await ip(['addr', 'add', `${topology.vendor}/30`, 'dev', vendorLink[0] as string]);
  await ip(['link', 'set', vendorLink[0] as string, 'up']);
  await ip(['-n', dp, 'addr', 'add', `${topology.dpOut}/30`, 'dev', vendorLink[1] as string]);
  await ip(['-n', dp, 'link', 'set', vendorLink[1] as string, 'up']);
  // client link: root ↔ load balancer
  await ip(['link', 'add', clientLink[0] as string, 'type', 'veth', 'peer', 'name', clientLink[1] as string, 'netns', lb]);
  await ip(['addr', 'add', `${topology.client}/30`, 'dev', clientLink[0] as string]);
  await ip(['link', 'set', clientLink[0] as string, 'up']);
  await ip(['-n', lb, 'addr', 'add', `${topology.lbOuter}/30`, 'dev', clientLink[1] as string]);
  await ip(['-n', lb, 'link', 'set', clientLink[1] as string, 'up']);
  // inner link: load balancer ↔ data plane (the only way to the listener)
  await ip(['-n', lb, 'link', 'add', innerLink[0] as string, 'type', 'veth', 'peer', 'name', innerLink[1] as string, 'netns', dp]);
  await ip(['-n', lb, 'addr', 'add', `${topology.lbInner}/30`, 'dev', innerLink[0] as string]);
  await ip(['-n', lb, 'link', 'set', innerLink[0] as string, 'up']);
  await ip(['-n', dp, 'addr', 'add', `${topology.listener}/30`, 'dev', innerLink[1] as string]);
  await ip(['-n', dp, 'link', 'set', innerLink[1] as string, 'up']);
  // The vendor has no route to the load balancer's network.
  await ip(['route', 'add', 'unreachable', topology.lbNetwork]);
  // The listener's address answers the load balancer's network only.
  const table = String(100 + ((randomBytes(1)[0] as number) % 100));
  await ip(['-n', dp, 'route', 'add', topology.lbNetwork, 'dev', innerLink[1] as string, 'src', topology.listener, 'table', table]);
  await ip(['-n', dp, 'route', 'add', 'unreachable', 'default', 'table', table]);
  await ip(['-n', dp, 'rule', 'add', 'from', topology.listener, 'lookup', table]);
  return topology;
}

/** The data plane process: its JSON lines, and commands to it. */
interface DataPlane {
  lines: Array<Record<string, unknown>>;
  /** The next line (or one already seen after `from`) for which `when` holds. */
  next(when: (line: Record<string, unknown>) => boolean, what: string, ms?: number): Promise<Record<string, unknown>>;
  send(command: string): void;
  stderr(): string;
  stop(): Promise<number | null>;
}

function startDataPlane(t: ExecutionContext, namespace: string, configFile: string): DataPlane {
  const child: ChildProcess = spawn(ipBinary as string, ['netns', 'exec', namespace, process.execPath, '--import', './bin/typescript.js', 'test/sovereign/netns-dataplane.ts', configFile], {
    cwd: REPO,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, TETHER_LOG_LEVEL: 'silent' },
  });
  const lines: Array<Record<string, unknown>> = [];
  const waiters = new Set<() => void>();
  let errors = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    if (errors.length < 64 * 1024) errors += chunk.toString();
  });
  const reader = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  reader.on('line', (text) => {
    try {
      lines.push(JSON.parse(text) as Record<string, unknown>);
    } catch {
      lines.push({ type: 'text', text });
    }
    for (const wake of waiters) wake();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let alive = true;
  void exited.then(() => {
    alive = false;
    for (const wake of waiters) wake();
  });
  const stop = async (): Promise<number | null> => {
    if (alive) {
      child.stdin?.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    }
    return exited;
  };
  t.teardown(async () => {
    await stop();
    reader.close();
  });
  const next = (when: (line: Record<string, unknown>) => boolean, what: string, ms = 15_000): Promise<Record<string, unknown>> => {
    let seen = 0;
    return new Promise((resolve, reject) => {
      const check = (): void => {
        for (; seen < lines.length; seen++) {
          const line = lines[seen] as Record<string, unknown>;
          if (when(line)) return finish(null, line);
          if (line.type === 'error') return finish(new Error(`the data plane failed: ${String(line.message)}\n${errors}`));
        }
        if (!alive) finish(new Error(`the data plane exited before ${what}:\n${errors}`));
      };
      const timer = setTimeout(() => finish(new Error(`no ${what} from the data plane within ${ms} ms:\n${errors}`)), ms);
      const finish = (error: Error | null, line?: Record<string, unknown>): void => {
        clearTimeout(timer);
        waiters.delete(check);
        if (error !== null) reject(error);
        else resolve(line as Record<string, unknown>);
      };
      waiters.add(check);
      check();
    });
  };
  return { lines, next, send: (command) => child.stdin?.write(`${command}\n`), stderr: () => errors, stop };
}

/** Connect from `localAddress`: `connected`, the error code, or `timeout` when nothing answers within `ms`. */
function tryConnect(host: string, port: number, localAddress: string, ms = 1500): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, localAddress });
    const timer = setTimeout(() => done('timeout'), ms);
    function done(result: string): void {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    }
    socket.once('connect', () => done('connected'));
    socket.once('error', (error: NodeJS.ErrnoException) => done(error.code ?? error.message));
  });
}

/** Listening TCP sockets in `namespace`: `address:port` as ss prints them. */
async function listening(namespace: string): Promise<Array<{ address: string; port: number }>> {
  const out = await ip(['netns', 'exec', namespace, 'ss', '-ltnH']);
  return out
    .split('\n')
    .map((line) => line.trim().split(/\s+/)[3])
    .filter((local): local is string => local !== undefined && local !== '')
    .map((local) => {
      const colon = local.lastIndexOf(':');
      return { address: local.slice(0, colon).replace(/^\[|\]$/g, '').replace(/%.*$/, ''), port: Number(local.slice(colon + 1)) };
    });
}

if (why !== null && !ci) {
  test.skip(`outbound-only proof in network namespaces: not run, ${why}`, () => undefined);
} else if (why !== null) {
  test(`network namespaces are available (CI requires them and the Debian package "${IPROUTE2}")`, (t) => {
    t.fail(why);
  });
} else if (findHaproxy() === null && !ci) {
  test.skip(`outbound-only proof in network namespaces: not run, ${HAPROXY_PACKAGE} is not installed (Debian package "${HAPROXY_PACKAGE}": apt-get install ${HAPROXY_PACKAGE})`, () => undefined);
} else {
  failOnLeaks(test);

  test('sovereign data plane in its own namespace: its tunnel closes, only the load balancer reaches its listener, nothing from the vendor side connects in', async (t) => {
    const haproxyBinary = findHaproxy();
    if (haproxyBinary === null) return t.fail(`no haproxy binary (CI requires the Debian package "${HAPROXY_PACKAGE}")`);
    const topology = await createTopology(t);
    const dir = await mkdtemp(join(tmpdir(), 'tether-netns-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const env = await startTunnelEnv({ clusters: ['c1'], gateway: { listen: { host: topology.vendor, port: 0 } } });
    t.teardown(() => env.close());
    const idp = await customerIdp();
    t.teardown(() => idp.close());
    const gateway = env.gateway;
    t.true(gateway.agentAddress.startsWith(`${topology.vendor}:`), gateway.agentAddress);

    // The customer's material: key, mode document (tunnel first), the listener's certificate.
    const customer = createCustomer();
    const modeFile = join(dir, 'mode.jws');
    await writeModeFile(modeFile, await customer.sign({ mode: 'tunnel', seq: 1 }));
    const certificate = await env.pki.gatewayCert({ dnsNames: ['localhost', 'data.customer.test'], ipAddresses: [topology.listener] });
    const certFile = join(dir, 'listener.crt');
    const keyFile = join(dir, 'listener.key');
    await writeFile(certFile, certificate.cert);
    await writeFile(keyFile, certificate.key, { mode: 0o600 });
    const agentCert = await env.pki.agentCert({ clusterId: 'c1', agentId: 'netns' });
    const config: DataPlaneConfig = {
      gateway: gateway.agentAddress,
      tls: { key: agentCert.key, cert: agentCert.cert, ca: env.pki.trustBundlePem },
      clusterId: 'c1',
      customerPublicPem: customer.publicPem,
      modeFile,
      listener: { address: topology.listener, certFile, keyFile, issuer: ISSUER, audience: AUDIENCE, jwks: idp.jwks as DataPlaneConfig['listener']['jwks'], clientNetwork: topology.clientNetwork },
    };
    const configFile = join(dir, 'data-plane.json');
    await writeFile(configFile, JSON.stringify(config), { mode: 0o600 });

    // Tunnel mode: the data plane's outbound path works.
    const dataPlane = startDataPlane(t, topology.dp, configFile);
    const ready = await dataPlane.next((l) => l.type === 'ready', 'ready');
    t.like(ready, { mode: 'tunnel', sovereignPort: null });
    await whenTrue((wake) => gateway.tunnels.onChange(wake), () => gateway.tunnels.count('c1') === 2, 'the data plane dials the vendor gateway');
    const token = await env.token(['c1']);
    const viaGateway = await plainH1Request(gateway.plainUrl as string, { cluster: 'c1', token });
    t.is(viaGateway.status, 200, viaGateway.body.toString());
    t.is((JSON.parse(viaGateway.body.toString()) as { service: string }).service, 'data-plane', 'through the tunnel, from inside the namespace');

    // The customer signs sovereign.
    await writeModeFile(modeFile, await customer.sign({ mode: 'sovereign', seq: 2 }));
    dataPlane.send('reload');
    const up = await dataPlane.next((l) => l.type === 'listener' && l.state === 'up', 'the sovereign listener');
    const port = up.port as number;
    t.true(port > 0);
    await whenTrue((wake) => gateway.tunnels.onChange(wake), () => gateway.tunnels.count('c1') === 0, 'the tunnel closes');
    const closedTunnel = await plainH1Request(gateway.plainUrl as string, { cluster: 'c1', token });
    t.deepEqual([closedTunnel.status, closedTunnel.headers['tether-error']], [503, 'NO_TUNNEL']);

    // HAProxy in the load balancer's namespace, the only one with a route to the listener.
    const haproxy = await startHaproxy(
      haproxyBinary,
      dir,
      `
frontend sovereign
  bind ${topology.lbOuter}:8443
  default_backend router
backend router
  server router ${topology.listener}:${port} send-proxy-v2
`,
      { launcher: [ipBinary as string, 'netns', 'exec', topology.lb], probeHost: topology.client },
    );
    t.teardown(() => haproxy.stop());
    const ask = async (headers: Record<string, string>) => sovereignRequest(8443, certificate.ca, { host: topology.lbOuter, headers });
    const ok = await ask({ authorization: `Bearer ${await idp.mint()}` });
    t.is(ok.status, 200, `${ok.body}\n${haproxy.output()}`);
    t.deepEqual(JSON.parse(ok.body), { service: 'data-plane', path: '/data/x', xff: topology.client }, "the service answered; the router knew the client's address");
    const anonymous = await ask({});
    t.deepEqual([anonymous.status, anonymous.headers['tether-error']], [401, 'UNAUTHENTICATED']);
    const vendorToken = await ask({ authorization: `Bearer ${token}` });
    t.is(vendorToken.status, 401, "the vendor's token is refused");

    // From the vendor's address: nothing connects in.
    t.regex(await tryConnect(topology.listener, port, topology.vendor), /^E(HOST|NET)UNREACH$/, 'the listener is unroutable from the vendor side');
    const sockets = await listening(topology.dp);
    t.true(sockets.some((s) => s.address === topology.listener && s.port === port), JSON.stringify(sockets));
    for (const socket of sockets) {
      t.true(socket.address === topology.listener || socket.address === '127.0.0.1' || socket.address === '::1', `the data plane listens on ${socket.address}:${socket.port}: only loopback and the listener's address`);
      t.is(await tryConnect(topology.dpOut, socket.port, topology.vendor), 'ECONNREFUSED', `port ${socket.port} on the data plane's outbound address`);
    }
    // Even a vendor that adds a route to the listener's address gets no handshake: it answers the LB network only.
    await ip(['route', 'replace', topology.lbNetwork, 'via', topology.dpOut]);
    try {
      t.is(await tryConnect(topology.listener, port, topology.vendor), 'timeout', 'no SYN-ACK leaves the data plane for the vendor');
    } finally {
      await ip(['route', 'replace', 'unreachable', topology.lbNetwork]);
    }

    // The agent opened no tunnel meanwhile, and says so.
    t.is(gateway.tunnels.count('c1'), 0);
    dataPlane.send('metrics');
    const metrics = String((await dataPlane.next((l) => l.type === 'metrics', 'metrics')).text);
    t.notRegex(metrics, /^tether_agent_tunnel_connections\{[^}]*\} [1-9]/m, 'tether_agent_tunnel_connections: none');
    t.regex(metrics, /^tether_agent_mode\{mode="sovereign"[^}]*\} 1$/m);
    t.regex(metrics, /^tether_agent_sovereign_listener_up(\{[^}]*\})? 1$/m);
    t.regex(metrics, /^tether_agent_tunnel_handshakes_total\{result="ok"[^}]*\} 2$/m, 'the two handshakes of tunnel mode, none since');
    t.regex(metrics, /^tether_sovereign_requests_total\{code="OK"[^}]*\} 1$/m);

    t.is(await dataPlane.stop(), 0, dataPlane.stderr());
    t.like(dataPlane.lines.at(-1), { type: 'closed' });
  });
}
