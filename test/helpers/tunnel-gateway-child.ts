/**
 * A gateway in a child process (for SIGSTOP/SIGKILL tests). Options come as JSON in argv[2];
 * prints `ready <host:port>` on stdout once listening.
 */
import { silentLogger } from '../../common/log.js';
import { Gateway, type GatewayOptions } from '../../gateway/index.js';

// A test worker that crashes cannot kill its children: exit when the parent is gone.
const parentPid = process.ppid;
setInterval(() => {
  if (process.ppid !== parentPid) process.exit(1);
}, 500).unref();


const options = JSON.parse(process.argv[2] ?? '{}') as GatewayOptions;
const gateway = new Gateway({ ...options, logger: silentLogger() });
await gateway.start();
process.stdout.write(`ready ${gateway.address}\n`);
process.on('SIGTERM', () => {
  void gateway.close().then(() => process.exit(0));
});
