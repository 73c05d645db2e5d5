/**
 * `envoy.filters.http.rbac` for the sovereign front: ALLOW or DENY policies compiled to plain
 * functions over what the front knows of a request: its path and headers, the client address
 * (`remote_ip`, `source_ip`: from PROXY protocol), the directly connected peer (`direct_remote_ip`:
 * the load balancer), and the JWT payloads jwt_authn stored as metadata (`metadata` principals on
 * filter `envoy.filters.http.jwt_authn`, path starting with a provider's `payload_in_metadata`).
 *
 * Envoy's semantics: a policy matches when one of its permissions and one of its principals match;
 * ALLOW admits a request some policy matches, DENY refuses one; without `rules` nothing is
 * enforced. Refused: CEL conditions, the `matcher` API, mTLS principals (`authenticated`),
 * filter-state and destination matchers, LOG.
 */
import { isIP } from 'node:net';
import { fromBinary } from '@bufbuild/protobuf';
import type { Any } from '@bufbuild/protobuf/wkt';
import type { JWTPayload } from 'jose';
import type { CidrRange } from '../../xds/gen/envoy/config/core/v3/address_pb.js';
import { PolicySchema, RBACSchema as RbacRulesSchema, RBAC_Action } from '../../xds/gen/envoy/config/rbac/v3/rbac_pb.js';
import type { Permission, Principal } from '../../xds/gen/envoy/config/rbac/v3/rbac_pb.js';
import { RBACSchema as RbacFilterSchema } from '../../xds/gen/envoy/extensions/filters/http/rbac/v3/rbac_pb.js';
import { MetadataMatcherSchema } from '../../xds/gen/envoy/type/matcher/v3/metadata_pb.js';
import type { MetadataMatcher } from '../../xds/gen/envoy/type/matcher/v3/metadata_pb.js';
import type { ValueMatcher } from '../../xds/gen/envoy/type/matcher/v3/value_pb.js';
import { JWT_AUTHN_FILTER, RBAC_TYPE_URL } from '../../xds/references.js';
import type { RouteRequest } from './compile.js';
import { join, onlyFields } from './fields.js';
import type { Problem } from './fields.js';
import { compileHeader, stringTest } from './matchers.js';
import { cidrMatcher } from './cidr.js';

/** A request as RBAC sees it. */
export interface RbacRequest {
  request: RouteRequest;
  /** `:path` without the query. */
  path: string;
  /** The client (PROXY protocol source, else the peer). */
  remoteIp: string;
  /** The connected peer (the load balancer). */
  directRemoteIp: string;
  /** Verified JWT payloads by their `payload_in_metadata` key. */
  jwtPayloads: ReadonlyMap<string, JWTPayload>;
}

export interface RbacDecision {
  allowed: boolean;
  /** The policy that matched, if any. */
  policy: string | null;
}

export interface CompiledRbac {
  /** null: no `rules`, everything passes. */
  action: 'ALLOW' | 'DENY' | null;
  decide(request: RbacRequest): RbacDecision;
}

type Test = (request: RbacRequest) => boolean;

/** The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`), else the address. */
export function plainIp(address: string): string {
  const lower = address.toLowerCase();
  if (lower.startsWith('::ffff:') && isIP(lower.slice(7)) === 4) return lower.slice(7);
  return address;
}

function cidrTest(range: CidrRange, at: string, read: (r: RbacRequest) => string, problems: Problem[]): Test | null {
  const family = isIP(range.addressPrefix);
  const bits = range.prefixLen ?? 0;
  if (family === 0) {
    problems.push({ field: join(at, 'address_prefix'), message: `"${range.addressPrefix}" is not an IP address literal` });
    return null;
  }
  if (bits > (family === 4 ? 32 : 128)) {
    problems.push({ field: join(at, 'prefix_len'), message: `${bits} is too long` });
    return null;
  }
  const inside = cidrMatcher(range.addressPrefix, bits);
  if (inside === null) {
    problems.push({ field: join(at, 'address_prefix'), message: `"${range.addressPrefix}" is not usable as a range` });
    return null;
  }
  return (r) => inside(plainIp(read(r)));
}

