/**
 * The OpenSSH reverse tunnels the tunnel benchmark compares against: a private `sshd` on a loopback
 * port (own host key, own authorized key, own config, foreground) and an `ssh -R` client on the
 * "agent side" forwarding loopback ports on the sshd side to the upstream's ports, with
 * aes128-gcm@openssh.com. Two variants (`SshVariant`), one sshd and one client each:
 *
 * - `session`: the client holds a remote `cat` open instead of using `-N`. Only a session makes
 *   sshd set TCP_NODELAY on its side of the connection, so both ends run without Nagle. `cat`
 *   reads the client's stdin pipe, so it ends when the client does.
 * - `no-command`: `ssh -N -R`, as commonly run. No session, so sshd leaves Nagle on and about one
 *   small request in 75 stalls 40 ms (delayed ACK) on its way through.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { descendants, freePort, runTool, which, type Processes } from './tunnel-processes.js';

export const SSH_CIPHER = 'aes128-gcm@openssh.com';
const PRIVSEP_DIR = '/run/sshd';

export class Skip extends Error {}

/** `session`: `ssh -R ... cat` (TCP_NODELAY on both ends); `no-command`: `ssh -N -R` (Nagle on at sshd). */
export type SshVariant = 'session' | 'no-command';

/** How each variant runs, for logs and the results file. */
export const SSH_VARIANTS: Record<SshVariant, string> = {
  session: 'ssh -T -R ... cat: a remote command holds a session open, so sshd sets TCP_NODELAY too',
  'no-command': 'ssh -N -T -R ...: no session, sshd leaves Nagle on (small requests can stall 40 ms)',
};

export interface SshTunnel {
  /** Forwarded port on the sshd side for each upstream port, in the order given. */
  ports: number[];
  notes: string[];
  /** The ssh client and every sshd process (listener, per-connection monitor and session). */
  pids(): number[];
}

/** Resolves when `port` accepts a TCP connection; rejects after `timeoutMs`. */
export async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export async function startSshTunnel(processes: Processes, dir: string, upstreamPorts: number[], variant: SshVariant): Promise<SshTunnel> {
  const notes: string[] = [];
  const sshd = which('sshd');
  const ssh = which('ssh');
  const keygen = which('ssh-keygen');
  if (sshd === null) throw new Skip('sshd not found: install the Debian package openssh-server');
  if (ssh === null || keygen === null) throw new Skip('ssh/ssh-keygen not found: install the Debian package openssh-client');
  if (!existsSync(PRIVSEP_DIR)) {
    if (process.getuid?.() !== 0) throw new Skip(`${PRIVSEP_DIR} (sshd's privilege separation folder) is missing and this is not root`);
    await mkdir(PRIVSEP_DIR, { mode: 0o755 });
    notes.push(`created ${PRIVSEP_DIR} (sshd's privilege separation folder)`);
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const hostKey = join(dir, 'host_ed25519');
  const clientKey = join(dir, 'client_ed25519');
  for (const key of [hostKey, clientKey]) {
    const made = await runTool(processes, keygen, ['-q', '-t', 'ed25519', '-N', '', '-C', 'tether-bench', '-f', key], 10_000);
    if (made.code !== 0) throw new Error(`ssh-keygen failed: ${made.stderr}`);
  }
  await writeFile(join(dir, 'authorized_keys'), await readFile(`${clientKey}.pub`), { mode: 0o600 });
  const port = await freePort();
  const config = [
    `Port ${port}`,
    'ListenAddress 127.0.0.1',
    `HostKey ${hostKey}`,
    'PidFile none',
    `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
    'StrictModes no',
    'UsePAM no',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'PubkeyAuthentication yes',
    'PermitRootLogin prohibit-password',
    'AllowTcpForwarding remote',
    'GatewayPorts no',
    'X11Forwarding no',
    'PermitTTY no',
    `Ciphers ${SSH_CIPHER}`,
    'Compression no',
    'LogLevel ERROR',
    '',
  ].join('\n');
  const configFile = join(dir, 'sshd_config');
  await writeFile(configFile, config, { mode: 0o600 });
  const daemon = processes.spawn(`sshd (${variant})`, sshd, ['-f', configFile, '-D', '-e']);
  await Promise.race([
    waitForPort(port, 10_000),
    daemon.exited.then((code) => {
      throw new Error(`sshd exited (${String(code)}): ${daemon.output()}`);
    }),
  ]);

  const user = process.env.USER ?? 'root';
  const args = [
    '-F', '/dev/null',
    '-i', clientKey,
    '-p', String(port),
    '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'BatchMode=yes',
    '-o', 'ExitOnForwardFailure=yes',
    '-o', `Ciphers=${SSH_CIPHER}`,
    '-o', 'Compression=no',
    '-T',
  ];
  if (variant === 'no-command') args.push('-N');
  for (const upstream of upstreamPorts) args.push('-R', `127.0.0.1:0:127.0.0.1:${upstream}`);
  args.push(`${user}@127.0.0.1`);
  if (variant === 'session') args.push('cat');
  const name = variant === 'session' ? 'ssh -R (cat)' : 'ssh -N -R';
  // stdin stays a pipe for both: `cat` reads it, and with -N nothing reads it.
  const client = processes.spawn(name, ssh, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const allocated = new Map<number, number>();
  const ready = new Promise<void>((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`${name} did not report its forwards within 15 s: ${client.output()}`)), 15_000);
    client.child.stderr?.on('data', (chunk: Buffer) => {
      seen += chunk.toString('utf8');
      for (const match of seen.matchAll(/Allocated port (\d+) for remote forward to [^:]+:(\d+)/g)) allocated.set(Number(match[2]), Number(match[1]));
      if (upstreamPorts.every((p) => allocated.has(p))) {
        clearTimeout(timer);
        resolve();
      }
    });
    void client.exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${String(code)}): ${client.output()}`));
    });
  });
  await ready;
  const ports = upstreamPorts.map((p) => allocated.get(p) ?? 0);
  for (const forwarded of ports) await waitForPort(forwarded, 10_000);
  const pids = (): number[] => {
    const listener = daemon.child.pid;
    return [client.child.pid, listener, ...(listener === undefined ? [] : descendants(listener))].filter((pid): pid is number => pid !== undefined);
  };
  return { ports, notes, pids };
}
