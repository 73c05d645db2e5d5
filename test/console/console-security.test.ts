/**
 * The console's defences against a real control plane (its encrypted SQLite store, in memory):
 * HTML in task names, run ids, phase messages and audit entries is shown as text in Chromium;
 * every console response carries the CSP (no inline script, `frame-ancestors 'none'`), nosniff and
 * no-referrer; actions need the session's CSRF token (and are refused when the browser labels
 * them cross-site); the login form needs its nonce cookie; no session, no page.
 */
import test from 'ava';
import type { Browser } from 'puppeteer-core';
import { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { parseControlConfig } from '../../control/config.js';
import { ControlServer } from '../../control/server.js';
import { userCaller } from '../../control/service.js';
import { newKek } from '../../control/store/keyring.js';
import { decideEvent, Phase } from '../../control/phases.js';
import type { RunRecord } from '../../control/store/repository.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { browserTest, count, findChromium, freshContext, inPage, launch, logIn, release, screenshot } from './browser.js';

failOnLeaks(test);

const AUDIENCE = 'tether-control';
const ORG = 'acme';
const SCOPE = { org: ORG, project: 'p1', domain: 'd1' };
const HOSTILE = `<img src=x onerror="window.pwned='yes'">`;
const HOSTILE_RUN = `run-${HOSTILE}`;
const HOSTILE_TASK = `task-<script>window.pwned='yes'</script>`;
const HOSTILE_SUBJECT = `<svg onload="window.pwned='yes'">`;

const chromium = findChromium();
const browserCase = browserTest(test, chromium);

interface Env {
  issuer: DevOidcIssuer;
  server: ControlServer;
  base: string;
  alice: string;
  browser: Browser | undefined;
}

let env: Env | undefined;

function ready(): Env {
  if (env === undefined) throw new Error('the control plane did not start');
  return env;
}

test.before(async () => {
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  let server: ControlServer | undefined;
  let browser: Browser | undefined;
  try {
    const config = parseControlConfig({
      org: ORG,
      store: { path: ':memory:' },
      grpc: { port: 0 },
      http: { port: 0 },
      auth: { issuers: [{ issuer: issuerUrl, audience: AUDIENCE }] },
      bootstrapAdmins: ['alice'],
      console: { refreshMs: 500 },
    });
    server = await ControlServer.start(config, { env: { TETHER_CONTROL_KEK: newKek().key.toString('base64') } });
    const alice = userCaller('alice');
    await server.service.registerCluster(alice, { org: ORG, id: 'c1', mode: 'tunnel', endpoint: 'c1.example.internal', issuer: issuerUrl, audience: 'tether-identity', allowedSubjects: ['system:serviceaccount:t:agent'] });
    await server.service.registerTask(alice, { ...SCOPE, name: 'nightly', version: 'v1', spec: { command: 'true', args: [], env: {}, timeoutSec: 0, maxOutputBytes: 0, description: '' } });
    await server.service.createSchedule(alice, { ...SCOPE, id: 'sched-1', taskName: 'nightly', taskVersion: 'v1', rateMs: 3_600_000, inputs: {} });
    // The service refuses such names; a store shared with another writer (or an older version) may still hold them.
    const now = Date.now();
    const run: RunRecord = {
      ...SCOPE,
      id: HOSTILE_RUN,
      taskName: HOSTILE_TASK,
      taskVersion: 'v1',
      clusterId: 'c1',
      phase: Phase.QUEUED,
      eventSeq: 0,
      spec: { inputs: { [HOSTILE]: `s3://bucket/${HOSTILE}` }, outputPrefix: '', env: {}, labels: { note: HOSTILE } },
      result: { error: null, outputs: {} },
      scheduleId: null,
      fireTime: null,
      createdBy: `user:${HOSTILE}`,
      createdAt: now,
      updatedAt: now,
      startedAt: null,
      endedAt: null,
    };
    await server.store.insertRuns([run], 'all-or-nothing');
    await server.store.recordEvents([{ runId: HOSTILE_RUN, phase: Phase.RUNNING, producerCluster: 'c1', occurredAt: now, message: `started ${HOSTILE}`, error: null, outputs: {} }], decideEvent);
    const base = `http://127.0.0.1:${server.httpPort}`;
    const aliceToken = await issuer.mint({ subject: 'alice', audience: AUDIENCE });
    // Audit entries with HTML: an unknown run id asked for through the API, and a subject with markup.
    await fetch(`${base}/tether.control.v1.RunService/GetRun`, { method: 'POST', headers: { authorization: `Bearer ${aliceToken}` }, body: JSON.stringify({ runId: HOSTILE }) });
    const hostileToken = await issuer.mint({ subject: HOSTILE_SUBJECT, audience: AUDIENCE });
    await fetch(`${base}/tether.control.v1.ClusterService/ListClusters`, { method: 'POST', headers: { authorization: `Bearer ${hostileToken}` }, body: JSON.stringify({ org: ORG }) });
    if (chromium !== null) browser = await launch(chromium);
    env = { issuer, server, base, alice: aliceToken, browser };
  } catch (reason) {
    await release(browser);
    await server?.close();
    await issuer.close();
    throw reason;
  }
});

test.after.always(async () => {
  if (env === undefined) return;
  await release(env.browser);
  await env.server.close();
  await env.issuer.close();
});

// ---- HTTP helpers (cookies by hand, as a script or another site would have to)

interface Answer {
  status: number;
  headers: Headers;
  text: string;
}

async function call(path: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  const response = await fetch(`${ready().base}${path}`, { method: init.method ?? 'GET', headers: init.headers ?? {}, body: init.body, redirect: 'manual' });
  return { status: response.status, headers: response.headers, text: await response.text() };
}

function cookieValue(headers: Headers, name: string): string | undefined {
  for (const line of headers.getSetCookie()) {
    const [pair] = line.split(';');
    const index = pair?.indexOf('=') ?? -1;
    if (pair !== undefined && index > 0 && pair.slice(0, index) === name) return pair.slice(index + 1);
  }
  return undefined;
}

interface Session {
  cookie: string;
  csrf: string;
  setCookie: string;
}

async function logInHttp(token: string): Promise<Session> {
  const form = await call('/console/login');
  const nonce = cookieValue(form.headers, 'tether_console_login') ?? '';
  const login = await call('/console/login', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: `tether_console_login=${nonce}` },
    body: new URLSearchParams({ nonce, token }).toString(),
  });
  if (login.status !== 303) throw new Error(`login: HTTP ${login.status} ${login.text}`);
  const id = cookieValue(login.headers, 'tether_console') ?? '';
  const cookie = `tether_console=${id}`;
  const page = await call('/console/schedules', { headers: { cookie } });
  const csrf = /<meta name="tether-csrf" content="([^"]+)">/.exec(page.text)?.[1] ?? '';
  return { cookie, csrf, setCookie: login.headers.getSetCookie().find((line) => line.startsWith('tether_console=')) ?? '' };
}

