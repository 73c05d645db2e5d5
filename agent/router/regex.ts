/**
 * Envoy's `safe_regex` is RE2. JavaScript's engine is a backtracking one with a different
 * syntax, so patterns are translated where RE2 and JS disagree only in spelling, and refused
 * where RE2 itself would refuse them (lookaround, backreferences, atomic groups) or where the
 * meaning would silently change (inline flags other than a leading one).
 *
 * Translated: `(?P<name>…)` → `(?<name>…)`, `\A` → `^`, `\z` → `$` (outside classes), a leading
 * `(?i)`/`(?s)`/`(?is)` → JS flags, `[[:alpha:]]`-style POSIX classes inside brackets, `\pL` → `\p{L}`.
 * Matching is full-string (RE2's FullMatch, as Envoy uses for paths and headers).
 */

/** Longest pattern accepted (Envoy bounds RE2 program size; this bounds the source instead). */
export const MAX_REGEX_LENGTH = 1024;

const POSIX: Record<string, string> = {
  alnum: '0-9A-Za-z',
  alpha: 'A-Za-z',
  ascii: '\\x00-\\x7F',
  blank: '\\t ',
  cntrl: '\\x00-\\x1F\\x7F',
  digit: '0-9',
  graph: '!-~',
  lower: 'a-z',
  print: ' -~',
  punct: '!-\\/:-@\\[-`{-~',
  space: '\\t\\n\\v\\f\\r ',
  upper: 'A-Z',
  word: '0-9A-Za-z_',
  xdigit: '0-9A-Fa-f',
};

export type RegexResult = { ok: true; regex: RegExp } | { ok: false; reason: string };

/** Compile an RE2 pattern for full matching, or say why it cannot be. */
export function compileRe2(pattern: string): RegexResult {
  if (pattern.length > MAX_REGEX_LENGTH) return { ok: false, reason: `longer than ${MAX_REGEX_LENGTH} characters` };
  let flags = '';
  let body = pattern;
  const leading = /^\(\?([ims]+)\)/.exec(body);
  if (leading !== null) {
    const inline = leading[1] ?? '';
    if (inline.includes('m')) return { ok: false, reason: 'inline flag m is not supported' };
    if (inline.includes('i')) flags += 'i';
    if (inline.includes('s')) flags += 's';
    body = body.slice(leading[0].length);
  }
  let out = '';
  let inClass = false;
  for (let i = 0; i < body.length; i++) {
    const ch = body[i] ?? '';
    const next = body[i + 1] ?? '';
    if (ch === '\\') {
      if (next === '') return { ok: false, reason: 'trailing backslash' };
      if (/[1-9]/.test(next) || next === 'k') return { ok: false, reason: 'backreferences are not RE2' };
      if (next === 'C') return { ok: false, reason: '\\C is not supported' };
      if (!inClass && next === 'A') {
        out += '^';
      } else if (!inClass && next === 'z') {
        out += '$';
      } else if ((next === 'p' || next === 'P') && body[i + 2] !== '{' && /[A-Za-z]/.test(body[i + 2] ?? '')) {
        out += `\\${next}{${body[i + 2] ?? ''}}`;
        i += 1;
      } else {
        out += ch + next;
      }
      i += 1;
      continue;
    }
    if (inClass) {
      if (ch === '[' && next === ':') {
        const end = body.indexOf(':]', i + 2);
        const name = end < 0 ? '' : body.slice(i + 2, end);
        const negated = name.startsWith('^');
        const range = POSIX[negated ? name.slice(1) : name];
        if (range === undefined) return { ok: false, reason: `unknown POSIX class [:${name}:]` };
        if (negated) return { ok: false, reason: 'negated POSIX classes are not supported' };
        out += range;
        i = end + 1;
        continue;
      }
      if (ch === ']') inClass = false;
      out += ch;
      continue;
    }
    if (ch === '[') {
      inClass = true;
      out += ch;
      // A `]` right after `[` or `[^` is a literal in RE2.
      if (next === '^') {
        out += '^';
        i += 1;
      }
      if (body[i + 1] === ']') {
        out += '\\]';
        i += 1;
      }
      continue;
    }
    if (ch === '(' && next === '?') {
      const rest = body.slice(i + 2);
      if (rest.startsWith('=') || rest.startsWith('!')) return { ok: false, reason: 'lookahead is not RE2' };
      if (rest.startsWith('<=') || rest.startsWith('<!')) return { ok: false, reason: 'lookbehind is not RE2' };
      if (rest.startsWith('>')) return { ok: false, reason: 'atomic groups are not RE2' };
      if (rest.startsWith('P<')) {
        out += '(?<';
        i += 3;
        continue;
      }
      if (rest.startsWith(':') || rest.startsWith('<')) {
        out += '(?';
        i += 1;
        continue;
      }
      return { ok: false, reason: 'inline flags are supported only at the start' };
    }
    if ((ch === '*' || ch === '+' || ch === '?' || ch === '}') && next === '+') return { ok: false, reason: 'possessive quantifiers are not RE2' };
    out += ch;
  }
  if (inClass) return { ok: false, reason: 'unterminated character class' };
  for (const extra of ['u', '']) {
    try {
      return { ok: true, regex: new RegExp(`^(?:${out})$`, flags + extra) };
    } catch {
      // try without the unicode flag (it is stricter about escapes)
    }
  }
  return { ok: false, reason: 'not a valid regular expression' };
}
