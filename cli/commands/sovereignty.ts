/**
 * `tether sovereignty …`: the customer's approval of a cluster's mode (README: sovereign mode, the
 * switch).
 *
 *   tether sovereignty keygen --out PREFIX [--algorithm ed25519|p-256] [--force]
 *       the customer's key pair: PREFIX.key (private, 0600; stays with the customer) and
 *       PREFIX.pub.pem (public; pinned in the agent's `sovereignty.customerKey(File)`)
 *   tether sovereignty sign --key K --cluster C --mode sovereign|tunnel --out F [--seq N]
 *       a signed mode document; `seq` defaults to the signing time in milliseconds, so a newer
 *       document from the same clock always has a higher one (the agent refuses a lower or equal one)
 *   tether sovereignty verify --public-key P --file F [--cluster C]
 *       what the agent would say of the document (exit 1 with the refusal code otherwise)
 */
import { generateKeyPairSync } from 'node:crypto';
import { access, chmod, rename, writeFile } from 'node:fs/promises';
import { Option, type Command } from 'commander';
import {
  ModeErrorCode,
  importCustomerPrivateKey,
  importCustomerPublicKey,
  keyThumbprint,
  signModeDocument,
  verifyModeDocument,
  type ClusterMode,
  type CustomerKeyInput,
} from '../../agent/mode-document.js';
import { TetherError } from '../../common/errors.js';
import { readText } from '../read-text.js';

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** Write whole or not at all (the agent watches the file: it must never read half a document). */
async function writeAtomically(path: string, data: string, mode: number): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, data, { mode });
  await chmod(temporary, mode);
  await rename(temporary, path);
}

/** A key file's contents: PEM as text, or a JWK when the file holds JSON. */
async function readKey(path: string, what: string): Promise<CustomerKeyInput> {
  const text = (await readText(path, what)).trim();
  if (!text.startsWith('{')) return text;
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new TetherError(ModeErrorCode.KEY_INVALID, `${what} ${path}: neither PEM nor a JWK (invalid JSON)`);
  }
}

function parseSeq(value: string): number {
  const seq = Number(value);
  if (!Number.isSafeInteger(seq) || seq < 1) throw new TetherError('INVALID_OPTIONS', `--seq: expected a positive integer, got ${value}`);
  return seq;
}

interface KeygenOptions {
  out: string;
  algorithm: 'ed25519' | 'p-256';
  force?: boolean;
}

interface SignOptions {
  key: string;
  cluster: string;
  mode: ClusterMode;
  out: string;
  seq?: number;
}

interface VerifyOptions {
  publicKey: string;
  file: string;
  cluster?: string;
}

export function registerSovereigntyCommand(program: Command): void {
  const sovereignty = program.command('sovereignty').description("the customer's signed approval of a cluster's mode (tunnel or sovereign)");

  sovereignty
    .command('keygen')
    .description("create the customer's signing key pair (the private key never goes to the agent or the vendor)")
    .requiredOption('--out <prefix>', 'writes PREFIX.key (private) and PREFIX.pub.pem (public)')
    .addOption(new Option('--algorithm <algorithm>', 'key algorithm').choices(['ed25519', 'p-256']).default('ed25519'))
    .option('--force', 'overwrite existing files')
    .action(async (opts: KeygenOptions) => {
      const keyFile = `${opts.out}.key`;
      const publicFile = `${opts.out}.pub.pem`;
      if (opts.force !== true) {
        for (const file of [keyFile, publicFile]) if (await exists(file)) throw new TetherError('FILE_EXISTS', `${file} exists; pass --force to overwrite`);
      }
      const pair = opts.algorithm === 'p-256' ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' }) : generateKeyPairSync('ed25519');
      await writeAtomically(keyFile, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), 0o600);
      await writeAtomically(publicFile, pair.publicKey.export({ type: 'spki', format: 'pem' }).toString(), 0o644);
      print(`wrote ${keyFile} (private: keep it with the customer) and ${publicFile} (pin it in the agent's sovereignty.customerKeyFile)`);
      print(`key thumbprint (RFC 7638, SHA-256): ${await keyThumbprint(pair.publicKey)}`);
    });

  sovereignty
    .command('sign')
    .description('sign a mode document for one cluster')
    .requiredOption('--key <file>', "the customer's private key (PKCS#8 PEM or private JWK)")
    .requiredOption('--cluster <id>', 'the cluster the document is for')
    .addOption(new Option('--mode <mode>', 'the approved mode').choices(['sovereign', 'tunnel']).makeOptionMandatory())
    .requiredOption('--out <file>', 'where to write the document (replaced atomically)')
    .option('--seq <n>', 'sequence number; must exceed the one in force (default: now, in ms)', parseSeq)
    .action(async (opts: SignOptions) => {
      const key = importCustomerPrivateKey(await readKey(opts.key, 'private key'));
      const now = Date.now();
      const document = { cluster: opts.cluster, mode: opts.mode, seq: opts.seq ?? now, iat: Math.floor(now / 1000) };
      const jws = await signModeDocument(document, key);
      await writeAtomically(opts.out, `${jws}\n`, 0o644);
      print(`signed ${opts.out}: cluster ${document.cluster}, mode ${document.mode}, seq ${document.seq}, issued ${new Date(document.iat * 1000).toISOString()}`);
      print(`key thumbprint: ${await keyThumbprint(key)}`);
    });

  sovereignty
    .command('verify')
    .description('check a mode document as the agent would (signature, cluster, form); exit 1 with its code when refused')
    .requiredOption('--public-key <file>', "the customer's public key (SPKI PEM or public JWK), as pinned in the agent")
    .requiredOption('--file <file>', 'the mode document')
    .option('--cluster <id>', 'the cluster the agent serves (checked when given)')
    .action(async (opts: VerifyOptions) => {
      const key = importCustomerPublicKey(await readKey(opts.publicKey, 'public key'));
      const text = await readText(opts.file, 'mode document');
      const document = await verifyModeDocument(text, key, opts.cluster);
      print(`valid: cluster ${document.cluster}, mode ${document.mode}, seq ${document.seq}, issued ${new Date(document.iat * 1000).toISOString()}, alg ${document.alg}`);
      print(`key thumbprint: ${await keyThumbprint(key)}`);
      print('an agent takes it when its seq is above the one in force (the replay guard is the agent\'s: it knows that one)');
    });
}
