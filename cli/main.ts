/**
 * The `tether` command. Each subcommand lives in `cli/commands/<name>.ts` and registers itself
 * here; only commands that work are listed.
 */
import { Command, CommanderError } from 'commander';
import { TetherError, getErrorMessage } from '../common/errors.js';
import { setTraceSpec } from '../common/log.js';
import { registerAgentCommand } from './commands/agent.js';
import { registerCertsCommand } from './commands/certs.js';
import { registerControlCommand } from './commands/control.js';
import { registerDataCommand } from './commands/data.js';
import { registerDevCommand } from './commands/dev.js';
import { registerGatewayCommand } from './commands/gateway.js';
import { registerSovereigntyCommand } from './commands/sovereignty.js';
import { registerXdsCommand } from './commands/xds.js';

export function buildProgram(): Command {
  const program = new Command('tether')
    .description('tether: a hosted control plane and a customer-hosted data plane joined by an outbound tunnel')
    .option('--trace <tracers>', 'enable named debug tracers (comma list, "all", "-name" to exclude)')
    .showHelpAfterError()
    .exitOverride();
  program.hook('preAction', (cmd) => {
    const tracers = cmd.opts<{ trace?: string }>().trace;
    if (tracers !== undefined) setTraceSpec(tracers);
  });
  registerDevCommand(program);
  registerCertsCommand(program);
  registerGatewayCommand(program);
  registerAgentCommand(program);
  registerControlCommand(program);
  registerXdsCommand(program);
  registerDataCommand(program);
  registerSovereigntyCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (reason) {
    if (reason instanceof CommanderError) {
      process.exitCode = reason.exitCode;
      return;
    }
    const code = reason instanceof TetherError ? reason.code : 'INTERNAL';
    process.stderr.write(`tether: ${code}: ${reason instanceof TetherError ? reason.rawMessage : getErrorMessage(reason)}\n`);
    process.exitCode = 1;
  }
}
