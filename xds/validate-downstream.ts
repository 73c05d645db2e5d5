/**
 * What Envoy refuses in a listener's downstream security: the PROXY protocol listener filter, a
 * filter chain's DownstreamTlsContext, and the jwt_authn and RBAC HTTP filters. Only the rules
 * Envoy itself enforces when it loads the listener (its PGV constraints and the filters' own
 * config checks: a server TLS context needs a certificate, a jwt_authn rule must name a provider
 * that exists, a local JWKS must parse, an RBAC policy needs permissions and principals, CIDR
 * blocks must be IP literals). Problems carry the field path inside the listener.
 */
import { isIP } from 'node:net';
import { fromBinary } from '@bufbuild/protobuf';
import type { DescMessage, MessageShape } from '@bufbuild/protobuf';
import type { CidrRange } from './gen/envoy/config/core/v3/address_pb.js';
import type { Listener } from './gen/envoy/config/listener/v3/listener_pb.js';
import type { Permission, Principal } from './gen/envoy/config/rbac/v3/rbac_pb.js';
import { JwtAuthenticationSchema } from './gen/envoy/extensions/filters/http/jwt_authn/v3/config_pb.js';
import type { JwtRequirement } from './gen/envoy/extensions/filters/http/jwt_authn/v3/config_pb.js';
import { RBACSchema as RbacFilterSchema } from './gen/envoy/extensions/filters/http/rbac/v3/rbac_pb.js';
import { ProxyProtocolSchema } from './gen/envoy/extensions/filters/listener/proxy_protocol/v3/proxy_protocol_pb.js';
import type { HttpConnectionManager } from './gen/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager_pb.js';
import { TlsParameters_TlsProtocol } from './gen/envoy/extensions/transport_sockets/tls/v3/common_pb.js';
import { DownstreamTlsContextSchema } from './gen/envoy/extensions/transport_sockets/tls/v3/tls_pb.js';
import { DOWNSTREAM_TLS_TYPE_URL, JWT_AUTHN_TYPE_URL, PROXY_PROTOCOL_TYPE_URL, RBAC_TYPE_URL } from './references.js';

/** A problem at a field path (relative to the listener). */
export interface FieldProblem {
  field: string;
  message: string;
}

/** RFC 9110 token characters: what Envoy's HTTP_HEADER_NAME well-known regex admits. */
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function decode<Desc extends DescMessage>(schema: Desc, bytes: Uint8Array, field: string, problems: FieldProblem[]): MessageShape<Desc> | null {
  try {
    return fromBinary(schema, bytes);
  } catch {
    problems.push({ field, message: `cannot be decoded as ${schema.typeName}` });
    return null;
  }
}

export function checkListenerSecurity(listener: Listener): FieldProblem[] {
  const problems: FieldProblem[] = [];
  listener.listenerFilters.forEach((filter, i) => {
    const at = `listener_filters[${i}]`;
    if (filter.name === '') problems.push({ field: `${at}.name`, message: 'is empty' });
    if (filter.configType.case === 'typedConfig' && filter.configType.value.typeUrl === PROXY_PROTOCOL_TYPE_URL) {
      const config = decode(ProxyProtocolSchema, filter.configType.value.value, `${at}.typed_config`, problems);
      config?.rules.forEach((rule, k) => {
        if (rule.tlvType >= 256) problems.push({ field: `${at}.typed_config.rules[${k}].tlv_type`, message: 'must be below 256' });
        if ((rule.onTlvPresent?.key ?? '') === '') problems.push({ field: `${at}.typed_config.rules[${k}].on_tlv_present.key`, message: 'is empty' });
      });
    }
  });
  const chains = listener.filterChains.map((chain, i) => ({ chain, field: `filter_chains[${i}]` }));
  if (listener.defaultFilterChain) chains.push({ chain: listener.defaultFilterChain, field: 'default_filter_chain' });
  for (const { chain, field } of chains) {
    const socket = chain.transportSocket;
    if (socket?.configType.case !== 'typedConfig' || socket.configType.value.typeUrl !== DOWNSTREAM_TLS_TYPE_URL) continue;
    const at = `${field}.transport_socket.typed_config`;
    const tls = decode(DownstreamTlsContextSchema, socket.configType.value.value, at, problems);
    const common = tls?.commonTlsContext;
    if (tls === null) continue;
    const certificates = (common?.tlsCertificates.length ?? 0) + (common?.tlsCertificateSdsSecretConfigs.length ?? 0);
    const provider = common?.tlsCertificateProviderInstance ?? common?.tlsCertificateCertificateProviderInstance ?? common?.tlsCertificateCertificateProvider;
    if (certificates === 0 && provider === undefined) problems.push({ field: `${at}.common_tls_context`, message: 'a server TLS context needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)' });
    common?.tlsCertificates.forEach((certificate, k) => {
      const cat = `${at}.common_tls_context.tls_certificates[${k}]`;
      if (certificate.certificateChain === undefined) problems.push({ field: `${cat}.certificate_chain`, message: 'is required' });
      if (certificate.privateKey === undefined && certificate.privateKeyProvider === undefined) problems.push({ field: `${cat}.private_key`, message: 'is required' });
    });
    common?.tlsCertificateSdsSecretConfigs.forEach((config, k) => {
      if (config.name === '') problems.push({ field: `${at}.common_tls_context.tls_certificate_sds_secret_configs[${k}].name`, message: 'is empty' });
    });
    const params = common?.tlsParams;
    if (params !== undefined && params.tlsMaximumProtocolVersion !== TlsParameters_TlsProtocol.TLS_AUTO && params.tlsMinimumProtocolVersion > params.tlsMaximumProtocolVersion) {
      problems.push({ field: `${at}.common_tls_context.tls_params`, message: 'tls_minimum_protocol_version is above tls_maximum_protocol_version' });
    }
  }
  return problems;
}

