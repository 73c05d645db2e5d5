/**
 * `tether dev`: the whole system on one machine with embedded defaults. It keeps a local CA and
 * the dev identity issuer's keys under a state folder, and starts, in one process:
 *
 * - the dev OIDC issuer (stands in for the cluster's service-account issuer and for the users'
 *   identity provider),
 * - the control plane (encrypted SQLite store, JSON/HTTP and gRPC API, the agents' channel, and
 *   the identity exchange: workload token + CSR → 1 h SPIFFE certificate), with cluster `demo`
 *   registered,
 * - a gateway (TLS port for agents and TLS clients, a cleartext port for local clients),
 * - an agent whose certificate comes from the exchange over the control plane's API, with its key
 *   only in memory (I4); it holds the outbound channel to the control plane, executes leased runs,
 *   and serves the dataproxy (signed URLs) through the tunnel,
 * - a demo upstream (or `--upstream URL`) behind the agent's default route.
 *
 * Ports: the client listener (`listen`) and the control plane's JSON/HTTP API (`controlListen`)
 * are chosen by the caller; a taken one fails with `PORT_IN_USE` naming the caller's flag
 * (common/listen.ts). Every other listener is on 127.0.0.1 port 0 (the gateway's TLS and admin
 * ports, the control plane's gRPC API and agents' channel, the agent's admin port, the dataproxy's
 * blob server and API, the demo upstream), except the dev OIDC issuer, which takes the port saved
 * in its state folder again (so tokens it minted keep verifying) and port 0 when that one is taken.
 *
 * `startDevSystem()` is the library form used by the command and by its tests.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { API_PREFIX as DATAPROXY_PREFIX, loadSigningKeys } from '../agent/dataproxy/index.js';
import { controlIdentityExchange } from '../agent/identity-client.js';
import { Agent } from '../agent/index.js';
import { Orchestration } from '../agent/orchestration.js';
import { CertificateAuthority, CertificateSource, DevOidcIssuer } from '../certs/index.js';
import { DEV_CONTROL_AUDIENCE, startDevControl } from '../control/dev.js';
import { userCaller } from '../control/service.js';
import { TetherError } from '../common/errors.js';
import type { Closable } from '../common/lifecycle.js';
import { once } from '../common/lifecycle.js';
import { formatHostPort, listenAs } from '../common/listen.js';
import { createLogger, type Logger } from '../common/log.js';
import { Gateway, accessAuthorizer } from '../gateway/index.js';
import { HAPROXY_MISSING, devSovereignty, prepareDevSovereign, startDevLoadBalancer } from './dev-sovereign.js';
import { findHaproxy } from './haproxy.js';
import type { DevSovereignFiles } from './dev-sovereign.js';

export const DEV_TRUST_DOMAIN = 'tether.local';
export const DEV_CLUSTER = 'demo';
export const DEV_AGENT = 'dev-agent';
/** The audience agents' workload tokens are minted for (the exchange's identifier). */
export const DEV_WORKLOAD_AUDIENCE = 'tether-identity';
/** The audience of client tokens the gateway accepts. */
export const DEV_CLIENT_AUDIENCE = 'tether-gateway';
export const DEV_AGENT_SUBJECT = 'system:serviceaccount:tether-system:tether-agent';
export const DEV_BASE_DOMAIN = 'localhost';
export const DEV_ORG = 'dev';
/** The dev user: org Admin in the control plane, allowed to reach cluster `demo`. */
export const DEV_USER = 'dev';
export const DEV_BUCKET = 'demo-data';
/** The dev gateway's subject on the control plane (role Gateway: it may only watch the clusters). */
export const DEV_GATEWAY_SUBJECT = 'system:gateway:dev-gateway';

/**
 * An address to listen on; `flag` names the option that chose it in errors (`PORT_IN_USE`: "choose
 * another with --listen HOST:PORT"), default the field's name in `DevOptions`.
 */