function action(session: Session, name: string, body: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  return call(`/console/actions/${name}`, {
    method: 'POST',
    headers: { cookie: session.cookie, 'content-type': 'application/json', 'x-tether-csrf': session.csrf, ...headers },
    body: JSON.stringify(body),
  });
}

function assertSecurityHeaders(t: { true(value: boolean, message?: string): void; is(a: unknown, b: unknown, message?: string): void; false(value: boolean, message?: string): void }, answer: Answer, what: string): void {
  const csp = answer.headers.get('content-security-policy') ?? '';
  t.true(csp.includes("frame-ancestors 'none'"), `${what}: frame-ancestors 'none' in ${csp}`);
  t.true(csp.includes("script-src 'self'"), `${what}: script-src 'self'`);
  t.true(csp.includes("default-src 'none'"), `${what}: default-src 'none'`);
  t.false(csp.includes('unsafe-inline') || csp.includes('unsafe-eval'), `${what}: no unsafe-inline or unsafe-eval`);
  t.is(answer.headers.get('x-content-type-options'), 'nosniff', `${what}: nosniff`);
  t.is(answer.headers.get('referrer-policy'), 'no-referrer', `${what}: no-referrer`);
  t.is(answer.headers.get('x-frame-options'), 'DENY', `${what}: x-frame-options`);
}