/** Problems of the jwt_authn and RBAC filters of one HCM (`field` is the HCM's path). */
export function checkHttpSecurityFilters(hcm: HttpConnectionManager, field: string): FieldProblem[] {
  const problems: FieldProblem[] = [];
  hcm.httpFilters.forEach((filter, i) => {
    if (filter.configType.case !== 'typedConfig') return;
    const at = `${field}.http_filters[${i}].typed_config`;
    const { typeUrl, value } = filter.configType.value;
    if (typeUrl === JWT_AUTHN_TYPE_URL) checkJwtAuthn(value, at, problems);
    if (typeUrl === RBAC_TYPE_URL) checkRbac(value, at, problems);
  });
  return problems;
}

function checkJwtAuthn(bytes: Uint8Array, at: string, problems: FieldProblem[]): void {
  const config = decode(JwtAuthenticationSchema, bytes, at, problems);
  if (config === null) return;
  for (const [name, provider] of Object.entries(config.providers)) {
    const pat = `${at}.providers["${name}"]`;
    const source = provider.jwksSourceSpecifier;
    if (source.case === undefined) problems.push({ field: pat, message: 'needs remote_jwks or local_jwks' });
    if (source.case === 'remoteJwks') {
      const uri = source.value.httpUri;
      if (uri === undefined) problems.push({ field: `${pat}.remote_jwks.http_uri`, message: 'is required' });
      else {
        if (uri.uri === '') problems.push({ field: `${pat}.remote_jwks.http_uri.uri`, message: 'is empty' });
        if (uri.httpUpstreamType.case !== 'cluster' || uri.httpUpstreamType.value === '') problems.push({ field: `${pat}.remote_jwks.http_uri.cluster`, message: 'is required' });
        if (uri.timeout === undefined) problems.push({ field: `${pat}.remote_jwks.http_uri.timeout`, message: 'is required' });
      }
    }
    if (source.case === 'localJwks') {
      const data = source.value.specifier;
      if (data.case === 'inlineString' || data.case === 'inlineBytes') {
        const text = data.case === 'inlineString' ? data.value : Buffer.from(data.value).toString('utf8');
        const reason = jwksProblem(text);
        if (reason !== null) problems.push({ field: `${pat}.local_jwks`, message: reason });
      }
    }
    provider.claimToHeaders.forEach((c, k) => {
      if (c.claimName === '') problems.push({ field: `${pat}.claim_to_headers[${k}].claim_name`, message: 'is empty' });
      if (!HEADER_NAME.test(c.headerName)) problems.push({ field: `${pat}.claim_to_headers[${k}].header_name`, message: `"${c.headerName}" is not a header name` });
    });
  }
  const known = new Set(Object.keys(config.providers));
  const checkRequirement = (requirement: JwtRequirement | undefined, rat: string): void => {
    const type = requirement?.requiresType;
    if (type?.case === 'providerName' && !known.has(type.value)) problems.push({ field: `${rat}.provider_name`, message: `provider "${type.value}" is not in providers` });
    if (type?.case === 'requiresAny' || type?.case === 'requiresAll') {
      const list = type.value.requirements;
      const name = type.case === 'requiresAny' ? 'requires_any' : 'requires_all';
      if (list.length < 2) problems.push({ field: `${rat}.${name}.requirements`, message: 'needs at least 2 requirements' });
      list.forEach((r, k) => checkRequirement(r, `${rat}.${name}.requirements[${k}]`));
    }
  };
  config.rules.forEach((rule, k) => {
    const rat = `${at}.rules[${k}]`;
    if (rule.match === undefined) problems.push({ field: `${rat}.match`, message: 'is required' });
    if (rule.requirementType.case === 'requires') checkRequirement(rule.requirementType.value, `${rat}.requires`);
    if (rule.requirementType.case === 'requirementName' && config.requirementMap[rule.requirementType.value] === undefined) {
      problems.push({ field: `${rat}.requirement_name`, message: `"${rule.requirementType.value}" is not in requirement_map` });
    }
  });
  for (const [name, requirement] of Object.entries(config.requirementMap)) checkRequirement(requirement, `${at}.requirement_map["${name}"]`);
}