function valueTest(matcher: ValueMatcher | undefined, at: string, problems: Problem[]): ((value: unknown) => boolean) | null {
  const pattern = matcher?.matchPattern;
  switch (pattern?.case) {
    case 'nullMatch':
      return (v) => v === null;
    case 'presentMatch': {
      const want = pattern.value;
      return (v) => (v !== undefined) === want;
    }
    case 'boolMatch': {
      const want = pattern.value;
      return (v) => v === want;
    }
    case 'stringMatch': {
      const test = stringTest(pattern.value, join(at, 'string_match'), problems);
      return test === null ? null : (v) => typeof v === 'string' && test(v);
    }
    case 'doubleMatch': {
      const double = pattern.value.matchPattern;
      if (double.case === 'exact') {
        const want = double.value;
        return (v) => v === want;
      }
      if (double.case === 'range') {
        const { start, end } = double.value;
        return (v) => typeof v === 'number' && v >= start && v < end;
      }
      problems.push({ field: join(at, 'double_match'), message: 'needs range or exact' });
      return null;
    }
    case 'listMatch': {
      const inner = pattern.value.matchPattern;
      if (inner.case !== 'oneOf') {
        problems.push({ field: join(at, 'list_match'), message: 'needs one_of' });
        return null;
      }
      const element = valueTest(inner.value, join(at, 'list_match.one_of'), problems);
      return element === null ? null : (v) => Array.isArray(v) && v.some(element);
    }
    case 'orMatch': {
      const tests = pattern.value.valueMatchers.map((m, k) => valueTest(m, join(at, `or_match.value_matchers[${k}]`), problems));
      if (tests.some((t) => t === null)) return null;
      const all = tests as Array<(value: unknown) => boolean>;
      return (v) => all.some((t) => t(v));
    }
    default:
      problems.push({ field: at, message: 'needs a match pattern' });
      return null;
  }
}

/** `metadata` principals: only jwt_authn's verified payloads exist as metadata here. */
function metadataTest(matcher: MetadataMatcher, at: string, payloadKeys: ReadonlySet<string>, problems: Problem[]): Test | null {
  onlyFields(MetadataMatcherSchema, matcher, ['filter', 'path', 'value', 'invert'], at, problems);
  if (matcher.filter !== JWT_AUTHN_FILTER) {
    problems.push({ field: join(at, 'filter'), message: `"${matcher.filter}" unsupported (only ${JWT_AUTHN_FILTER} metadata exists here)` });
    return null;
  }
  const keys = matcher.path.map((segment) => (segment.segment.case === 'key' ? segment.segment.value : null));
  const [first, ...rest] = keys;
  if (first === undefined || first === null || keys.some((k) => k === null)) {
    problems.push({ field: join(at, 'path'), message: 'needs at least one key' });
    return null;
  }
  if (!payloadKeys.has(first)) {
    problems.push({ field: join(at, 'path[0].key'), message: `"${first}" is not the payload_in_metadata of a jwt_authn provider that runs before this filter` });
    return null;
  }
  const value = valueTest(matcher.value, join(at, 'value'), problems);
  if (value === null) return null;
  const invert = matcher.invert;
  const path = rest as string[];
  return (r) => {
    let current: unknown = r.jwtPayloads.get(first);
    if (current === undefined) return invert;
    for (const key of path) current = typeof current === 'object' && current !== null && !Array.isArray(current) ? (current as Record<string, unknown>)[key] : undefined;
    return value(current) !== invert;
  };
}

function headerTest(matcher: Parameters<typeof compileHeader>[0], at: string, problems: Problem[]): Test | null {
  const test = compileHeader(matcher, at, problems);
  return test === null ? null : (r) => test(r.request);
}

function pathTest(rule: Permission['rule'] & { case: 'urlPath' }, at: string, problems: Problem[]): Test | null {
  const path = rule.value.rule;
  if (path.case !== 'path') {
    problems.push({ field: at, message: 'needs path' });
    return null;
  }
  const test = stringTest(path.value, join(at, 'path'), problems);
  return test === null ? null : (r) => test(r.path);
}

function combine(tests: Array<Test | null>, every: boolean): Test | null {
  if (tests.some((t) => t === null)) return null;
  const all = tests as Test[];
  return every ? (r) => all.every((t) => t(r)) : (r) => all.some((t) => t(r));
}

function permissionTest(permission: Permission, at: string, problems: Problem[]): Test | null {
  const rule = permission.rule;
  switch (rule.case) {
    case 'any':
      return () => true;
    case 'andRules':
      return combine(rule.value.rules.map((p, k) => permissionTest(p, join(at, `and_rules.rules[${k}]`), problems)), true);
    case 'orRules':
      return combine(rule.value.rules.map((p, k) => permissionTest(p, join(at, `or_rules.rules[${k}]`), problems)), false);
    case 'notRule': {
      const inner = permissionTest(rule.value, join(at, 'not_rule'), problems);
      return inner === null ? null : (r) => !inner(r);
    }
    case 'header':
      return headerTest(rule.value, join(at, 'header'), problems);
    case 'urlPath':
      return pathTest(rule, join(at, 'url_path'), problems);
    case undefined:
      problems.push({ field: at, message: 'needs a rule' });
      return null;
    default:
      problems.push({ field: at, message: `${rule.case} unsupported` });
      return null;
  }
}

