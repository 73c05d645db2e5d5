/**
 * `tether data upload|download`: move bytes through the data plane's signed URLs. The signing
 * request goes to the cluster's dataproxy through the gateway (authenticated by the client
 * token); the bytes go straight to the data plane's object store. The control plane sees none of
 * them (I2).
 */
import { basename } from 'node:path';
import type { Command } from 'commander';
import { API_PREFIX, downloadToFile, fileMd5, uploadFile } from '../../agent/dataproxy/index.js';
import { TetherError, getErrorMessage } from '../../common/errors.js';
import { readText } from '../read-text.js';

interface DataOptions {
  gateway: string;
  cluster: string;
  tokenFile: string;
}

async function dataproxyCall<T>(opts: DataOptions, method: string, body: Record<string, unknown>): Promise<T> {
  const token = (await readText(opts.tokenFile, '--token-file')).trim();
  let response: Response;
  try {
    response = await fetch(new URL(`${API_PREFIX}${method}`, opts.gateway), {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, 'tether-cluster': opts.cluster },
      body: JSON.stringify(body),
    });
  } catch (reason) {
    throw new TetherError('GATEWAY_UNREACHABLE', `${opts.gateway}: ${getErrorMessage(reason)}`);
  }
  const text = await response.text();
  if (!response.ok) {
    const code = response.headers.get('tether-error') ?? `HTTP_${response.status}`;
    let message = text.trim();
    try {
      message = (JSON.parse(text) as { message?: string }).message ?? message;
    } catch {
      // plain text answer
    }
    throw new TetherError(code, message);
  }
  return JSON.parse(text) as T;
}

function common(command: Command): Command {
  return command
    .option('--gateway <url>', 'the gateway a client reaches the data plane through', process.env.TETHER_GATEWAY_URL ?? 'http://127.0.0.1:8080')
    .option('--cluster <id>', 'the cluster whose data plane holds the data', 'demo')
    .option('--token-file <file>', 'file holding the client bearer token', '.tether/dev/client-token');
}

export function registerDataCommand(program: Command): void {
  const data = program.command('data').description("move data through the data plane's signed URLs (never through the control plane)");

  common(data.command('upload <file>'))
    .description('upload a file; prints its tether-blob:// URI')
    .requiredOption('--project <project>', 'project')
    .requiredOption('--domain <domain>', 'domain')
    .option('--org <org>', 'organisation', 'dev')
    .action(async (file: string, opts: DataOptions & { project: string; domain: string; org: string }) => {
      const { size, md5 } = await fileMd5(file);
      const location = await dataproxyCall<{ signedUrl: string; nativeUrl: string; headers: Record<string, string> }>(opts, 'CreateUploadLocation', {
        org: opts.org,
        project: opts.project,
        domain: opts.domain,
        filename: basename(file),
        contentMd5: md5,
        contentLength: size,
      });
      await uploadFile(location.signedUrl, location.headers, file);
      process.stdout.write(`${location.nativeUrl}\n`);
    });

  common(data.command('download <uri>'))
    .description('download a tether-blob:// object to a file')
    .requiredOption('--out <file>', 'where to write it')
    .action(async (uri: string, opts: DataOptions & { out: string }) => {
      const link = await dataproxyCall<{ signedUrl: string }>(opts, 'CreateDownloadLink', { uri });
      const { size } = await downloadToFile(link.signedUrl, opts.out);
      process.stderr.write(`${size} bytes → ${opts.out}\n`);
    });
}
