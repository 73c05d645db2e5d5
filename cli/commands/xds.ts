/** `tether xds --config F`: serve a declarative xDS file to Envoy and proxyless gRPC, reloading on change. */
import type { Command } from 'commander';
import { AdminServer } from '../../common/admin-server.js';
import { TetherError } from '../../common/errors.js';
import { createLogger } from '../../common/log.js';
import { createRegistry } from '../../common/metrics.js';
import { handleSignals } from '../../common/shutdown.js';
import { ConfigFileSource } from '../../xds/config-file.js';
import { XdsServer } from '../../xds/server.js';
import type { ClientKind } from '../../xds/client-kind.js';

function hostPort(value: string, flag: string): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(value);
  const port = Number(match?.[2]);
  if (match === null || match[1] === undefined || port > 65535) {
    throw new TetherError('INVALID_OPTIONS', `${flag}: expected HOST:PORT, got "${value}"`);
  }
  return { host: match[1].replace(/^\[|\]$/g, ''), port };
}

export function registerXdsCommand(program: Command): void {
  program
    .command('xds')
    .description('serve a declarative xDS config file (services, routes, weights, endpoints, listeners) over ADS; reloads on change')
    .requiredOption('--config <file>', 'YAML file to serve (see xds/config-file.ts for the format)')
    .option('--listen <host:port>', 'xDS gRPC address', '127.0.0.1:18000')
    .option('--admin <host:port>', 'metrics and health address', '127.0.0.1:9901')
    .option('--validate-for <kinds>', 'always validate for these client kinds (comma list of envoy,grpc)', 'envoy,grpc')
    .option('--rollback-on-nack', 'put the previous configuration back when a client NACKs the current one')
    .action(async (opts: { config: string; listen: string; admin: string; validateFor: string; rollbackOnNack?: boolean }) => {
      const logger = createLogger('xds', process.env.TETHER_LOG_LEVEL ?? 'info');
      const kinds = opts.validateFor.split(',').map((k) => k.trim()).filter((k) => k !== '');
      for (const kind of kinds) {
        if (kind !== 'envoy' && kind !== 'grpc') throw new TetherError('INVALID_OPTIONS', `--validate-for: unknown client kind "${kind}"`);
      }
      const registry = createRegistry({ defaultLabels: { component: 'xds' }, processMetrics: true });
      const server = new XdsServer({ registry, logger, validateFor: kinds as ClientKind[], rollbackOnNack: opts.rollbackOnNack === true });
      const source = new ConfigFileSource(opts.config, server, logger);
      await source.start();
      const bound = await server.listen(hostPort(opts.listen, '--listen'));
      const admin = new AdminServer({ registry, ...hostPort(opts.admin, '--admin'), readiness: () => ({ ready: true, details: { clients: server.sessionCount } }) });
      const adminAddress = await admin.listen();
      process.stdout.write(`tether xds: serving ${source.file} on ${bound.host}:${bound.port}; metrics on http://${adminAddress.address}:${adminAddress.port}/metrics\n`);
      handleSignals({ services: [source, server, admin], graceMs: 5000, logger });
    });
}
