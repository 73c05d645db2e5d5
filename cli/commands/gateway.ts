/**
 * `tether gateway --config F`: runs a gateway replica from a YAML file (see gateway/options.ts for
 * the fields; `tls` holds the server certificate and the trust bundle for agent certificates;
 * `controlPlane.tokenFile` and `caFile` are taken relative to the file).
 */
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';
import { createLogger } from '../../common/log.js';
import { handleSignals } from '../../common/shutdown.js';
import { Gateway, type GatewayOptions } from '../../gateway/index.js';
import { loadConfig } from './tunnel-config.js';

export function registerGatewayCommand(program: Command): void {
  program
    .command('gateway')
    .description('run a gateway replica: clients and agent tunnels on one TLS port')
    .requiredOption('--config <file>', 'YAML config file')
    .action(async (opts: { config: string }) => {
      const { config, tls } = await loadConfig(opts.config);
      // controlPlane.tokenFile and caFile are relative to the config file, like tls.*File.
      const controlPlane = config.controlPlane;
      if (typeof controlPlane === 'object' && controlPlane !== null) {
        const fields = controlPlane as Record<string, unknown>;
        for (const name of ['tokenFile', 'caFile']) if (typeof fields[name] === 'string') fields[name] = resolve(dirname(resolve(opts.config)), fields[name]);
      }
      const logger = createLogger('gateway');
      const gateway = new Gateway({ ...(config as Omit<GatewayOptions, 'tls'>), tls, logger });
      await gateway.start();
      process.stdout.write(`gateway ${gateway.config.id} listening on ${gateway.url}${gateway.plainUrl === null ? '' : ` and ${gateway.plainUrl}`}\n`);
      if (gateway.adminUrl !== null) process.stdout.write(`admin: ${gateway.adminUrl}\n`);
      handleSignals({ services: [gateway], graceMs: gateway.config.drainGraceMs, logger });
    });
}
