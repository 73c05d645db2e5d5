/**
 * The `sub` allow-list of a token verifier. Entries are exact strings, globs, or regular
 * expressions:
 *
 * - a string without `*` must equal the subject;
 * - in a string with `*`, each `*` stands for any run of characters other than `:`, so
 *   `system:serviceaccount:tether:*` admits every service account of namespace `tether` and
 *   nothing in `tether-other`, and `system:serviceaccount:*:agent` admits the `agent` account of
 *   any namespace;
 * - a RegExp must match the whole subject (it is anchored for you; flags `g`/`y` are dropped so
 *   matching keeps no state).
 */
export type SubjectPattern = string | RegExp;

export type SubjectMatcher = (subject: string) => boolean;

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
}

function globToRegExp(glob: string): RegExp {
  return new RegExp(`^${glob.split('*').map(escapeRegExp).join('[^:]*')}$`, 'u');
}

function anchored(pattern: RegExp): RegExp {
  const flags = pattern.flags.replace(/[gy]/g, '');
  return new RegExp(`^(?:${pattern.source})$`, flags);
}

export function compileSubjectMatcher(patterns: string | readonly SubjectPattern[]): SubjectMatcher {
  const list = typeof patterns === 'string' ? [patterns] : patterns;
  const exact = new Set<string>();
  const expressions: RegExp[] = [];
  for (const entry of list) {
    if (typeof entry === 'string') {
      if (entry.includes('*')) expressions.push(globToRegExp(entry));
      else exact.add(entry);
    } else {
      expressions.push(anchored(entry));
    }
  }
  return (subject) => exact.has(subject) || expressions.some((expression) => expression.test(subject));
}

/** A printable form of the allow-list for error messages and logs. */
export function describeSubjectPatterns(patterns: string | readonly SubjectPattern[]): string {
  const list = typeof patterns === 'string' ? [patterns] : patterns;
  return list.map((entry) => (typeof entry === 'string' ? JSON.stringify(entry) : String(entry))).join(', ');
}
