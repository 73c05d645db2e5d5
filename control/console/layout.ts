/**
 * The console's page shell (header, navigation, the live region the script refreshes) and the
 * login page. Every value in them passes through `html`, which escapes it.
 */
import { html } from './html.js';
import type { SafeHtml } from './html.js';

export const PAGES = [
  { path: 'clusters', title: 'Clusters' },
  { path: 'tunnels', title: 'Tunnels' },
  { path: 'runs', title: 'Runs' },
  { path: 'schedules', title: 'Schedules' },
  { path: 'audit', title: 'Audit log' },
] as const;

export type PageName = (typeof PAGES)[number]['path'];

export interface ShellOptions {
  page: PageName;
  title: string;
  who: { name: string; roles: readonly string[] };
  csrfToken: string;
  refreshMs: number;
  /** Above the live region, not refreshed (filters). */
  controls?: SafeHtml;
  live: SafeHtml;
  renderedAt: string;
}

function head(title: string, csrfToken: string | null): SafeHtml {
  return html`<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
${csrfToken === null ? '' : html`<meta name="tether-csrf" content="${csrfToken}">`}
<title>${title} · tether console</title>
<link rel="icon" href="/console/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/console/static/console.css">
<script src="/console/static/console.js" defer></script>
</head>`;
}

export function shell(options: ShellOptions): SafeHtml {
  const nav = PAGES.map(
    (page) => html`<a href="/console/${page.path}"${page.path === options.page ? html` aria-current="page"` : ''}>${page.title}</a>`,
  );
  const roles = options.who.roles.length === 0 ? 'no role in this org' : options.who.roles.join(', ');
  return html`<!doctype html>
<html lang="en">
${head(options.title, options.csrfToken)}
<body data-page="${options.page}">
<header>
<span class="brand">tether console</span>
<nav>${nav}</nav>
<span class="who"><span id="who">${options.who.name}</span> <span class="roles">(${roles})</span>
<form method="post" action="/console/logout" class="inline"><input type="hidden" name="csrf" value="${options.csrfToken}"><button type="submit" class="link">Log out</button></form></span>
</header>
<main>
<h1>${options.title}</h1>
${options.controls ?? ''}
<div id="flash" role="status" hidden></div>
<section id="live" data-refresh-ms="${options.refreshMs}">${options.live}</section>
<p class="status">Updated <time id="updated">${options.renderedAt}</time> · <span id="live-state">live: refreshes every ${Math.round(options.refreshMs / 100) / 10} s</span></p>
</main>
</body>
</html>
`;
}

export interface LoginOptions {
  nonce: string;
  error?: string;
}

export function loginPage(options: LoginOptions): SafeHtml {
  return html`<!doctype html>
<html lang="en">
${head('Log in', null)}
<body data-page="login">
<header><span class="brand">tether console</span></header>
<main class="login">
<h1>Log in</h1>
${options.error === undefined ? '' : html`<p class="error" id="login-error">${options.error}</p>`}
<form method="post" action="/console/login" id="login-form">
<input type="hidden" name="nonce" value="${options.nonce}">
<label for="token">Bearer token (an OIDC token this control plane accepts for its API)</label>
<input type="password" id="token" name="token" autocomplete="off" spellcheck="false" required>
<button type="submit">Log in</button>
</form>
<p class="hint">With <code>npm start</code> (<code>tether dev</code>): paste the contents of <code>.tether/dev/control-token</code>. The token is checked once, here, and not kept: the session lives in this control plane's memory, named by an HttpOnly cookie, until the token expires or you log out.</p>
</main>
</body>
</html>
`;
}

/** A page's live region when the caller may not read it. */
export function denied(operation: string, scope: string): SafeHtml {
  return html`<p class="denied" data-denied="${operation}">Your roles do not include <code>${operation}</code> on <code>${scope}</code>.</p>`;
}

/** `PHASE` as a badge the tests and the stylesheet can find. */
export function phaseBadge(phase: string): SafeHtml {
  return html`<span class="phase phase-${phase}" data-phase="${phase}">${phase}</span>`;
}

export interface ActionButton {
  action: string;
  label: string;
  confirm: string;
  body: Readonly<Record<string, string | boolean>>;
  danger?: boolean;
}

/** A button the script turns into a confirmed, CSRF-protected POST to `/console/actions/<action>`. */
export function actionButton(button: ActionButton): SafeHtml {
  return html`<button type="button" class="action${button.danger === true ? ' danger' : ''}" data-action="${button.action}" data-confirm="${button.confirm}" data-body="${JSON.stringify(button.body)}">${button.label}</button>`;
}
