/**
 * The part of a listener a front that accepts connections itself must enforce: its socket address
 * (loopback or an in-cluster address only), the PROXY protocol listener filter, the filter chain's
 * downstream TLS (required), and the jwt_authn and RBAC HTTP filters in their order. Compiled only
 * for a router whose front enforces them (the sovereign front, `compileListener(l, { downstream:
 * true })`); a router behind the tunnel keeps refusing these fields, since nothing would apply them.
 */
import type { Listener } from '../../xds/gen/envoy/config/listener/v3/listener_pb.js';
import { ListenerFilterSchema } from '../../xds/gen/envoy/config/listener/v3/listener_components_pb.js';
import { SocketAddress_Protocol, SocketAddressSchema } from '../../xds/gen/envoy/config/core/v3/address_pb.js';
import type { HttpConnectionManager } from '../../xds/gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import { JWT_AUTHN_TYPE_URL, PROXY_PROTOCOL_FILTER, PROXY_PROTOCOL_TYPE_URL, RBAC_TYPE_URL, ROUTER_TYPE_URL } from '../../xds/references.js';
import { compileDownstreamTls } from './downstream-tls.js';
import { listenAddressProblem } from './listen-address.js';
import type { DownstreamTls } from './downstream-tls.js';
import { join, onlyFields } from './fields.js';
import type { Problem } from './fields.js';
import { compileJwtAuthn } from './jwt-authn.js';
import type { JwtAuthnConfig } from './jwt-authn.js';
import { compileProxyProtocol } from './proxy-protocol.js';
import type { ProxyProtocolPolicy } from './proxy-protocol.js';
import { compileRbac } from './rbac.js';
import type { CompiledRbac } from './rbac.js';

export { listenAddressProblem } from './listen-address.js';

export type HttpSecurityFilter = { kind: 'jwt_authn'; name: string; config: JwtAuthnConfig } | { kind: 'rbac'; name: string; config: CompiledRbac };

export interface CompiledDownstream {
  address: { host: string; port: number };
  /** null: the listener has no PROXY protocol filter (the peer is the client). */
  proxyProtocol: ProxyProtocolPolicy | null;
  tls: DownstreamTls;
  /** jwt_authn and rbac, in the order the HCM lists them (disabled filters left out). */
  filters: HttpSecurityFilter[];
}

/** The listener-level pieces: address, listener filters, the chain's TLS. */
export function compileDownstreamListener(listener: Listener, problems: Problem[]): Omit<CompiledDownstream, 'filters'> | null {
  let address: CompiledDownstream['address'] | null = null;
  const socket = listener.address?.address.case === 'socketAddress' ? listener.address.address.value : undefined;
  if (socket === undefined) problems.push({ field: 'address', message: 'a socket_address is required' });
  else {
    onlyFields(SocketAddressSchema, socket, ['address', 'port_value', 'protocol'], 'address.socket_address', problems);
    const bad = listenAddressProblem(socket.address);
    if (bad !== null) problems.push({ field: 'address.socket_address.address', message: bad });
    if (socket.protocol !== SocketAddress_Protocol.TCP) problems.push({ field: 'address.socket_address.protocol', message: 'only TCP is supported' });
    if (socket.portSpecifier.case !== 'portValue') problems.push({ field: 'address.socket_address.port_value', message: 'is required' });
    else address = { host: socket.address, port: socket.portSpecifier.value };
  }
  let proxyProtocol: ProxyProtocolPolicy | null = null;
  listener.listenerFilters.forEach((filter, i) => {
    const at = `listener_filters[${i}]`;
    onlyFields(ListenerFilterSchema, filter, ['name', 'typed_config'], at, problems);
    const any = filter.configType.case === 'typedConfig' ? filter.configType.value : undefined;
    const isProxy = any === undefined ? filter.name === PROXY_PROTOCOL_FILTER : any.typeUrl === PROXY_PROTOCOL_TYPE_URL;
    if (!isProxy) {
      problems.push({ field: at, message: `${any?.typeUrl ?? filter.name} unsupported (only ${PROXY_PROTOCOL_FILTER})` });
      return;
    }
    if (proxyProtocol !== null) problems.push({ field: at, message: 'a second PROXY protocol filter' });
    proxyProtocol = compileProxyProtocol(any, join(at, 'typed_config'), problems);
  });
  const chains = listener.filterChains.map((chain, i) => ({ chain, field: `filter_chains[${i}]` }));
  if (listener.defaultFilterChain !== undefined) chains.push({ chain: listener.defaultFilterChain, field: 'default_filter_chain' });
  let tls: DownstreamTls | null = null;
  if (chains.length !== 1) problems.push({ field: 'filter_chains', message: 'exactly one filter chain is supported by the sovereign front' });
  const only = chains[0];
  if (only !== undefined) {
    const transport = only.chain.transportSocket;
    if (transport === undefined) problems.push({ field: join(only.field, 'transport_socket'), message: 'is required (the sovereign front serves TLS only)' });
    else tls = compileDownstreamTls(transport.configType.case === 'typedConfig' ? transport.configType.value : undefined, join(only.field, 'transport_socket.typed_config'), problems);
  }
  if (address === null || tls === null) return null;
  return { address, proxyProtocol, tls };
}

/** jwt_authn and rbac of the HCM, in order; other filters than these and the router are refused. */
export function compileHttpSecurityFilters(hcm: HttpConnectionManager, field: string, problems: Problem[]): HttpSecurityFilter[] {
  const filters: HttpSecurityFilter[] = [];
  const payloadKeys = new Set<string>();
  const kinds = new Set<string>();
  hcm.httpFilters.forEach((filter, i) => {
    const at = join(field, `http_filters[${i}]`);
    const any = filter.configType.case === 'typedConfig' ? filter.configType.value : undefined;
    if (any?.typeUrl === ROUTER_TYPE_URL) return;
    if (filter.disabled) return;
    const cat = join(at, 'typed_config');
    if (any?.typeUrl === JWT_AUTHN_TYPE_URL || any?.typeUrl === RBAC_TYPE_URL) {
      if (kinds.has(any.typeUrl)) problems.push({ field: at, message: 'a second filter of this type is unsupported' });
      kinds.add(any.typeUrl);
    }
    if (any?.typeUrl === JWT_AUTHN_TYPE_URL) {
      const config = compileJwtAuthn(any, cat, problems);
      if (config === null) return;
      for (const key of config.payloadKeys) payloadKeys.add(key);
      filters.push({ kind: 'jwt_authn', name: filter.name, config });
    } else if (any?.typeUrl === RBAC_TYPE_URL) {
      const config = compileRbac(any, cat, payloadKeys, problems);
      if (config !== null) filters.push({ kind: 'rbac', name: filter.name, config });
    } else if (!filter.isOptional) {
      problems.push({ field: cat, message: `${any?.typeUrl ?? filter.name} unsupported` });
    }
  });
  return filters;
}