test.serial('every console response carries the CSP with frame-ancestors none and no inline script, nosniff and no-referrer', async (t) => {
  const session = await logInHttp(ready().alice);
  const answers: Array<[string, Answer]> = [
    ['login page', await call('/console/login')],
    ['redirect', await call('/console/')],
    ['page without session', await call('/console/runs')],
    ['page', await call('/console/runs', { headers: { cookie: session.cookie } })],
    ['fragment', await call('/console/runs', { headers: { cookie: session.cookie, 'x-tether-fragment': '1' } })],
    ['fragment without session', await call('/console/runs', { headers: { 'x-tether-fragment': '1' } })],
    ['script', await call('/console/static/console.js')],
    ['stylesheet', await call('/console/static/console.css')],
    ['unknown page', await call('/console/nothing-here', { headers: { cookie: session.cookie } })],
    ['malformed path', await call('/console/runs/%E0%A4', { headers: { cookie: session.cookie } })],
    ['action refused', await call('/console/actions/abort-run', { method: 'POST', headers: { cookie: session.cookie } })],
    ['wrong method', await call('/console/actions/abort-run', { headers: { cookie: session.cookie } })],
  ];
  const statuses = Object.fromEntries(answers.map(([what, answer]) => [what, answer.status]));
  t.deepEqual(statuses, {
    'login page': 200,
    redirect: 303,
    'page without session': 303,
    page: 200,
    fragment: 200,
    'fragment without session': 401,
    script: 200,
    stylesheet: 200,
    'unknown page': 404,
    'malformed path': 404,
    'action refused': 403,
    'wrong method': 405,
  });
  for (const [what, answer] of answers) assertSecurityHeaders(t, answer, what);
  const page = answers.find(([what]) => what === 'page')?.[1];
  // Tags only, attribute values emptied: the page also holds the seeded markup, escaped, as text and in values.
  const tags = (page?.text ?? '').replace(/"[^"]*"/g, '""');
  t.notRegex(tags, /<script(?![^>]*\ssrc=)/i, 'no inline script element');
  t.notRegex(tags, /<[^>]*\son[a-z]+\s*=/i, 'no event handler attribute');
  t.notRegex(tags, /<[^>]*\sstyle\s*=/i, 'no style attribute');
  t.true((page?.text ?? '').includes('run-&lt;img src=x onerror=&quot;window.pwned=&#39;yes&#39;&quot;&gt;'), 'the seeded run id, escaped');
  t.is(answers.find(([what]) => what === 'script')?.[1].headers.get('content-type'), 'text/javascript; charset=utf-8');
  const tunnels = await call('/console/tunnels', { headers: { cookie: session.cookie, 'x-tether-fragment': '1' } });
  t.regex(tunnels.text, /data-gateways="not-configured"[^]*not configured/, 'no gateway metrics source: the tunnels page says so');
});

