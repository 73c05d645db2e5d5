/**
 * Matchers shared by routes and the HTTP filters that match requests (jwt_authn rules, RBAC
 * permissions): RouteMatch (path prefix / exact / safe_regex, case folding, headers),
 * HeaderMatcher and StringMatcher, compiled to plain functions or refused with the field path.
 */
import { HeaderMatcherSchema, RouteMatchSchema } from '../../xds/gen/envoy/config/route/v3/route_components_pb.js';
import type { HeaderMatcher, RouteMatch } from '../../xds/gen/envoy/config/route/v3/route_components_pb.js';
import { StringMatcherSchema } from '../../xds/gen/envoy/type/matcher/v3/string_pb.js';
import type { StringMatcher } from '../../xds/gen/envoy/type/matcher/v3/string_pb.js';
import type { RouteRequest } from './compile.js';
import { join, onlyFields } from './fields.js';
import type { Problem } from './fields.js';
import { compileRe2 } from './regex.js';

const MATCH_SUPPORTED = ['prefix', 'path', 'safe_regex', 'case_sensitive', 'headers'];
const HEADER_SUPPORTED = ['name', 'exact_match', 'safe_regex_match', 'present_match', 'prefix_match', 'suffix_match', 'contains_match', 'string_match', 'invert_match', 'treat_missing_header_as_empty'];

export type HeaderTest = (request: RouteRequest) => boolean;

function headerValue(request: RouteRequest, name: string): string | undefined {
  const lower = name.toLowerCase();
  if (lower === ':authority' || lower === 'host') return request.authority;
  if (lower === ':method') return request.method;
  if (lower === ':path') return request.path;
  const value = request.headers[lower];
  if (value === undefined) return undefined;
  return typeof value === 'string' ? value : value.join(',');
}

export function stringTest(matcher: StringMatcher, at: string, problems: Problem[]): ((value: string) => boolean) | null {
  onlyFields(StringMatcherSchema, matcher, ['exact', 'prefix', 'suffix', 'safe_regex', 'contains', 'ignore_case'], at, problems);
  const fold = matcher.ignoreCase;
  const norm = (s: string) => (fold ? s.toLowerCase() : s);
  const p = matcher.matchPattern;
  switch (p.case) {
    case 'exact': {
      const want = norm(p.value);
      return (v) => norm(v) === want;
    }
    case 'prefix': {
      const want = norm(p.value);
      return (v) => norm(v).startsWith(want);
    }
    case 'suffix': {
      const want = norm(p.value);
      return (v) => norm(v).endsWith(want);
    }
    case 'contains': {
      const want = norm(p.value);
      return (v) => norm(v).includes(want);
    }
    case 'safeRegex': {
      const compiled = compileRe2(p.value.regex);
      if (!compiled.ok) {
        problems.push({ field: join(at, 'safe_regex.regex'), message: compiled.reason });
        return null;
      }
      const regex = compiled.regex;
      return (v) => regex.test(v);
    }
    default:
      problems.push({ field: at, message: p.case === undefined ? 'needs a match pattern' : 'unsupported' });
      return null;
  }
}

export function compileHeader(header: HeaderMatcher, at: string, problems: Problem[]): HeaderTest | null {
  onlyFields(HeaderMatcherSchema, header, HEADER_SUPPORTED, at, problems);
  const name = header.name;
  const invert = header.invertMatch;
  const spec = header.headerMatchSpecifier;
  if (spec.case === 'presentMatch') {
    const want = spec.value;
    return (request) => (headerValue(request, name) !== undefined) === want !== invert;
  }
  let test: ((value: string) => boolean) | null = null;
  switch (spec.case) {
    case 'exactMatch': {
      const want = spec.value;
      test = (v) => v === want;
      break;
    }
    case 'prefixMatch': {
      const want = spec.value;
      test = (v) => v.startsWith(want);
      break;
    }
    case 'suffixMatch': {
      const want = spec.value;
      test = (v) => v.endsWith(want);
      break;
    }
    case 'containsMatch': {
      const want = spec.value;
      test = (v) => v.includes(want);
      break;
    }
    case 'safeRegexMatch': {
      const compiled = compileRe2(spec.value.regex);
      if (!compiled.ok) problems.push({ field: join(at, 'safe_regex_match.regex'), message: compiled.reason });
      else {
        const regex = compiled.regex;
        test = (v) => regex.test(v);
      }
      break;
    }
    case 'stringMatch':
      test = stringTest(spec.value, join(at, 'string_match'), problems);
      break;
    case undefined:
      // No specifier: Envoy treats it as "present".
      return (request) => (headerValue(request, name) !== undefined) !== invert;
    default:
      return null; // range_match: already reported by onlyFields
  }
  if (test === null) return null;
  const missingAsEmpty = header.treatMissingHeaderAsEmpty;
  const check = test;
  return (request) => {
    const value = headerValue(request, name) ?? (missingAsEmpty ? '' : undefined);
    if (value === undefined) return false;
    return check(value) !== invert;
  };
}

/** A compiled RouteMatch: the test, and the prefix when it is a prefix match (for `prefix_rewrite`). */
export interface CompiledMatch {
  /** `path` is the `:path` without its query. */
  matches(request: RouteRequest, path: string): boolean;
  prefix: string | null;
}

/** RouteMatch as the router implements it (also used by jwt_authn's rules); null when it cannot be applied. */
export function compileRouteMatch(match: RouteMatch, at: string, problems: Problem[]): CompiledMatch | null {
  onlyFields(RouteMatchSchema, match, MATCH_SUPPORTED, at, problems);
  const caseSensitive = match.caseSensitive ?? true;
  const fold = (s: string) => (caseSensitive ? s : s.toLowerCase());
  let pathTest: ((path: string, full: string) => boolean) | null = null;
  let prefix: string | null = null;
  const spec = match.pathSpecifier;
  if (spec.case === 'prefix') {
    const want = fold(spec.value);
    prefix = spec.value;
    pathTest = (_path, full) => fold(full).startsWith(want);
  } else if (spec.case === 'path') {
    const want = fold(spec.value);
    pathTest = (path) => fold(path) === want;
  } else if (spec.case === 'safeRegex') {
    const compiled = compileRe2(spec.value.regex);
    if (!compiled.ok) problems.push({ field: join(at, 'safe_regex.regex'), message: compiled.reason });
    else {
      const regex = caseSensitive ? compiled.regex : new RegExp(compiled.regex.source, `${compiled.regex.flags.replace('i', '')}i`);
      pathTest = (path) => regex.test(path);
    }
  } else if (spec.case === undefined) {
    problems.push({ field: at, message: 'needs prefix, path or safe_regex' });
  }
  const headers = match.headers.map((h, k) => compileHeader(h, join(at, `headers[${k}]`), problems));
  if (pathTest === null || headers.some((h) => h === null)) return null;
  const test = pathTest;
  const headerTests = headers as HeaderTest[];
  return {
    prefix,
    matches(request, path) {
      if (!test(path, request.path)) return false;
      for (const h of headerTests) if (!h(request)) return false;
      return true;
    },
  };
}
