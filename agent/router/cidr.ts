/**
 * CIDR ranges matched against address literals without allocating per check: RBAC evaluates
 * `remote_ip`/`direct_remote_ip` on every request, and `net.BlockList.check` builds a SocketAddress
 * each time (~11 µs here, several per request with a few ranges). Addresses are parsed into bytes
 * (IPv4 dotted quads; IPv6 with `::` and an embedded IPv4 tail; a zone index is refused) and the
 * prefix compared bit by bit. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is left to the caller (plainIp).
 */
import { isIP } from 'node:net';

function ipv4Bytes(address: string, into: Uint8Array, at: number): boolean {
  const parts = address.split('.');
  if (parts.length !== 4) return false;
  for (let k = 0; k < 4; k++) {
    const part = parts[k] ?? '';
    if (!/^\d{1,3}$/.test(part)) return false;
    const value = Number(part);
    if (value > 255) return false;
    into[at + k] = value;
  }
  return true;
}

/** The bytes of an IPv4 (4) or IPv6 (16) literal, or null when `address` is not one. */
export function ipBytes(address: string): Uint8Array | null {
  const family = isIP(address);
  if (family === 4) {
    const bytes = new Uint8Array(4);
    return ipv4Bytes(address, bytes, 0) ? bytes : null;
  }
  if (family !== 6 || address.includes('%')) return null;
  const bytes = new Uint8Array(16);
  const halves = address.split('::');
  const groups = (text: string): string[] => (text === '' ? [] : text.split(':'));
  const head = groups(halves[0] ?? '');
  const tail = groups(halves[1] ?? '');
  const wordsOf = (list: string[], out: number[]): boolean => {
    for (const group of list) {
      if (group.includes('.')) {
        const v4 = new Uint8Array(4);
        if (!ipv4Bytes(group, v4, 0)) return false;
        out.push(((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0));
      } else out.push(parseInt(group, 16));
    }
    return true;
  };
  const front: number[] = [];
  const back: number[] = [];
  if (!wordsOf(head, front) || !wordsOf(tail, back)) return null;
  const words = [...front, ...new Array<number>(8 - front.length - back.length).fill(0), ...back];
  if (words.length !== 8) return null;
  words.forEach((word, k) => {
    bytes[2 * k] = word >> 8;
    bytes[2 * k + 1] = word & 0xff;
  });
  return bytes;
}

/** A test for one range: true when `address` (a literal of the range's family) is inside it. */
export function cidrMatcher(prefix: string, bits: number): ((address: string) => boolean) | null {
  const base = ipBytes(prefix);
  if (base === null || bits < 0 || bits > base.length * 8) return null;
  const whole = bits >> 3;
  const rest = bits & 7;
  const mask = rest === 0 ? 0 : (0xff << (8 - rest)) & 0xff;
  return (address) => {
    const bytes = ipBytes(address);
    if (bytes === null || bytes.length !== base.length) return false;
    for (let k = 0; k < whole; k++) if (bytes[k] !== base[k]) return false;
    return rest === 0 || ((bytes[whole] ?? 0) & mask) === ((base[whole] ?? 0) & mask);
  };
}