test.serial('the session cookie is HttpOnly, SameSite=Strict, scoped to /console and is not the token; logout needs the CSRF token and ends the session', async (t) => {
  const session = await logInHttp(ready().alice);
  t.regex(session.setCookie, /^tether_console=[A-Za-z0-9_-]{43}; Path=\/console; HttpOnly; SameSite=Strict$/);
  t.false(session.setCookie.includes(ready().alice));
  t.is((await call('/console/clusters', { headers: { cookie: session.cookie } })).status, 200);
  const forged = await call('/console/logout', { method: 'POST', headers: { cookie: session.cookie, 'content-type': 'application/x-www-form-urlencoded' }, body: 'csrf=wrong' });
  t.is(forged.status, 403);
  t.is((await call('/console/clusters', { headers: { cookie: session.cookie } })).status, 200, 'a forged logout ends nothing');
  const logout = await call('/console/logout', { method: 'POST', headers: { cookie: session.cookie, 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ csrf: session.csrf }).toString() });
  t.is(logout.status, 303);
  t.is((await call('/console/clusters', { headers: { cookie: session.cookie } })).status, 303, 'the session is gone');
  t.is((await action(session, 'set-schedule-active', { id: 'sched-1', active: false })).status, 401);
});

test.serial('an action without the CSRF token, with a wrong one, from another origin or as a simple form is refused and changes nothing', async (t) => {
  const session = await logInHttp(ready().alice);
  const body = { id: 'sched-1', active: false };
  const refusals: Array<[string, Answer]> = [
    ['no token', await call('/console/actions/set-schedule-active', { method: 'POST', headers: { cookie: session.cookie, 'content-type': 'application/json' }, body: JSON.stringify(body) })],
    ['wrong token', await action(session, 'set-schedule-active', body, { 'x-tether-csrf': `${session.csrf.slice(0, -2)}xx` })],
    ['other origin', await action(session, 'set-schedule-active', body, { origin: 'http://attacker.invalid' })],
    ['cross-site fetch', await action(session, 'set-schedule-active', body, { 'sec-fetch-site': 'cross-site' })],
  ];
  for (const [what, answer] of refusals) {
    t.is(answer.status, 403, what);
    t.is((JSON.parse(answer.text) as { code: string }).code, 'CONSOLE_CSRF_REFUSED', what);
  }
  const simpleForm = await action(session, 'set-schedule-active', body, { 'content-type': 'text/plain' });
  t.is(simpleForm.status, 400, 'a body a cross-site form could send is refused');
  t.true((await ready().server.store.getSchedule('sched-1'))?.active, 'nothing changed');

  const writes = async (): Promise<number> => (await ready().server.store.listAudit({ operation: 'schedule.write' }, 500, '')).items.length;
  const before = await writes();
  const accepted = await action(session, 'set-schedule-active', body);
  t.is(accepted.status, 200, accepted.text);
  t.false((await ready().server.store.getSchedule('sched-1'))?.active);
  t.is(await writes(), before + 1, 'only the accepted call reached the service (each call to it is audited)');
  t.is((await action(session, 'set-schedule-active', { id: 'sched-1', active: true })).status, 200);
});

test.serial('the login form needs its nonce cookie; a refused token is reported with its code, escaped', async (t) => {
  const form = await call('/console/login');
  const nonce = cookieValue(form.headers, 'tether_console_login') ?? '';
  t.regex(form.headers.getSetCookie().join('\n'), /tether_console_login=[^;]+; Path=\/console; HttpOnly; SameSite=Strict; Max-Age=600/);
  const withoutCookie = await call('/console/login', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ nonce, token: ready().alice }).toString(),
  });
  t.is(withoutCookie.status, 403);
  t.is(cookieValue(withoutCookie.headers, 'tether_console'), undefined, 'no session without the nonce');
  const badToken = await call('/console/login', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: `tether_console_login=${nonce}` },
    body: new URLSearchParams({ nonce, token: 'not-a-jwt<b>' }).toString(),
  });
  t.is(badToken.status, 401);
  t.regex(badToken.text, /<p class="error" id="login-error">Token refused \(TOKEN_MALFORMED\): bearer token is not a JWT<\/p>/);
  t.is(cookieValue(badToken.headers, 'tether_console'), undefined);
});

