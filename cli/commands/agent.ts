/**
 * `tether agent --config F`: runs the agent's tunnel side from a YAML file (see agent/options.ts;
 * `tls` holds the workload certificate and the trust bundle for the gateways' certificates).
 */
import type { Command } from 'commander';
import { Agent, type AgentOptions } from '../../agent/index.js';
import { createLogger } from '../../common/log.js';
import { handleSignals } from '../../common/shutdown.js';
import { loadConfig } from './tunnel-config.js';

export function registerAgentCommand(program: Command): void {
  program
    .command('agent')
    .description('run the agent: dial the gateways and forward tunnelled streams to upstreams')
    .requiredOption('--config <file>', 'YAML config file')
    .action(async (opts: { config: string }) => {
      const { config, tls } = await loadConfig(opts.config);
      const logger = createLogger('agent');
      const agent = new Agent({ ...(config as Omit<AgentOptions, 'tls'>), tls, logger });
      await agent.start();
      const admin = agent.adminAddress;
      process.stdout.write(`agent dialing ${agent.config.gateways.join(', ')}${admin === null ? '' : `; admin on http://${admin.address}:${admin.port}`}\n`);
      handleSignals({ services: [agent], graceMs: agent.config.drainGraceMs, logger });
    });
}
