/**
 * The agent serves its sovereign listener itself (`sovereignty.listener`): with a real gateway,
 * a real agent and its built-in router, a customer-signed switch to sovereign closes the tunnels
 * and brings the listener up (a customer token through it gets 200, none 401, a wrong role 403),
 * and a signed switch back drains it (connection refused) and dials again. Fail-safe (no document)
 * serves it from the start. Each change is in the metrics and in an audit log line.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { pino } from 'pino';
import { fromBinary } from '@bufbuild/protobuf';
import { Agent } from '../../agent/index.js';
import { sovereignOptionsOf } from '../../agent/sovereign-listener.js';
import { sovereignListener } from '../../xds/index.js';
import { HttpConnectionManagerSchema } from '../../xds/gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import { JwtAuthenticationSchema } from '../../xds/gen/envoy/extensions/filters/http/jwt_authn/v3/config_pb.js';
import type { AgentOptions, SovereignListenerEvent } from '../../agent/agent.js';
import type { ModeChange } from '../../agent/sovereignty.js';
import type { Logger } from '../../common/log.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { plainH1Request } from '../helpers/tunnel-clients.js';
import { startTunnelEnv } from '../helpers/tunnel-env.js';
import type { TunnelEnv } from '../helpers/tunnel-env.js';
import { AUDIENCE, ISSUER, customerIdp, proxyV2, recordingUpstream, sovereignRequest } from './fixtures.js';
import type { CustomerIdp, Echo, RecordingUpstream } from './fixtures.js';
import { createCustomer, nextEvent, whenTrue, writeModeFile } from './mode-fixtures.js';
import type { Customer } from './mode-fixtures.js';

failOnLeaks(test);

interface World {
  env: TunnelEnv;
  idp: CustomerIdp;
  upstream: RecordingUpstream;
  customer: Customer;
  dir: string;
  modeFile: string;
  certFile: string;
  keyFile: string;
  ca: string;
  /** JSON log lines of the agent. */
  logs: Array<Record<string, unknown>>;
  logger: Logger;
  agentOptions(): Partial<AgentOptions>;
}

