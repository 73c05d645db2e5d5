/**
 * HTML built by one tagged template, `html`, that escapes every interpolated value unless it is
 * already `SafeHtml` (the result of another `html` call, or `raw()` for markup we wrote). Arrays
 * are joined, `null`/`undefined`/`false` render nothing. Everything user-controlled (task names,
 * run ids, audit entries, error messages, subjects) goes through it, in text and in attributes
 * alike: `&`, `<`, `>`, `"` and `'` are replaced, so a value can close neither an element nor a
 * quoted attribute.
 */

export class SafeHtml {
  readonly #text: string;

  constructor(text: string) {
    this.#text = text;
  }

  toString(): string {
    return this.#text;
  }
}

export type HtmlValue = SafeHtml | string | number | boolean | null | undefined | readonly HtmlValue[];

const ESCAPES: Readonly<Record<string, string>> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => ESCAPES[char] ?? char);
}

function render(value: HtmlValue): string {
  if (value instanceof SafeHtml) return value.toString();
  if (Array.isArray(value)) return value.map((item: HtmlValue) => render(item)).join('');
  if (value === null || value === undefined || value === false) return '';
  return escapeHtml(String(value));
}

export function html(strings: TemplateStringsArray, ...values: HtmlValue[]): SafeHtml {
  let out = strings[0] ?? '';
  for (let index = 0; index < values.length; index += 1) out += render(values[index]) + (strings[index + 1] ?? '');
  return new SafeHtml(out);
}

/** Markup written in this folder (never a value from a request or the store). */
export function raw(markup: string): SafeHtml {
  return new SafeHtml(markup);
}

/** A path under `/console/` with each segment percent-encoded (run ids, schedule ids). */
export function consolePath(...segments: string[]): string {
  return `/console/${segments.map((segment) => encodeURIComponent(segment)).join('/')}`;
}

/** A query string from the non-empty entries, percent-encoded (`?a=1&b=2`, or '' when none). */
export function query(params: Readonly<Record<string, string | undefined>>): string {
  const entries = Object.entries(params).filter((entry): entry is [string, string] => entry[1] !== undefined && entry[1] !== '');
  return entries.length === 0 ? '' : `?${new URLSearchParams(entries).toString()}`;
}
