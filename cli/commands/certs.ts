/**
 * `tether certs …`: the operator's PKI commands.
 *
 *   tether certs init --dir D --trust-domain T [--algorithm ecdsa-p256|rsa-3072]
 *   tether certs issue --dir D (--workload --cluster C --agent A | --server --dns X --ip Y) --out PREFIX [--ttl 1h]
 *   tether certs inspect FILE
 *   tether certs verify --dir D FILE
 *   tether certs export-p12 --key K --cert C --password P --out F
 *   tether certs rotate --dir D [--finish]
 */
import { access, chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Option, type Command } from 'commander';
import {
  CertificateAuthority,
  KEY_ALGORITHMS,
  exportPkcs12,
  inspectCertificate,
  joinPem,
  parseDuration,
  verifyCertificateChain,
  type IssuedCertificate,
  type KeyAlgorithm,
} from '../../certs/index.js';
import { TetherError } from '../../common/errors.js';
import { readText } from '../read-text.js';

function collect(value: string, previous: string[]): string[] {
  return [...previous, ...value.split(',').map((v) => v.trim()).filter((v) => v !== '')];
}

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

async function writeSecret(path: string, data: string | Buffer): Promise<void> {
  await writeFile(path, data, { mode: 0o600 });
  await chmod(path, 0o600);
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

function algorithmOption(): Option {
  return new Option('--algorithm <algorithm>', 'key algorithm').choices([...KEY_ALGORITHMS]);
}

interface InitOptions {
  dir: string;
  trustDomain: string;
  algorithm?: KeyAlgorithm;
  rootTtl: string;
  intermediateTtl: string;
  force?: boolean;
}

interface IssueOptions {
  dir: string;
  workload?: boolean;
  server?: boolean;
  cluster?: string;
  agent?: string;
  dns: string[];
  ip: string[];
  out: string;
  ttl?: string;
  algorithm?: KeyAlgorithm;
  csr?: string;
}

interface VerifyOptions {
  dir?: string;
  bundle?: string;
  usage?: 'client' | 'server';
  trustDomain?: string;
  requireSpiffe?: boolean;
  revoked: string[];
}

interface ExportOptions {
  key: string;
  cert: string;
  password?: string;
  passwordEnv?: string;
  out: string;
  name?: string;
}

export function registerCertsCommand(program: Command): void {
  const certs = program.command('certs').description('PKI: certificate authorities, issuing, inspecting, exporting');

  certs
    .command('init')
    .description('create a root CA and an issuing intermediate in a folder (key files mode 0600)')
    .requiredOption('--dir <dir>', 'folder for the CA files')
    .requiredOption('--trust-domain <domain>', 'SPIFFE trust domain, e.g. tether.example.com')
    .addOption(algorithmOption().default('ecdsa-p256'))
    .option('--root-ttl <duration>', 'root lifetime', '10y')
    .option('--intermediate-ttl <duration>', 'intermediate lifetime', '1y')
    .option('--force', 'replace an existing CA in the folder')
    .action(async (opts: InitOptions) => {
      if (!opts.force && (await exists(join(opts.dir, 'ca.json')))) {
        throw new TetherError('CA_EXISTS', `${opts.dir} already holds a CA (use --force to replace it)`);
      }
      const ca = await CertificateAuthority.create({
        trustDomain: opts.trustDomain,
        algorithm: opts.algorithm ?? 'ecdsa-p256',
        rootTtlMs: parseDuration(opts.rootTtl),
        intermediateTtlMs: parseDuration(opts.intermediateTtl),
      });
      await ca.save(opts.dir);
      print(
        [
          `created CA for trust domain ${ca.trustDomain} (${ca.algorithm}) in ${opts.dir}`,
          `  root:         ${join(opts.dir, 'root-ca.crt')} (until ${ca.rootNotAfter.toISOString()})`,
          `  intermediate: ${join(opts.dir, 'intermediate-ca.crt')} (until ${ca.intermediateNotAfter.toISOString()})`,
          `  trust bundle: ${join(opts.dir, 'trust-bundle.pem')}`,
          `  keys (0600):  root-ca.key, intermediate-ca.key`,
        ].join('\n'),
      );
    });

  certs
    .command('issue')
    .description('issue a workload certificate (SPIFFE ID) or a server certificate (DNS/IP names)')
    .requiredOption('--dir <dir>', 'CA folder (from "tether certs init")')
    .option('--workload', 'workload certificate: spiffe://<trust-domain>/cluster/<C>/agent/<A>')
    .option('--server', 'server certificate with DNS and IP names')
    .option('--cluster <id>', 'cluster id (workload)')
    .option('--agent <id>', 'agent id (workload)')
    .option('--dns <name>', 'DNS name (server; repeat or comma-separate)', collect, [])
    .option('--ip <address>', 'IP address (server; repeat or comma-separate)', collect, [])
    .requiredOption('--out <prefix>', 'writes <prefix>.crt (leaf + intermediate) and <prefix>.key (0600)')
    .option('--ttl <duration>', 'lifetime (default 1h for workloads, 30d for servers)')
    .addOption(algorithmOption())
    .option('--csr <file>', 'sign this CSR (only its public key is used) instead of generating a key')
    .action(async (opts: IssueOptions) => {
      if (opts.workload === opts.server) throw new TetherError('INVALID_OPTIONS', 'choose exactly one of --workload or --server');
      if (opts.csr !== undefined && opts.algorithm !== undefined) throw new TetherError('INVALID_OPTIONS', '--algorithm does not apply with --csr');
      const ca = await CertificateAuthority.load(opts.dir);
      const ttlMs = opts.ttl === undefined ? undefined : parseDuration(opts.ttl);
      const csrPem = opts.csr === undefined ? undefined : await readText(opts.csr, 'CSR');
      let issued: IssuedCertificate;
      if (opts.workload) {
        if (opts.cluster === undefined || opts.agent === undefined) throw new TetherError('INVALID_OPTIONS', '--workload needs --cluster and --agent');
        if (opts.dns.length + opts.ip.length > 0) throw new TetherError('INVALID_OPTIONS', '--dns/--ip apply to --server only');
        issued =
          csrPem === undefined
            ? await ca.issueWorkload({ clusterId: opts.cluster, agentId: opts.agent, ttlMs, algorithm: opts.algorithm })
            : await ca.signCsr(csrPem, { kind: 'workload', clusterId: opts.cluster, agentId: opts.agent }, { ttlMs });
      } else {
        if (opts.dns.length + opts.ip.length === 0) throw new TetherError('INVALID_OPTIONS', '--server needs at least one --dns or --ip');
        issued =
          csrPem === undefined
            ? await ca.issueServer({ dnsNames: opts.dns, ipAddresses: opts.ip, ttlMs, algorithm: opts.algorithm })
            : await ca.signCsr(csrPem, { kind: 'server', dnsNames: opts.dns, ipAddresses: opts.ip }, { ttlMs });
      }
      const certPath = `${opts.out}.crt`;
      await writeFile(certPath, issued.chainPem);
      const lines = [`issued ${issued.spiffeId ?? [...opts.dns, ...opts.ip].join(', ')}`, `  serial:      ${issued.serialNumber}`, `  valid until: ${issued.notAfter.toISOString()}`, `  chain:       ${certPath}`];
      if (issued.privateKeyPem !== undefined) {
        await writeSecret(`${opts.out}.key`, issued.privateKeyPem);
        lines.push(`  key (0600):  ${opts.out}.key`);
      }
      print(lines.join('\n'));
    });

  certs
    .command('rotate')
    .description('replace the CA with a new root and intermediate, keeping the old root trusted until --finish')
    .requiredOption('--dir <dir>', 'CA folder')
    .addOption(algorithmOption())
    .option('--finish', 'end a rotation: stop trusting the previous roots')
    .action(async (opts: { dir: string; algorithm?: KeyAlgorithm; finish?: boolean }) => {
      const current = await CertificateAuthority.load(opts.dir);
      if (opts.finish) {
        const dropped = current.removeAllTrustedRoots();
        await current.save(opts.dir);
        print(`rotation finished: dropped ${dropped} previous root(s); ${join(opts.dir, 'trust-bundle.pem')} now holds only the current root`);
        return;
      }
      const next = await CertificateAuthority.create({ trustDomain: current.trustDomain, algorithm: opts.algorithm ?? current.algorithm });
      next.addTrustedRoots(current.trustBundlePem());
      await next.save(opts.dir);
      const roots = (next.trustBundlePem().match(/BEGIN CERTIFICATE/g) ?? []).length;
      print(
        [
          `rotated CA for ${next.trustDomain} in ${opts.dir}: new root and intermediate (${next.algorithm}); previous keys replaced`,
          `  ${join(opts.dir, 'trust-bundle.pem')} holds ${roots} roots: distribute it to every verifier,`,
          `  re-issue certificates, then run: tether certs rotate --dir ${opts.dir} --finish`,
        ].join('\n'),
      );
    });

  certs
    .command('inspect')
    .description('summarise the certificates, CSRs and keys in a PEM file')
    .argument('<file>', 'PEM file')
    .action(async (file: string) => {
      print(inspectCertificate(await readText(file, 'file')));
    });

  certs
    .command('verify')
    .description("verify a certificate chain against a CA folder's trust bundle")
    .argument('<file>', 'PEM chain, leaf first (the intermediate of --dir is added)')
    .option('--dir <dir>', 'CA folder whose trust bundle to use')
    .option('--bundle <file>', 'trust bundle PEM (instead of --dir)')
    .addOption(new Option('--usage <usage>', 'required extended key usage').choices(['client', 'server']))
    .option('--trust-domain <domain>', 'a SPIFFE ID must be in this trust domain (default: the CA\'s with --dir)')
    .option('--require-spiffe', 'the leaf must carry a SPIFFE ID')
    .option('--revoked <serial>', 'refuse this serial (repeat or comma-separate)', collect, [])
    .action(async (file: string, opts: VerifyOptions) => {
      if ((opts.dir === undefined) === (opts.bundle === undefined)) throw new TetherError('INVALID_OPTIONS', 'give exactly one of --dir or --bundle');
      let chainPem = await readText(file, 'certificate');
      let trustBundlePem: string;
      let trustDomain = opts.trustDomain;
      if (opts.dir !== undefined) {
        const ca = await CertificateAuthority.load(opts.dir);
        trustBundlePem = ca.trustBundlePem();
        chainPem = joinPem(chainPem, ca.intermediateCertificatePem);
        trustDomain ??= ca.trustDomain;
      } else {
        trustBundlePem = await readText(opts.bundle ?? '', 'trust bundle');
      }
      const peer = await verifyCertificateChain(chainPem, {
        trustBundlePem,
        expectedTrustDomain: trustDomain,
        requireSpiffe: opts.requireSpiffe,
        usage: opts.usage,
        revokedSerials: new Set(opts.revoked),
      });
      const names = [peer.spiffeId, ...peer.dnsNames, ...peer.ipAddresses].filter((n) => n !== undefined).join(', ');
      print(`OK ${names} (serial ${peer.serialNumber}, valid until ${peer.notAfter.toISOString()})`);
    });

  certs
    .command('export-p12')
    .description('write a key and chain as a password-protected PKCS#12 (PFX) file, mode 0600')
    .requiredOption('--key <file>', 'private key PEM')
    .requiredOption('--cert <file>', 'certificate chain PEM, leaf first')
    .option('--password <password>', 'PKCS#12 password (visible to other local users; prefer --password-env)')
    .option('--password-env <name>', 'read the password from this environment variable')
    .requiredOption('--out <file>', 'output .p12 file')
    .option('--name <friendly-name>', 'friendly name stored with the key')
    .action(async (opts: ExportOptions) => {
      if ((opts.password === undefined) === (opts.passwordEnv === undefined)) throw new TetherError('INVALID_OPTIONS', 'give exactly one of --password or --password-env');
      const password = opts.password ?? process.env[opts.passwordEnv ?? ''];
      if (password === undefined || password === '') throw new TetherError('INVALID_OPTIONS', `environment variable ${opts.passwordEnv} is empty or unset`);
      const pfx = exportPkcs12({
        keyPem: await readText(opts.key, 'key'),
        chainPem: await readText(opts.cert, 'certificate chain'),
        password,
        ...(opts.name === undefined ? {} : { friendlyName: opts.name }),
      });
      await writeSecret(opts.out, pfx);
      print(`wrote ${opts.out} (PKCS#12, ${pfx.length} bytes, mode 0600)`);
    });
}