async function world(t: ExecutionContext): Promise<World> {
  const dir = await mkdtemp(join(tmpdir(), 'tether-agent-listener-'));
  const env = await startTunnelEnv({ clusters: ['c1'] });
  const idp = await customerIdp();
  const upstream = await recordingUpstream();
  t.teardown(async () => {
    await env.close();
    await upstream.close();
    await idp.close();
    await rm(dir, { recursive: true, force: true });
  });
  const certificate = await env.pki.gatewayCert({ dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const certFile = join(dir, 'listener.crt');
  const keyFile = join(dir, 'listener.key');
  await writeFile(certFile, certificate.cert);
  await writeFile(keyFile, certificate.key, { mode: 0o600 });
  const customer = createCustomer();
  const modeFile = join(dir, 'mode.jws');
  const logs: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  return {
    env,
    idp,
    upstream,
    customer,
    dir,
    modeFile,
    certFile,
    keyFile,
    ca: certificate.ca,
    logs,
    logger,
    agentOptions: () => ({
      routes: [{ prefix: '/', upstream: `http://127.0.0.1:${upstream.port}` }],
      xds: {},
      logger,
      sovereignty: {
        clusterId: 'c1',
        customerKey: customer.publicPem,
        modeFile,
        pollMs: 60_000,
        drainGraceMs: 1_000,
        listener: {
          address: '127.0.0.1',
          tls: { certFile, keyFile },
          jwt: { issuer: ISSUER, audiences: [AUDIENCE], jwks: { uri: idp.jwksUri }, claimToHeaders: [{ claim: 'sub', header: 'x-customer-subject' }] },
          rbac: { policies: { readers: { principals: [{ claim: 'roles', includes: 'reader' }] } } },
        },
      },
    }),
  };
}

async function tunnelMetric(agent: Agent): Promise<number> {
  return (await agent.metrics.tunnelConnections.get()).values.reduce((sum, v) => sum + v.value, 0);
}

async function listenerUpMetric(agent: Agent): Promise<number> {
  return (await agent.metrics.sovereignListenerUp.get()).values[0]?.value ?? -1;
}

async function listenerChanges(agent: Agent): Promise<Record<string, number>> {
  return Object.fromEntries((await agent.metrics.sovereignListenerChanges.get()).values.map((v) => [`${String(v.labels.action)} ${String(v.labels.result)}`, v.value]));
}

/** Write a signed document and wait for both the mode change and the listener's answer to it. */
async function signedSwitch(w: World, agent: Agent, mode: 'tunnel' | 'sovereign', seq: number): Promise<SovereignListenerEvent> {
  const change = nextEvent<[ModeChange]>(agent.events, 'mode', (c) => c.mode === mode);
  const listener = nextEvent<[SovereignListenerEvent]>(agent.events, 'sovereignListener');
  await writeModeFile(w.modeFile, await w.customer.sign({ mode, seq }));
  await agent.reloadMode();
  await change;
  return (await listener)[0];
}

/** A request to the listener as a load balancer sends it: PROXY v2 with the client's address, then TLS. */
function throughListener(w: World, port: number, headers: Record<string, string>): ReturnType<typeof sovereignRequest> {
  return sovereignRequest(port, w.ca, { preamble: proxyV2({ address: '10.9.8.7', port: 40_000 }, { address: '127.0.0.1', port }), headers });
}

async function viaGateway(w: World): Promise<{ status: number; code: unknown }> {
  const reply = await plainH1Request(w.env.gateway.plainUrl as string, { cluster: 'c1', token: await w.env.token(['c1']) });
  return { status: reply.status, code: reply.headers['tether-error'] };
}

function refusedConnection(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

const audit = (w: World, action: string): Array<Record<string, unknown>> => w.logs.filter((line) => line.audit === 'agent.sovereign.listener' && line.action === action);

test('a signed switch to sovereign closes the tunnels and the agent serves its sovereign listener; a signed switch back drains it and dials again', async (t) => {
  const w = await world(t);
  await writeModeFile(w.modeFile, await w.customer.sign({ mode: 'tunnel', seq: 1 }));
  const agent = await w.env.startAgent(w.agentOptions());
  await agent.waitForConnections(2);
  t.is(agent.mode, 'tunnel');
  t.is(agent.sovereignAddress, null, 'no sovereign listener in tunnel mode');
  t.is(await listenerUpMetric(agent), 0);
  t.deepEqual(await viaGateway(w), { status: 200, code: undefined });

  // tunnel → sovereign
  const up = await signedSwitch(w, agent, 'sovereign', 2);
  t.is(up.state, 'up');
  const port = agent.sovereignAddress?.port;
  if (port === undefined) return t.fail('no sovereign address');
  t.deepEqual(up.address, agent.sovereignAddress);
  t.true(port > 0);
  await whenTrue((wake) => w.env.gateway.tunnels.onChange(wake), () => w.env.gateway.tunnels.count('c1') === 0, 'the gateway still holds a c1 tunnel');
  t.is(await tunnelMetric(agent), 0, 'no tunnel (metric)');
  t.is(agent.liveConnections().length, 0);
  t.is(await listenerUpMetric(agent), 1);
  t.like(agent.readiness(), { ready: true, details: { mode: 'sovereign', sovereignListener: { serving: true, address: `127.0.0.1:${port}` } } });

  const ok = await throughListener(w, port, { authorization: `Bearer ${await w.idp.mint()}` });
  t.is(ok.status, 200, ok.body);
  const echo = JSON.parse(ok.body) as Echo;
  t.is(echo.path, '/data/x');
  t.is(echo.headers['x-customer-subject'], 'alice');
  t.is(echo.headers['x-forwarded-for'], '10.9.8.7', "the client's address from the PROXY header");
  const none = await throughListener(w, port, {});
  t.deepEqual([none.status, none.headers['tether-error']], [401, 'UNAUTHENTICATED']);
  const wrongRole = await throughListener(w, port, { authorization: `Bearer ${await w.idp.mint({ roles: ['writer'] })}` });
  t.deepEqual([wrongRole.status, wrongRole.headers['tether-error']], [403, 'RBAC_DENIED']);
  const vendorToken = await throughListener(w, port, { authorization: `Bearer ${await w.env.token(['c1'])}` });
  t.is(vendorToken.status, 401, "a token the vendor's issuer minted is refused");
  t.deepEqual(await viaGateway(w), { status: 503, code: 'NO_TUNNEL' }, 'nothing through the vendor gateway');
  t.regex(await agent.registry.getSingleMetricAsString('tether_sovereign_requests_total'), /code="OK"[^}]*\} 1$/m, "the front's series are in the agent's registry");
  t.like(audit(w, 'start')[0], { level: 40, listener: 'sovereign', seq: 2, address: '127.0.0.1', port });

  // sovereign → tunnel
  const down = await signedSwitch(w, agent, 'tunnel', 3);
  t.deepEqual(down, { state: 'down', address: null });
  t.is(agent.sovereignAddress, null);
  t.is(await refusedConnection(port), 'ECONNREFUSED', 'the listener is gone');
  await agent.waitForConnections(2);
  t.is(await tunnelMetric(agent), 2, 'the tunnel is back (metric)');
  t.is(await listenerUpMetric(agent), 0);
  t.deepEqual(await viaGateway(w), { status: 200, code: undefined });
  t.deepEqual(await listenerChanges(agent), { 'start ok': 1, 'stop ok': 1 });
  t.like(audit(w, 'stop')[0], { level: 40, listener: 'sovereign', seq: 3 });
  t.false('sovereignListener' in (agent.readiness().details ?? {}) && (agent.readiness().details?.sovereignListener as { serving: boolean }).serving);
});

test('fail-safe: with no valid mode document the agent serves the sovereign listener from start() on and dials nothing; a signed tunnel document stops it', async (t) => {
  const w = await world(t);
  const agent = await w.env.startAgent(w.agentOptions());
  t.is(agent.mode, 'sovereign');
  const port = agent.sovereignAddress?.port;
  if (port === undefined) return t.fail('start() resolved without the sovereign listener');
  t.deepEqual(agent.readiness().details?.knownGateways, [], 'no gateway is dialed');
  t.deepEqual((await agent.metrics.handshakes.get()).values, [], 'no handshake was attempted');
  const ok = await throughListener(w, port, { authorization: `Bearer ${await w.idp.mint()}` });
  t.is(ok.status, 200, ok.body);
  t.like(audit(w, 'start')[0], { seq: 0 });

  const down = await signedSwitch(w, agent, 'tunnel', 1);
  t.is(down.state, 'down');
  t.is(await refusedConnection(port), 'ECONNREFUSED');
  await agent.waitForConnections(2);
});

test('configuration: a listener needs the xds part and an in-cluster address (INVALID_OPTIONS); an unreadable certificate fails start() with SOVEREIGN_TLS_UNREADABLE and opens nothing', async (t) => {
  const w = await world(t);
  const base = w.agentOptions();
  const tls = { key: 'unused', cert: 'unused', ca: 'unused' };
  const sovereignty = base.sovereignty as NonNullable<AgentOptions['sovereignty']>;
  const listener = sovereignty.listener as NonNullable<typeof sovereignty.listener>;
  const noXds = t.throws(() => new Agent({ gateways: ['127.0.0.1:1'], tls, sovereignty }));
  t.is((noXds as { code?: string }).code, 'INVALID_OPTIONS');
  t.regex(noXds?.message ?? '', /agent\.sovereignty\.listener: needs the xds option/);
  const wildcard = t.throws(() => new Agent({ gateways: ['127.0.0.1:1'], tls, xds: {}, sovereignty: { ...sovereignty, listener: { ...listener, address: '0.0.0.0' } } }));
  t.regex(wildcard?.message ?? '', /agent\.sovereignty\.listener\.address: "0\.0\.0\.0" is not a loopback or in-cluster/);
  const badPrincipal = t.throws(() => new Agent({ gateways: ['127.0.0.1:1'], tls, xds: {}, sovereignty: { ...sovereignty, listener: { ...listener, rbac: { policies: { p: { principals: [{ remoteIp: '10.0.0.0/99' }] } } } } } }));
  t.is((badPrincipal as { code?: string }).code, 'INVALID_OPTIONS');
  const skew = t.throws(() => new Agent({ gateways: ['127.0.0.1:1'], tls, xds: {}, sovereignty: { ...sovereignty, listener: { ...listener, jwt: { ...listener.jwt, clockSkewSeconds: 120 } } } }));
  t.regex(skew?.message ?? '', /clockSkewSeconds/, 'a skew the router would NACK is refused in the configuration');
  const cached = new Agent({ ...base, gateways: ['127.0.0.1:1'], tls, sovereignty: { ...sovereignty, listener: { ...listener, jwt: { ...listener.jwt, cacheSize: 7 } } } });
  const parsed = cached.config.sovereignty?.listener;
  if (parsed === undefined) throw new Error('no parsed listener');
  const published = sovereignListener((await sovereignOptionsOf(parsed)).listener);
  const filter = published.filterChains[0]?.filters[0]?.configType;
  const hcm = filter?.case === 'typedConfig' ? fromBinary(HttpConnectionManagerSchema, filter.value.value) : null;
  const authn = hcm?.httpFilters.find((f) => f.name === 'envoy.filters.http.jwt_authn')?.configType;
  const providers = authn?.case === 'typedConfig' ? fromBinary(JwtAuthenticationSchema, authn.value.value).providers : {};
  t.is(Object.values(providers)[0]?.jwtCacheConfig?.jwtCacheSize, 7, 'jwt.cacheSize reaches the published jwt_authn provider');

  const agent = new Agent({
    ...base,
    gateways: [w.env.gateway.agentAddress],
    serverName: 'localhost',
    tls: { key: 'unused', cert: 'unused', ca: w.env.pki.trustBundlePem },
    sovereignty: { ...sovereignty, listener: { ...listener, tls: { certFile: join(w.dir, 'missing.crt'), keyFile: w.keyFile } } },
  });
  t.teardown(() => agent.close());
  const failed = nextEvent<[SovereignListenerEvent]>(agent.events, 'sovereignListener');
  const error = await t.throwsAsync(agent.start());
  t.is((error as { code?: string }).code, 'SOVEREIGN_TLS_UNREADABLE');
  t.like((await failed)[0], { state: 'failed', code: 'SOVEREIGN_TLS_UNREADABLE' });
  t.is(agent.sovereignAddress, null);
  t.deepEqual(await listenerChanges(agent), { 'start SOVEREIGN_TLS_UNREADABLE': 1 });
  t.deepEqual(agent.readiness().details?.knownGateways, [], 'still no tunnel: sovereign is fail-safe');
  t.like(agent.readiness(), { ready: false, details: { sovereignListener: { serving: false, failure: 'SOVEREIGN_TLS_UNREADABLE' } } });
});
