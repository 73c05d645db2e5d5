/** `tether dev`: run the whole system locally and print what to try. */
import type { Command } from 'commander';
import { TetherError } from '../../common/errors.js';
import { createLogger } from '../../common/log.js';
import { handleSignals } from '../../common/shutdown.js';
import { startDevSystem } from '../dev-system.js';

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
    .action(async (opts: { stateDir: string; listen: string; upstream?: string; controlListen: string }) => {
      const listen = parseHostPort(opts.listen, '--listen');
      const controlListen = parseHostPort(opts.controlListen, '--control-listen');
      const logger = createLogger('dev', process.env.TETHER_LOG_LEVEL ?? 'warn');
      const system = await startDevSystem({
        stateDir: opts.stateDir,
        listen,
        controlListen,
        ...(opts.upstream === undefined ? {} : { upstream: opts.upstream }),
        logger,
      });
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