export interface DevListen {
  host: string;
  port: number;
  flag?: string;
}

export interface DevOptions {
  stateDir: string;
  /** Cleartext client listener (HTTP/1.1 and h2c); port 0 picks one. */
  listen: DevListen;
  /** Point the demo cluster's default route at this HTTP server instead of the built-in demo. */
  upstream?: string;
  /** The control plane's JSON/HTTP API; port 0 picks one. Default 127.0.0.1:0. */
  controlListen?: DevListen;
  /**
   * Sovereign mode (`tether dev --sovereign`): the customer signs `sovereign` for the demo cluster,
   * the agent dials no tunnel and serves its sovereign listener, and `listen` is where clients
   * connect: HAProxy's frontend when haproxy is installed, else the listener itself.
   */
  sovereign?: { listen: DevListen };
  logger?: Logger;
}

/** What `tether dev --sovereign` set up. */
export interface DevSovereign {
  /** Where clients connect (`https://`): HAProxy's frontend, or the listener itself without it. */
  url: string;
  /** HAProxy in front (send-proxy-v2), or why not. */
  haproxy: { running: true } | { running: false; missing: string };
  /** The agent's sovereign listener. */
  listenerUrl: string;
  files: DevSovereignFiles;
}

export interface DevSystem extends Closable {
  /** Cleartext URL for clients. */
  clientUrl: string;
  /** TLS URL (agents and TLS clients); trust `caFile`. */
  tlsUrl: string;
  caFile: string;
  /** File holding a bearer token for the dev user, allowed to reach the demo cluster. */
  clientTokenFile: string;
  clientToken: string;
  /** The control plane's JSON/HTTP API. */
  controlUrl: string;
  /** File holding a bearer token for the dev user (org Admin) on the control plane's API. */
  controlTokenFile: string;
  /** The operator console on the control plane's API port; log in with the token in `controlTokenFile`. */
  consoleUrl: string;
  /** Host to send for host-based routing. */
  clusterHost: string;
  agentAdminUrl: string;
  gatewayAdminUrl: string;
  agentCertificate: { spiffeId: string | undefined; notAfter: Date };
  /** With `sovereign`: the listener, the load balancer and the customer's files. */
  sovereign: DevSovereign | null;
}

function listen(server: Server): Promise<AddressInfo> {
  return new Promise((resolvePromise, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolvePromise(server.address() as AddressInfo);
    });
  });
}

/** The demo upstream: answers with what it was asked and the identity headers the agent passed on. */
function demoUpstream(): Server {
  return createServer((req: IncomingMessage, res: ServerResponse) => {
    const forwarded = Object.fromEntries(Object.entries(req.headers).filter(([name]) => name.startsWith('tether-')));
    const body = JSON.stringify({ service: 'tether demo upstream', method: req.method, path: req.url, forwarded }, null, 2);
    res.writeHead(200, { 'content-type': 'application/json' }).end(`${body}\n`);
  });
}

