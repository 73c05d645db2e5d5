/**
 * `tether agent --config F`: runs the agent's tunnel side from a YAML file (see agent/options.ts;
 * `tls` holds the workload certificate and the trust bundle for the gateways' certificates;
 * `sovereignty` file paths, the sovereign listener's certificate, key and JWKS files included, like
 * the `tls` ones, are relative to the config file).
 */
import { dirname, resolve } from 'node:path';
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
      // The customer's files (public key, mode document, state) are named relative to the config file.
      const sovereignty = config.sovereignty;
      if (typeof sovereignty === 'object' && sovereignty !== null && !Array.isArray(sovereignty)) {
        const fields = { ...(sovereignty as Record<string, unknown>) };
        const base = dirname(resolve(opts.config));
        const relative = (record: Record<string, unknown>, names: string[]): void => {
          for (const name of names) {
            const value = record[name];
            if (typeof value === 'string') record[name] = resolve(base, value);
          }
        };
        const object = (value: unknown): Record<string, unknown> | null => (typeof value === 'object' && value !== null && !Array.isArray(value) ? { ...(value as Record<string, unknown>) } : null);
        relative(fields, ['customerKeyFile', 'modeFile', 'stateFile']);
        // The sovereign listener's certificate, key and JWKS files too.
        const listener = object(fields.listener);
        if (listener !== null) {
          const tls = object(listener.tls);
          if (tls !== null) relative(tls, ['certFile', 'keyFile']);
          const jwt = object(listener.jwt);
          const jwks = object(jwt?.jwks);
          if (jwks !== null) relative(jwks, ['file']);
          listener.tls = tls ?? listener.tls;
          if (jwt !== null) listener.jwt = { ...jwt, ...(jwks === null ? {} : { jwks }) };
          fields.listener = listener;
        }
        config.sovereignty = fields;
      }
      const logger = createLogger('agent');
      const agent = new Agent({ ...(config as Omit<AgentOptions, 'tls'>), tls, logger });
      try {
        await agent.start();
      } catch (reason) {
        // What did start (admin, xDS server) must not keep the process alive after the error.
        await agent.close();
        throw reason;
      }
      const admin = agent.adminAddress;
      const adminText = admin === null ? '' : `; admin on http://${admin.address}:${admin.port}`;
      if (agent.mode === 'sovereign') {
        const seq = agent.modeDocument?.seq;
        const listening = agent.sovereignAddress;
        const listenerText = listening === null ? '' : `; sovereign listener on ${listening.address}:${listening.port}`;
        process.stdout.write(`agent in sovereign mode (${seq === undefined ? 'no valid customer-signed mode document' : `customer-signed document seq ${seq}`}): no tunnel is dialed${listenerText}${adminText}\n`);
      } else process.stdout.write(`agent dialing ${agent.config.gateways.join(', ')}${adminText}\n`);
      handleSignals({ services: [agent], graceMs: agent.config.drainGraceMs, logger });
    });
}
