/** `tether control`: serve the control plane; `tether control rotate-key`: rotate the KEK. */
import type { Command } from 'commander';
import { getErrorMessage, TetherError } from '../../common/errors.js';
import { createLogger } from '../../common/log.js';
import { handleSignals } from '../../common/shutdown.js';
import { readText } from '../read-text.js';
import { loadControlConfig } from '../../control/config.js';
import { rotateKey } from '../../control/rotate-key.js';
import { ControlServer } from '../../control/server.js';

export function registerControlCommand(program: Command): void {
  const control = program
    .command('control')
    .description('serve the control plane (metadata API over gRPC and JSON/HTTP, scheduler)')
    .option('--config <file>', 'control-plane config (YAML or JSON)')
    .option('--grace <ms>', 'drain time on SIGINT/SIGTERM', '5000')
    .action(async (opts: { config?: string; grace: string }) => {
      if (opts.config === undefined) throw new TetherError('INVALID_OPTIONS', 'tether control: --config <file> is required');
      const logger = createLogger('control', process.env.TETHER_LOG_LEVEL ?? 'info');
      const server = await ControlServer.start(await loadControlConfig(opts.config), { logger });
      process.stdout.write(`control plane: gRPC on port ${server.grpcPort}, JSON/HTTP on port ${server.httpPort}\n`);
      handleSignals({ services: [server], graceMs: Number(opts.grace), logger });
    });

  control
    .command('rotate-key')
    .description('make a new key-encryption key primary and re-wrap every data key under it (the store keeps serving)')
    .option('--config <file>', 'control-plane config (store path and key file)')
    .option('--new-key-id <id>', 'id of the new KEK (never reuse an id)')
    .option('--rewrap-only', 're-wrap to the current primary without generating a key')
    .option('--retire-old', 'afterwards remove old KEKs that no data key uses from the key file')
    .option('--batch <n>', 'data keys per transaction', '256')
    .action(async (opts: { config?: string; newKeyId?: string; rewrapOnly?: boolean; retireOld?: boolean; batch: string }) => {
      const configPath = opts.config ?? control.opts<{ config?: string }>().config;
      if (configPath === undefined) throw new TetherError('INVALID_OPTIONS', 'tether control rotate-key: --config <file> is required');
      const config = await loadControlConfig(configPath);
      const result = await rotateKey({
        storePath: config.store.path,
        keyFile: config.store.keyFile,
        newKeyId: opts.newKeyId,
        rewrapOnly: opts.rewrapOnly === true,
        retireOld: opts.retireOld === true,
        batchSize: Number(opts.batch),
      });
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    });

  control
    .command('call <method> [json]')
    .description('call the JSON API, e.g. `tether control call RunService/GetRun \'{"runId":"r…"}\'` (token from --token-file or TETHER_TOKEN)')
    .option('--url <url>', 'the control plane\'s JSON/HTTP address', process.env.TETHER_CONTROL_URL ?? 'http://127.0.0.1:7080')
    .option('--token-file <file>', 'file holding the bearer token')
    .action(async (method: string, json: string | undefined, opts: { url: string; tokenFile?: string }) => {
      const token = opts.tokenFile !== undefined ? (await readText(opts.tokenFile, '--token-file')).trim() : process.env.TETHER_TOKEN;
      const path = method.startsWith('/') ? method : `/${method.includes('.') ? method : `tether.control.v1.${method}`}`;
      let response: Response;
      try {
        response = await fetch(new URL(path, opts.url), {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(token === undefined || token === '' ? {} : { authorization: `Bearer ${token}` }) },
          body: json ?? '{}',
        });
      } catch (reason) {
        throw new TetherError('CONTROL_UNREACHABLE', `${opts.url}: ${getErrorMessage(reason)}`);
      }
      const text = await response.text();
      if (!response.ok) {
        let code = `HTTP_${response.status}`;
        let message = text;
        try {
          const body = JSON.parse(text) as { code?: string; message?: string };
          code = body.code ?? code;
          message = body.message ?? message;
        } catch {
          // not JSON: keep the text
        }
        throw new TetherError(code, message);
      }
      process.stdout.write(`${JSON.stringify(JSON.parse(text), null, 2)}\n`);
    });
}