browserCase('HTML in task names, run ids, phase messages and audit entries is shown as text in the browser, never run', async (t) => {
  const { browser } = ready();
  if (browser === undefined) throw new Error('no browser');
  const page = await logIn(await freshContext(t, browser), `${ready().base}/console/`, ready().alice);
  const dialogs: string[] = [];
  page.on('dialog', (dialog) => dialogs.push(dialog.message()));
  const noMarkupRan = async (where: string): Promise<void> => {
    t.is(await inPage<string | null>(page, `window.pwned ?? null`), null, `${where}: no injected script ran`);
    t.is(await count(page, 'img'), 0, `${where}: no injected img`);
    t.is(await count(page, 'svg:not(.chart)'), 0, `${where}: no injected svg`);
    t.is(await count(page, 'script'), 1, `${where}: only the console's own script`);
  };

  await page.goto(`${ready().base}/console/runs`);
  await page.waitForFunction(`[...document.querySelectorAll('tr[data-run-id]')].some((row) => row.getAttribute('data-run-id') === ${JSON.stringify(HOSTILE_RUN)})`, { timeout: 10_000 });
  const rowText = await inPage<string>(page, `[...document.querySelectorAll('tr[data-run-id]')].find((row) => row.getAttribute('data-run-id') === ${JSON.stringify(HOSTILE_RUN)}).textContent`);
  t.true(rowText.includes(HOSTILE_RUN), rowText);
  t.true(rowText.includes(HOSTILE_TASK), rowText);
  await noMarkupRan('runs');
  // Let the live region refresh at least once: the fragment is escaped too.
  const before = await inPage<string>(page, `document.getElementById('updated').textContent`);
  await page.waitForFunction(`document.getElementById('updated').textContent !== ${JSON.stringify(before)}`, { timeout: 10_000 });
  await noMarkupRan('runs after a refresh');
  t.log(await screenshot(page, 'escaping-runs'));

  await page.click('tr[data-run-id] a');
  await page.waitForSelector('.run', { timeout: 10_000 });
  t.is(await inPage<string>(page, `document.querySelector('h1').textContent`), `Run ${HOSTILE_RUN}`);
  const body = await inPage<string>(page, 'document.body.textContent');
  for (const text of [HOSTILE_TASK, `started ${HOSTILE}`, `note=${HOSTILE}`, `s3://bucket/${HOSTILE}`, `user:${HOSTILE}`]) t.true(body.includes(text), text);
  await noMarkupRan('run');
  t.log(await screenshot(page, 'escaping-run'));

  await page.goto(`${ready().base}/console/audit`);
  await page.waitForSelector('table.audit', { timeout: 10_000 });
  const audit = await inPage<string>(page, `document.querySelector('table.audit').textContent`);
  t.true(audit.includes(`run/${HOSTILE}`), 'the unknown run id asked for through the API');
  t.true(audit.includes(`user:${HOSTILE_SUBJECT}`), 'the subject with markup');
  await noMarkupRan('audit');
  t.log(await screenshot(page, 'escaping-audit'));
  t.deepEqual(dialogs, []);
});

browserCase('the browser refuses to show the console in a frame', async (t) => {
  const { browser } = ready();
  if (browser === undefined) throw new Error('no browser');
  const context = await freshContext(t, browser);
  const page = await context.newPage();
  // A same-origin document without the console's CSP (the API's health check) tries to frame the console.
  await page.goto(`${ready().base}/healthz`);
  const blocked = new Promise<string | null>((resolve) => {
    const timer = setTimeout(() => resolve(null), 10_000);
    page.on('console', (message) => {
      if (/frame-ancestors/.test(message.text())) {
        clearTimeout(timer);
        resolve(message.text());
      }
    });
  });
  await inPage(page, `(() => { const frame = document.createElement('iframe'); frame.src = '/console/login'; document.body.appendChild(frame); })()`);
  const report = await blocked;
  t.truthy(report, 'Chromium reports the frame refused by frame-ancestors');
  t.log(report);
});
