/**
 * Which addresses a front that accepts connections itself (the sovereign front) may listen on.
 * Its own module, without xDS types, so that the agent's options can check a configured listener
 * address without loading the generated Envoy code.
 */
import { BlockList, isIP } from 'node:net';

/**
 * Addresses a front may listen on: loopback, and private ranges a cluster network uses (RFC 1918,
 * RFC 6598 shared space, IPv6 unique-local). Never a wildcard (it would include public interfaces).
 */
const IN_CLUSTER = (() => {
  const list = new BlockList();
  list.addSubnet('127.0.0.0', 8, 'ipv4');
  list.addSubnet('10.0.0.0', 8, 'ipv4');
  list.addSubnet('172.16.0.0', 12, 'ipv4');
  list.addSubnet('192.168.0.0', 16, 'ipv4');
  list.addSubnet('100.64.0.0', 10, 'ipv4');
  list.addAddress('::1', 'ipv6');
  list.addSubnet('fc00::', 7, 'ipv6');
  return list;
})();

/** Why `host` is not a listen address for a front, or null when it is. */
export function listenAddressProblem(host: string): string | null {
  const family = isIP(host);
  if (family === 0) return `"${host}" is not an IP address literal`;
  if (!IN_CLUSTER.check(host, family === 4 ? 'ipv4' : 'ipv6')) return `"${host}" is not a loopback or in-cluster (private) address`;
  return null;
}