export async function startDevSystem(options: DevOptions): Promise<DevSystem> {
  const logger = options.logger ?? createLogger('dev');
  const stateDir = resolve(options.stateDir);
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const started: Closable[] = [];
  const stopAll = async (mode: 'drain' | 'close', graceMs?: number): Promise<void> => {
    for (const part of [...started].reverse()) {
      await (mode === 'drain' ? part.drain(graceMs) : part.close()).catch((reason: unknown) => logger.warn({ err: reason }, 'stop failed'));
    }
  };

  try {
    // PKI: a root and issuing CA kept on disk (operator material); leaves are issued in memory.
    const caDir = join(stateDir, 'ca');
    const ca = await CertificateAuthority.load(caDir).catch(async (reason: unknown) => {
      if (!(reason instanceof TetherError) || reason.code !== 'CA_NOT_FOUND') throw reason;
      const created = await CertificateAuthority.create({ trustDomain: DEV_TRUST_DOMAIN });
      await created.save(caDir);
      return created;
    });
    const caFile = join(stateDir, 'trust-bundle.pem');
    await writeFile(caFile, ca.trustBundlePem());

    // The cluster's service-account issuer and the users' identity provider, in one dev stand-in.
    const issuer = new DevOidcIssuer({ stateDir: join(stateDir, 'oidc') });
    await issuer.listen();
    started.push(issuer);

    const controlListen = options.controlListen ?? { host: '127.0.0.1', port: 0 };
    const control = await listenAs(
      startDevControl({
        stateDir: join(stateDir, 'control'),
        issuerUrl: issuer.issuer,
        ca,
        org: DEV_ORG,
        admins: [DEV_USER],
        httpHost: controlListen.host,
        httpPort: controlListen.port,
        logger: logger.child({ component: 'control' }),
      }),
      { ...controlListen, flag: controlListen.flag ?? 'controlListen' },
    );
    started.push(control);
    const controlUrl = `http://${formatHostPort(dialable(controlListen.host), control.httpPort)}`;
    // The gateway follows the cluster list and modes with the Gateway role (cluster.watch only).
    await control.service.bind(userCaller(DEV_USER), `user:${DEV_GATEWAY_SUBJECT}`, 'Gateway', { org: DEV_ORG });
    await control.service.registerCluster(userCaller(DEV_USER), {
      org: DEV_ORG,
      id: DEV_CLUSTER,
      mode: options.sovereign === undefined ? 'tunnel' : 'sovereign',
      endpoint: `${DEV_CLUSTER}.${DEV_BASE_DOMAIN}`,
      issuer: issuer.issuer,
      audience: DEV_WORKLOAD_AUDIENCE,
      allowedSubjects: [DEV_AGENT_SUBJECT],
    });

    // Upstream.
    let upstreamUrl = options.upstream;
    if (upstreamUrl === undefined) {
      const upstream = demoUpstream();
      const address = await listen(upstream);
      started.push(serverClosable(upstream));
      upstreamUrl = `http://127.0.0.1:${address.port}`;
    }

    // Gateway.
    const gatewayCert = await ca.issueServer({ dnsNames: ['localhost', `${DEV_CLUSTER}.${DEV_BASE_DOMAIN}`, `*.${DEV_BASE_DOMAIN}`], ipAddresses: ['127.0.0.1', '::1'] });
    if (gatewayCert.privateKeyPem === undefined) throw new TetherError('DEV_START_FAILED', 'gateway certificate came without its key');
    const gateway = new Gateway({
      id: 'dev-gateway',
      tls: { key: gatewayCert.privateKeyPem, cert: gatewayCert.chainPem, ca: ca.trustBundlePem() },
      listen: { host: '127.0.0.1', port: 0 },
      plainListen: { host: options.listen.host, port: options.listen.port },
      baseDomain: DEV_BASE_DOMAIN,
      // The registered clusters and their modes come from the control plane's watch (sovereign: the
      // vendor's gateway refuses the cluster by itself too, 403 CLUSTER_SOVEREIGN).
      controlPlane: { url: `http://127.0.0.1:${control.grpcPort}`, orgs: [DEV_ORG] },
      controlPlaneToken: () => issuer.mint({ subject: DEV_GATEWAY_SUBJECT, audience: DEV_CONTROL_AUDIENCE, ttlSec: 3600 }),
      trustDomain: DEV_TRUST_DOMAIN,
      auth: { mode: 'jwt', issuers: [{ issuer: issuer.issuer, audiences: [DEV_CLIENT_AUDIENCE], jwksUrl: issuer.jwksUri }] },
      // Who may reach the demo cluster's data plane is the control plane's RBAC graph.
      authorizer: accessAuthorizer({ check: (subject, groups, clusterId) => control.service.mayReachCluster(subject, groups, clusterId) }),
      admin: { host: '127.0.0.1', port: 0 },
      drainGraceMs: 5_000,
      logger: logger.child({ component: 'gateway' }),
    });
    started.push(gateway); // before start(): a listener that did bind is closed when another fails
    await listenAs(gateway.start(), { ...options.listen, flag: options.listen.flag ?? 'listen' });
    await firstClusterList(gateway);
    // The console reads the in-process gateway's metrics, and agents it revokes lose their tunnels here.
    control.console?.gateways.addRegistry('dev-gateway', gateway.registry);
    control.console?.agents?.onRevokedSerials((serials) => gateway.setRevokedSerials(serials));

    // The agent's identity: a projected-token stand-in exchanged for a 1 h certificate whose key
    // never leaves this process's memory.
    const exchange = controlIdentityExchange(controlUrl);
    const source = new CertificateSource({
      // The agent's side of the exchange: a fresh workload token (in a cluster, re-read from the
      // projected token file) and the CSR of the in-memory key, sent to the control plane.
      issue: async (csrPem) =>
        exchange({
          token: await issuer.mint({ subject: DEV_AGENT_SUBJECT, audience: DEV_WORKLOAD_AUDIENCE, ttlSec: 600 }),
          csrPem,
          clusterId: DEV_CLUSTER,
          agentId: DEV_AGENT,
        }),
      logger: logger.child({ component: 'certificate-source' }),
    });
    await source.start();
    started.push({ drain: () => source.close(), close: () => source.close() });
    const material = source.current();
    const orchestration = await Orchestration.start({
      controlAddress: `localhost:${control.agentPort}`,
      agentId: DEV_AGENT,
      certificates: source,
      trustBundlePem: ca.trustBundlePem(),
      workDir: join(stateDir, 'runs'),
      dataproxy: {
        root: join(stateDir, 'blobs'),
        bucket: DEV_BUCKET,
        clusterId: DEV_CLUSTER,
        signingKeys: await loadSigningKeys(join(stateDir, 'dataproxy-signing-keys'), { create: true }),
      },
      logger: logger.child({ component: 'orchestration' }),
    });
    started.push(orchestration);
    // Sovereign: the customer's key, signed document, IdP and listener certificate.
    const sovereignListen = options.sovereign?.listen;
    const routerHost = sovereignListen === undefined ? '127.0.0.1' : dialable(sovereignListen.host);
    const sovereignFiles = sovereignListen === undefined ? null : await prepareDevSovereign(stateDir, DEV_CLUSTER, ca, routerHost);
    // With HAProxy in front the listener takes any port (HAProxy takes the chosen one).
    const haproxyBinary = sovereignFiles === null ? null : findHaproxy();
    const agent = new Agent({
      gateways: [gateway.address],
      serverName: 'localhost',
      routes: [
        { prefix: DATAPROXY_PREFIX, upstream: orchestration.data.api.url },
        { prefix: '/', upstream: upstreamUrl },
      ],
      tls: { key: material.keyPem, cert: material.chainPem, ca: ca.trustBundlePem() },
      admin: { host: '127.0.0.1', port: 0 },
      drainGraceMs: 5_000,
      ...(sovereignFiles === null || sovereignListen === undefined
        ? {}
        : { xds: {}, sovereignty: devSovereignty(sovereignFiles, DEV_CLUSTER, routerHost, haproxyBinary !== null ? 0 : sovereignListen.port) }),
      logger: logger.child({ component: 'agent' }),
    });
    source.subscribe((renewed) => agent.updateTls({ key: renewed.keyPem, cert: renewed.chainPem, ca: ca.trustBundlePem() }));
    started.push(agent); // before start(): its xDS part and listener are closed when start() fails
    if (sovereignListen === undefined) {
      await agent.start();
      await agent.waitForConnections(1, 15_000);
    } else await listenAs(agent.start(), { ...sovereignListen, flag: sovereignListen.flag ?? 'sovereign.listen' });

    let sovereign: DevSovereign | null = null;
    if (sovereignFiles !== null && sovereignListen !== undefined) {
      const router = agent.sovereignAddress;
      if (router === null) throw new TetherError('DEV_START_FAILED', 'the agent is not serving its sovereign listener');
      const listenerUrl = `https://${formatHostPort(routerHost, router.port)}`;
      if (haproxyBinary !== null) {
        const balancer = await startDevLoadBalancer(haproxyBinary, sovereignFiles.dir, sovereignListen.host, sovereignListen.port, routerHost, router.port);
        const stopHaproxy = once(() => balancer.haproxy.stop());
        started.push({ drain: stopHaproxy, close: stopHaproxy });
        sovereign = { url: `https://${formatHostPort(dialable(balancer.host), balancer.port)}`, haproxy: { running: true }, listenerUrl, files: sovereignFiles };
      } else sovereign = { url: listenerUrl, haproxy: { running: false, missing: HAPROXY_MISSING }, listenerUrl, files: sovereignFiles };
    }

    const clientToken = await issuer.mint({
      subject: DEV_USER,
      audience: DEV_CLIENT_AUDIENCE,
      ttlSec: 12 * 3600,
      claims: { clusters: [DEV_CLUSTER] },
    });
    const clientTokenFile = join(stateDir, 'client-token');
    await writeFile(clientTokenFile, `${clientToken}\n`, { mode: 0o600 });
    const controlToken = await issuer.mint({ subject: DEV_USER, audience: DEV_CONTROL_AUDIENCE, ttlSec: 12 * 3600 });
    const controlTokenFile = join(stateDir, 'control-token');
    await writeFile(controlTokenFile, `${controlToken}\n`, { mode: 0o600 });

    const adminOf = (address: AddressInfo | null): string => (address === null ? '' : `http://127.0.0.1:${address.port}`);
    const stop = once(() => stopAll('close'));
    return {
      clientUrl: gateway.plainUrl ?? gateway.url,
      tlsUrl: gateway.url,
      caFile,
      clientTokenFile,
      clientToken,
      controlUrl,
      controlTokenFile,
      consoleUrl: `${controlUrl}/console/`,
      clusterHost: `${DEV_CLUSTER}.${DEV_BASE_DOMAIN}`,
      agentAdminUrl: adminOf(agent.adminAddress),
      gatewayAdminUrl: gateway.adminUrl ?? '',
      agentCertificate: { spiffeId: material.spiffeId, notAfter: material.notAfter },
      sovereign,
      drain: once((graceMs?: number) => stopAll('drain', graceMs)),
      close: stop,
    };
  } catch (reason) {
    await stopAll('close');
    throw reason;
  }
}

/** Wait for the gateway's first list from the control plane (the agent dials only a registered cluster). */
function firstClusterList(gateway: Gateway): Promise<void> {
  const watch = gateway.controlPlane;
  if (watch === null || watch.clusters !== null) return Promise.resolve();
  return new Promise((resolvePromise, reject) => {
    const done = (): void => {
      watch.off('update', onUpdate);
      watch.off('disconnected', onError);
    };
    const onUpdate = (): void => {
      done();
      resolvePromise();
    };
    const onError = (error: TetherError): void => {
      done();
      reject(new TetherError('DEV_START_FAILED', `the gateway could not watch the control plane's clusters (${error.code})`, { cause: error }));
    };
    watch.on('update', onUpdate);
    watch.on('disconnected', onError);
  });
}

/** The host to dial for a listener bound to `host`: loopback for the unspecified addresses. */
function dialable(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '::1';
  return host;
}

function serverClosable(server: Server): Closable {
  const stop = once(
    () =>
      new Promise<void>((resolvePromise) => {
        server.close(() => resolvePromise());
        server.closeAllConnections();
      }),
  );
  return { drain: stop, close: stop };
}
