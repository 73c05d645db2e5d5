/**
 * The built-in router's sovereign listener for `benchmarks/sovereign.ts`, run as its own child
 * process (so its CPU is read on its own, and it shares an event loop with nothing else) by
 * `runRelay` (sovereign-relay.ts):
 *
 *   node --import ./bin/typescript.js benchmarks/sovereign-router.ts CONFIG.json
 *
 * The router is started as the agent starts it in sovereign mode: `AgentXds` with the built-in
 * router, and `setSovereign` with a listener on 127.0.0.1 (port 0) requiring the PROXY protocol,
 * TLS with the customer's certificate as an SDS secret, jwt_authn against the IdP's remote JWKS
 * (cached 10 minutes) with a claim-to-header, and RBAC (role `reader` from the token and a client
 * address in 127/8, the configured path prefix). Its counts are the front's
 * `tether_sovereign_requests_total` by code and `tether_sovereign_connections_total` by result.
 */
import type { Counter } from 'prom-client';
import { AgentXds } from '../agent/router/agent-xds.js';
import type { AgentSovereignOptions } from '../agent/router/agent-xds.js';
import { silentLogger } from '../common/log.js';
import { runRelay } from './sovereign-relay.js';
import type { RunningRelay, SovereignRelayConfig } from './sovereign-relay.js';

function sovereignOptions(config: SovereignRelayConfig): AgentSovereignOptions {
  return {
    listener: {
      name: 'sovereign',
      address: '127.0.0.1',
      port: 0,
      routeConfigName: 'sovereign-routes',
      tls: { sdsSecretName: 'customer-cert' },
      jwt: {
        issuer: config.issuer,
        audiences: [config.audience],
        jwks: { remote: { uri: config.jwksUri, cluster: 'customer-idp', cacheDurationMs: 600_000 } },
        claimToHeaders: [{ claim: 'sub', header: 'x-customer-subject' }],
      },
      rbac: {
        policies: {
          readers: { principals: [{ and: [{ claim: 'roles', includes: 'reader' }, { remoteIp: '127.0.0.0/8' }] }], permissions: [{ pathPrefix: config.admittedPrefix }] },
        },
      },
    },
    secret: { name: 'customer-cert', certificateChainPem: config.certificateChainPem, privateKeyPem: config.privateKeyPem },
  };
}

async function start(config: SovereignRelayConfig): Promise<RunningRelay> {
  const xds = new AgentXds({
    routes: [{ prefix: '/', upstream: `http://127.0.0.1:${config.upstreamPort}` }],
    listen: { host: '127.0.0.1', port: 0 },
    useBuiltInRouter: true,
    logger: silentLogger(),
  });
  try {
    // Before start(): start() brings the front up once the router has its configuration.
    await xds.setSovereign(sovereignOptions(config));
    await xds.start();
  } catch (reason) {
    await xds.close();
    throw reason;
  }
  const front = xds.sovereignFront;
  const port = front?.address?.port;
  if (front === null || port === undefined) {
    await xds.close();
    throw new Error('the sovereign front did not start');
  }
  const read = async (name: string, label: string): Promise<Record<string, number>> => {
    const metric = front.registry.getSingleMetric(name) as Counter | undefined;
    const values: Record<string, number> = {};
    for (const { labels, value } of (await metric?.get())?.values ?? []) values[String(labels[label])] = value;
    return values;
  };
  return {
    port,
    counts: async () => ({ requests: await read('tether_sovereign_requests_total', 'code'), connections: await read('tether_sovereign_connections_total', 'result') }),
    close: () => xds.close(),
  };
}

runRelay(start);
