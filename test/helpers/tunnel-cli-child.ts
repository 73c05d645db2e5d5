/** Runs `tether gateway|agent …` in a child process without cli/main.ts (argv after the script). */
import { Command } from 'commander';
import { registerAgentCommand } from '../../cli/commands/agent.js';
import { registerGatewayCommand } from '../../cli/commands/gateway.js';

// A test worker that crashes cannot kill its children: exit when the parent is gone.
const parentPid = process.ppid;
setInterval(() => {
  if (process.ppid !== parentPid) process.exit(1);
}, 500).unref();


const program = new Command('tether').exitOverride();
registerGatewayCommand(program);
registerAgentCommand(program);
await program.parseAsync(process.argv.slice(2), { from: 'user' });