function principalTest(principal: Principal, at: string, payloadKeys: ReadonlySet<string>, problems: Problem[]): Test | null {
  const id = principal.identifier;
  switch (id.case) {
    case 'any':
      return () => true;
    case 'andIds':
      return combine(id.value.ids.map((p, k) => principalTest(p, join(at, `and_ids.ids[${k}]`), payloadKeys, problems)), true);
    case 'orIds':
      return combine(id.value.ids.map((p, k) => principalTest(p, join(at, `or_ids.ids[${k}]`), payloadKeys, problems)), false);
    case 'notId': {
      const inner = principalTest(id.value, join(at, 'not_id'), payloadKeys, problems);
      return inner === null ? null : (r) => !inner(r);
    }
    case 'remoteIp':
      return cidrTest(id.value, join(at, 'remote_ip'), (r) => r.remoteIp, problems);
    case 'sourceIp': // deprecated; honours PROXY protocol like remote_ip (XFF is never read here)
      return cidrTest(id.value, join(at, 'source_ip'), (r) => r.remoteIp, problems);
    case 'directRemoteIp':
      return cidrTest(id.value, join(at, 'direct_remote_ip'), (r) => r.directRemoteIp, problems);
    case 'header':
      return headerTest(id.value, join(at, 'header'), problems);
    case 'urlPath': {
      const path = id.value.rule;
      if (path.case !== 'path') {
        problems.push({ field: join(at, 'url_path'), message: 'needs path' });
        return null;
      }
      const test = stringTest(path.value, join(at, 'url_path.path'), problems);
      return test === null ? null : (r) => test(r.path);
    }
    case 'metadata':
      return metadataTest(id.value, join(at, 'metadata'), payloadKeys, problems);
    case undefined:
      problems.push({ field: at, message: 'needs an identifier' });
      return null;
    default:
      problems.push({ field: at, message: `${id.case} unsupported` });
      return null;
  }
}

/**
 * The RBAC filter's typed_config. `payloadKeys`: the `payload_in_metadata` keys of the jwt_authn
 * providers that run before this filter (what `metadata` principals may read).
 */
export function compileRbac(any: Any, at: string, payloadKeys: ReadonlySet<string>, problems: Problem[]): CompiledRbac | null {
  if (any.typeUrl !== RBAC_TYPE_URL) return null;
  let config;
  try {
    config = fromBinary(RbacFilterSchema, any.value);
  } catch {
    problems.push({ field: at, message: 'cannot be decoded' });
    return null;
  }
  // Shadow rules only feed statistics; they never change a decision.
  onlyFields(RbacFilterSchema, config, ['rules', 'rules_stat_prefix', 'shadow_rules', 'shadow_rules_stat_prefix', 'track_per_rule_stats'], at, problems);
  const rules = config.rules;
  if (rules === undefined) return { action: null, decide: () => ({ allowed: true, policy: null }) };
  const rat = join(at, 'rules');
  onlyFields(RbacRulesSchema, rules, ['action', 'policies'], rat, problems);
  if (rules.action !== RBAC_Action.ALLOW && rules.action !== RBAC_Action.DENY) {
    problems.push({ field: join(rat, 'action'), message: `${RBAC_Action[rules.action] ?? rules.action} unsupported` });
    return null;
  }
  const policies: Array<{ name: string; permission: Test; principal: Test }> = [];
  // Sorted by name, as Envoy evaluates its policy map (the decision does not depend on order).
  for (const name of Object.keys(rules.policies).sort()) {
    const policy = rules.policies[name];
    if (policy === undefined) continue;
    const pat = join(rat, `policies["${name}"]`);
    onlyFields(PolicySchema, policy, ['permissions', 'principals'], pat, problems);
    if (policy.permissions.length === 0) problems.push({ field: join(pat, 'permissions'), message: 'needs at least one permission' });
    if (policy.principals.length === 0) problems.push({ field: join(pat, 'principals'), message: 'needs at least one principal' });
    const permission = combine(policy.permissions.map((p, k) => permissionTest(p, join(pat, `permissions[${k}]`), problems)), false);
    const principal = combine(policy.principals.map((p, k) => principalTest(p, join(pat, `principals[${k}]`), payloadKeys, problems)), false);
    if (permission !== null && principal !== null) policies.push({ name, permission, principal });
  }
  const allow = rules.action === RBAC_Action.ALLOW;
  return {
    action: allow ? 'ALLOW' : 'DENY',
    decide(request) {
      const matched = policies.find((p) => p.permission(request) && p.principal(request));
      const policy = matched?.name ?? null;
      return { allowed: allow ? matched !== undefined : matched === undefined, policy };
    },
  };
}