/** Why a JWKS document is unusable, or null. */
export function jwksProblem(text: string): string | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return 'is not JSON';
  }
  const keys = typeof parsed === 'object' && parsed !== null ? (parsed as { keys?: unknown }).keys : undefined;
  if (!Array.isArray(keys) || keys.length === 0) return 'is not a JWKS (needs a non-empty "keys" array)';
  if (keys.some((key) => typeof key !== 'object' || key === null || typeof (key as { kty?: unknown }).kty !== 'string')) return 'has a key without "kty"';
  return null;
}

function checkRbac(bytes: Uint8Array, at: string, problems: FieldProblem[]): void {
  const config = decode(RbacFilterSchema, bytes, at, problems);
  if (config === null) return;
  for (const [which, rules] of [['rules', config.rules], ['shadow_rules', config.shadowRules]] as const) {
    if (rules === undefined) continue;
    for (const [name, policy] of Object.entries(rules.policies)) {
      const pat = `${at}.${which}.policies["${name}"]`;
      if (policy.permissions.length === 0) problems.push({ field: `${pat}.permissions`, message: 'needs at least one permission' });
      if (policy.principals.length === 0) problems.push({ field: `${pat}.principals`, message: 'needs at least one principal' });
      policy.permissions.forEach((p, k) => checkPermission(p, `${pat}.permissions[${k}]`, problems));
      policy.principals.forEach((p, k) => checkPrincipal(p, `${pat}.principals[${k}]`, problems));
    }
  }
}

function checkCidr(range: CidrRange, at: string, problems: FieldProblem[]): void {
  const family = isIP(range.addressPrefix);
  if (family === 0) problems.push({ field: `${at}.address_prefix`, message: `"${range.addressPrefix}" is not an IP address literal` });
  const len = range.prefixLen ?? 0;
  if (len > (family === 6 ? 128 : 32)) problems.push({ field: `${at}.prefix_len`, message: `${len} is too long for ${range.addressPrefix}` });
}

function checkPermission(permission: Permission, at: string, problems: FieldProblem[]): void {
  const rule = permission.rule;
  switch (rule.case) {
    case undefined:
      problems.push({ field: at, message: 'needs a rule' });
      return;
    case 'andRules':
    case 'orRules':
      if (rule.value.rules.length === 0) problems.push({ field: `${at}.${rule.case === 'andRules' ? 'and_rules' : 'or_rules'}.rules`, message: 'needs at least one rule' });
      rule.value.rules.forEach((p, k) => checkPermission(p, `${at}.${rule.case === 'andRules' ? 'and_rules' : 'or_rules'}.rules[${k}]`, problems));
      return;
    case 'notRule':
      checkPermission(rule.value, `${at}.not_rule`, problems);
      return;
    case 'destinationIp':
      checkCidr(rule.value, `${at}.destination_ip`, problems);
      return;
    default:
      return;
  }
}

function checkPrincipal(principal: Principal, at: string, problems: FieldProblem[]): void {
  const id = principal.identifier;
  switch (id.case) {
    case undefined:
      problems.push({ field: at, message: 'needs an identifier' });
      return;
    case 'andIds':
    case 'orIds':
      if (id.value.ids.length === 0) problems.push({ field: `${at}.${id.case === 'andIds' ? 'and_ids' : 'or_ids'}.ids`, message: 'needs at least one principal' });
      id.value.ids.forEach((p, k) => checkPrincipal(p, `${at}.${id.case === 'andIds' ? 'and_ids' : 'or_ids'}.ids[${k}]`, problems));
      return;
    case 'notId':
      checkPrincipal(id.value, `${at}.not_id`, problems);
      return;
    case 'remoteIp':
      checkCidr(id.value, `${at}.remote_ip`, problems);
      return;
    case 'directRemoteIp':
      checkCidr(id.value, `${at}.direct_remote_ip`, problems);
      return;
    case 'sourceIp':
      checkCidr(id.value, `${at}.source_ip`, problems);
      return;
    default:
      return;
  }
}
