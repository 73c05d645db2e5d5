/** `tether dev` (`--sovereign`: the cluster in sovereign mode): run the whole system locally and print what to try. */
import type { Command } from 'commander';
import { TetherError } from '../../common/errors.js';
import { createLogger } from '../../common/log.js';
import { handleSignals } from '../../common/shutdown.js';
import { startDevSystem } from '../dev-system.js';
import type { DevSovereign, DevSystem } from '../dev-system.js';

/** `HOST:PORT` (IPv6 in brackets) given to `flag`, kept with the flag's name for listen errors. */
export function parseHostPort(value: string, flag = '--listen'): { host: string; port: number; flag: string } {
  const match = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(value);
  const port = Number(match?.[2]);
  if (match === null || match[1] === undefined || port > 65535) {
    throw new TetherError('INVALID_OPTIONS', `${flag}: expected HOST:PORT, got "${value}"`);
  }
  return { host: match[1].replace(/^\[|\]$/g, ''), port, flag };
}

export function registerDevCommand(program: Command): void {
  program
    .command('dev')
    .description('run gateway, agent, identity issuer and a demo upstream locally; prints what to try')
    .option('--state-dir <dir>', 'where the local CA and dev issuer keys are kept', '.tether/dev')
    .option('--listen <host:port>', 'cleartext client listener (HTTP/1.1 and h2c); port 0 picks one', '127.0.0.1:8080')
    .option('--upstream <url>', "point the demo cluster's default route at this HTTP server")
    .option('--control-listen <host:port>', "the control plane's JSON/HTTP API; port 0 picks one", '127.0.0.1:7080')
    .option('--sovereign', "sovereign mode: the customer signs it, the agent dials no tunnel and serves its sovereign listener behind HAProxy (when installed)")
    .option('--sovereign-listen <host:port>', "with --sovereign: where clients connect (HAProxy's frontend, or the listener without HAProxy); port 0 picks one", '127.0.0.1:0')
    .action(async (opts: { stateDir: string; listen: string; upstream?: string; controlListen: string; sovereign?: boolean; sovereignListen: string }) => {
      const listen = parseHostPort(opts.listen, '--listen');
      const controlListen = parseHostPort(opts.controlListen, '--control-listen');
      const sovereignListen = opts.sovereign === true ? parseHostPort(opts.sovereignListen, '--sovereign-listen') : null;
      const logger = createLogger('dev', process.env.TETHER_LOG_LEVEL ?? 'warn');
      const system = await startDevSystem({
        stateDir: opts.stateDir,
        listen,
        controlListen,
        ...(opts.upstream === undefined ? {} : { upstream: opts.upstream }),
        ...(sovereignListen === null ? {} : { sovereign: { listen: sovereignListen } }),
        logger,
      });
      if (system.sovereign !== null) {
        process.stdout.write(`${sovereignLines(system).join('\n')}\n`);
        handleSignals({ services: [system], graceMs: 5_000, logger });
        return;
      }
      const lines = [
        'tether dev is running: dev identity issuer, control plane, gateway, agent (cluster "demo") with executor and dataproxy, demo upstream.',
        `  control API:     ${system.controlUrl}  (token: ${system.controlTokenFile})`,
        `  console:         ${system.consoleUrl}  (log in with the token in ${system.controlTokenFile})`,
        `  agent identity:  ${system.agentCertificate.spiffeId ?? '?'} (key in memory only, expires ${system.agentCertificate.notAfter.toISOString()})`,
        `  trust bundle:    ${system.caFile}`,
        `  client token:    ${system.clientTokenFile}`,
        `  gateway metrics: ${system.gatewayAdminUrl}/metrics`,
        `  agent readiness: ${system.agentAdminUrl}/readyz`,
        '',
        'Try:',
        `  curl -H "authorization: Bearer $(cat ${system.clientTokenFile})" -H "host: ${system.clusterHost}" ${system.clientUrl}/hello`,
        `  curl -H "authorization: Bearer $(cat ${system.clientTokenFile})" -H "tether-cluster: demo" ${system.clientUrl}/hello`,
        `  curl --cacert ${system.caFile} -H "authorization: Bearer $(cat ${system.clientTokenFile})" --resolve ${system.clusterHost}:${new URL(system.tlsUrl).port}:127.0.0.1 https://${system.clusterHost}:${new URL(system.tlsUrl).port}/hello`,
        `  curl ${system.clientUrl}/hello -H "tether-cluster: demo"     # no token: 401`,
        '',
        `  ./bin/tether.js control call --url ${system.controlUrl} --token-file ${system.controlTokenFile} ClusterService/ListClusters '{"org":"dev"}'`,
        '  (README.md "Walkthrough" registers a task, runs it and downloads its output through signed URLs)',
        '',
        `client-url: ${system.clientUrl}`,
        `control-url: ${system.controlUrl}`,
        `console-url: ${system.consoleUrl}`,
        `host: ${system.clusterHost}`,
        '',
        'Ctrl-C drains and stops.',
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
      handleSignals({ services: [system], graceMs: 5_000, logger });
    });
}

/** What `tether dev --sovereign` prints: what runs, and requests to try (one admitted, one 403, one 401, the vendor's path). */
function sovereignLines(system: DevSystem): string[] {
  const sovereign = system.sovereign as DevSovereign;
  const { files } = sovereign;
  const proxyFlag = sovereign.haproxy.running ? '' : ' --haproxy-protocol';
  const url = `${sovereign.url}/hello`;
  const curl = (token: string | null): string => `curl -si${proxyFlag} --cacert ${system.caFile}${token === null ? '' : ` -H "authorization: Bearer $(cat ${token})"`} ${url}`;
  return [
    `tether dev is running in sovereign mode: cluster "demo" is sovereign by the customer's signed mode document (seq ${files.seq}); the agent dials no tunnel and serves its sovereign listener; control plane, gateway and dev issuer run as usual.`,
    sovereign.haproxy.running
      ? `  load balancer:     HAProxy on ${sovereign.url.slice('https://'.length)} (TLS passed through, send-proxy-v2) -> sovereign listener ${sovereign.listenerUrl}`
      : `  load balancer:     none: ${sovereign.haproxy.missing}. The sovereign listener ${sovereign.listenerUrl} is reached directly; it requires a PROXY header (curl --haproxy-protocol sends one).`,
    `  customer key:      ${files.customerKeyFile} (public: ${files.customerPublicKeyFile}, pinned in the agent)`,
    `  mode document:     ${files.modeFile} (sign tunnel to switch back: ./bin/tether.js sovereignty sign --key ${files.customerKeyFile} --cluster demo --mode tunnel --out ${files.modeFile})`,
    `  customer IdP:      JWKS ${files.jwksFile}; tokens ${files.readerTokenFile} (role reader), ${files.noRoleTokenFile} (no role)`,
    `  trust bundle:      ${system.caFile}`,
    `  agent readiness:   ${system.agentAdminUrl}/readyz  (metrics: ${system.agentAdminUrl}/metrics, tether_agent_mode and tether_agent_tunnel_connections)`,
    `  control API:       ${system.controlUrl}  (token: ${system.controlTokenFile})`,
    '',
    'Try:',
    `  ${curl(files.readerTokenFile)}     # 200`,
    `  ${curl(files.noRoleTokenFile)}     # 403 RBAC_DENIED`,
    `  ${curl(null)}     # 401 UNAUTHENTICATED`,
    `  curl -si -H "authorization: Bearer $(cat ${system.clientTokenFile})" -H "tether-cluster: demo" ${system.clientUrl}/hello     # 403 CLUSTER_SOVEREIGN (the vendor's gateway)`,
    '',
    `sovereign-url: ${sovereign.url}`,
    `sovereign-haproxy: ${sovereign.haproxy.running ? 'yes' : 'no'}`,
    `client-url: ${system.clientUrl}`,
    `control-url: ${system.controlUrl}`,
    `host: ${system.clusterHost}`,
    '',
    'Ctrl-C drains and stops.',
  ];
}
