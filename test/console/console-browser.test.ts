/**
 * The operator console in headless Chromium against `tether dev` in this process (the real control
 * plane with its encrypted SQLite store, gateway, agent with executor and dataproxy): log in with
 * the dev token, see the dev cluster and its agent, watch a run started through the API reach
 * SUCCEEDED without a reload, abort a running run from the page, a viewer without buttons who gets
 * 403 for a forged call, and an admin revoking the agent (its channel and tunnels close). Each
 * page is written as a screenshot to test-results/console/.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { decodeJwt, importPKCS8, SignJWT } from 'jose';
import type { Browser, Page } from 'puppeteer-core';
import { startDevSystem } from '../../cli/dev-system.js';
import type { DevSystem } from '../../cli/dev-system.js';
import { createLogger } from '../../common/log.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { browserTest, count, findChromium, forgeAction, freshContext, inPage, launch, logIn, release, screenshot, textOf } from './browser.js';

failOnLeaks(test);

const chromium = findChromium();
const browserCase = browserTest(test, chromium);
const SCOPE = { org: 'dev', project: 'demo', domain: 'development' };
const PHASE_LIMIT_MS = 60_000;
const VIEWER = 'vera';

interface Env {
  dir: string;
  dev: DevSystem;
  browser: Browser;
  adminToken: string;
  viewerToken: string;
}

let env: Env | undefined;

function ready(): Env {
  if (env === undefined) throw new Error('the dev system did not start');
  return env;
}

/** A token for another subject from the dev issuer's saved key (what its `mint` would sign). */
async function mintFromDevIssuer(stateDir: string, like: string, subject: string): Promise<string> {
  const stored = JSON.parse(await readFile(join(stateDir, 'oidc', 'oidc-issuer-keys.json'), 'utf8')) as {
    current: string;
    keys: Array<{ kid: string; alg: string; privateKeyPem: string }>;
  };
  const key = stored.keys.find((entry) => entry.kid === stored.current);
  if (key === undefined) throw new Error('dev issuer has no current key');
  const claims = decodeJwt(like);
  return new SignJWT({ sub: subject, aud: claims.aud })
    .setProtectedHeader({ alg: key.alg, kid: key.kid })
    .setIssuer(String(claims.iss))
    .setIssuedAt()
    .setExpirationTime('1h')
    .sign(await importPKCS8(key.privateKeyPem, key.alg));
}

async function api(method: string, body: unknown, token = ready().adminToken): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(`${ready().dev.controlUrl}/tether.control.v1.${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  return { status: response.status, json: (await response.json()) as Record<string, unknown> };
}

async function apiOk(method: string, body: unknown): Promise<Record<string, unknown>> {
  const answer = await api(method, body);
  if (answer.status !== 200) throw new Error(`${method}: HTTP ${answer.status} ${JSON.stringify(answer.json)}`);
  return answer.json;
}

test.before(async () => {
  if (chromium === null) return;
  const dir = await mkdtemp(join(tmpdir(), 'tether-console-'));
  let dev: DevSystem | undefined;
  let browser: Browser | undefined;
  try {
    dev = await startDevSystem({
      stateDir: join(dir, 'state'),
      listen: { host: '127.0.0.1', port: 0 },
      controlListen: { host: '127.0.0.1', port: 0 },
      logger: createLogger('dev', 'silent'),
    });
    const adminToken = (await readFile(dev.controlTokenFile, 'utf8')).trim();
    const viewerToken = await mintFromDevIssuer(join(dir, 'state'), adminToken, VIEWER);
    browser = await launch(chromium);
    env = { dir, dev, browser, adminToken, viewerToken };
    await apiOk('AccessService/Bind', { principal: `user:${VIEWER}`, role: 'Viewer', scope: { org: 'dev' } });
    await apiOk('TaskService/RegisterTask', {
      scope: SCOPE,
      name: 'report',
      version: 'v1',
      spec: { command: 'sh', args: ['-c', 'echo "the data stays in the data plane" > "$TETHER_OUTPUTS_DIR/report.txt"'], timeoutSec: 60 },
    });
    await apiOk('TaskService/RegisterTask', { scope: SCOPE, name: 'sleeper', version: 'v1', spec: { command: 'sleep', args: ['120'], timeoutSec: 300 } });
    await apiOk('ScheduleService/CreateSchedule', { schedule: { id: 'hourly-report', scope: SCOPE, taskName: 'report', taskVersion: 'v1', rateMs: 3_600_000 } });
  } catch (reason) {
    await release(browser);
    await dev?.close();
    await rm(dir, { recursive: true, force: true });
    env = undefined;
    throw reason;
  }
});

test.after.always(async () => {
  if (env === undefined) return;
  await release(env.browser);
  await env.dev.close();
  await rm(env.dir, { recursive: true, force: true });
});

async function waitForPhase(page: Page, selector: string, phase: string): Promise<void> {
  await page.waitForSelector(`${selector} [data-phase="${phase}"]`, { timeout: PHASE_LIMIT_MS });
}

browserCase('log in with the dev token: the dev cluster, its mode and its connected agent; the session cookie is HttpOnly, SameSite=Strict and not the token', async (t) => {
  const { browser, dev, adminToken } = ready();
  const page = await logIn(await freshContext(t, browser), dev.consoleUrl, adminToken);
  t.regex(page.url(), /\/console\/clusters$/);
  await page.waitForSelector('article[data-cluster="demo"] [data-mode="tunnel"]', { timeout: 10_000 });
  await page.waitForSelector('article[data-cluster="demo"] tr[data-agent="dev-agent"] [data-agent-state="connected"]', { timeout: 10_000 });
  t.is(await textOf(page, '#who'), 'user:dev');
  t.regex(await textOf(page, 'tr[data-agent="dev-agent"]'), /expires in \d+ min/);
  t.is(await count(page, 'tr[data-agent="dev-agent"] button[data-action="revoke-agent"]'), 1, 'an admin gets the revoke button');

  const cookies = await page.cookies();
  const session = cookies.find((cookie) => cookie.name === 'tether_console');
  t.truthy(session);
  t.true(session?.httpOnly);
  t.is(session?.sameSite, 'Strict');
  t.false(adminToken.includes(session?.value ?? 'missing'));
  t.is(await inPage<string>(page, 'document.cookie'), '', 'no cookie is readable from script');
  t.log(await screenshot(page, 'clusters'));

  await page.goto(`${dev.consoleUrl}tunnels`);
  await page.waitForSelector('tr[data-replica="dev-gateway"] [data-figure="tunnels"]', { timeout: 10_000 });
  t.regex(await textOf(page, 'tr[data-replica="dev-gateway"] [data-figure="tunnels"]'), /^\s*[1-9]/, 'the gateway holds the agent\'s tunnels');
  t.log(await screenshot(page, 'tunnels'));
});

browserCase('a run started through the API reaches SUCCEEDED on the runs page without a reload; its page shows the phase history and output URIs, not the data', async (t) => {
  const { browser, dev, adminToken } = ready();
  const page = await logIn(await freshContext(t, browser), dev.consoleUrl, adminToken);
  await page.goto(`${dev.consoleUrl}runs`);
  await page.waitForSelector('#live', { timeout: 10_000 });
  const firstUpdate = await textOf(page, '#updated');
  await inPage(page, `window.sameDocument = 'yes'`);
  t.is(await count(page, 'tr[data-run-id="watched-run"]'), 0);

  await apiOk('RunService/CreateRun', { scope: SCOPE, taskName: 'report', taskVersion: 'v1', runId: 'watched-run', inputs: {} });
  await page.waitForSelector('tr[data-run-id="watched-run"]', { timeout: 15_000 });
  await waitForPhase(page, 'tr[data-run-id="watched-run"]', 'SUCCEEDED');
  t.is(await inPage<string>(page, 'window.sameDocument'), 'yes', 'the page was not reloaded');
  t.not(await textOf(page, '#updated'), firstUpdate, 'the last-updated time moved');
  t.is(await count(page, 'tr[data-run-id="watched-run"] button[data-action]'), 0, 'a finished run has no abort button');
  t.log(await screenshot(page, 'runs'));

  await page.click('tr[data-run-id="watched-run"] a');
  await page.waitForSelector('.run > p [data-phase="SUCCEEDED"]', { timeout: 10_000 });
  const history = await inPage<string[]>(page, `[...document.querySelectorAll('table.events [data-phase]')].map((node) => node.textContent)`);
  t.deepEqual(history.slice(-1), ['SUCCEEDED']);
  t.true(history.includes('RUNNING'), history.join(','));
  const outputs = await textOf(page, '.run dl.uris:last-of-type');
  t.regex(outputs, /tether-blob:\/\/demo-data\/runs\/demo\/development\/watched-run\/report\.txt/);
  t.false((await inPage<string>(page, 'document.body.textContent')).includes('the data stays in the data plane'), 'the output data is not shown');
  t.log(await screenshot(page, 'run'));
});

browserCase('an admin aborts a running run from its page after confirming; the run ends ABORTED and the abort is audited', async (t) => {
  const { browser, dev, adminToken } = ready();
  await apiOk('RunService/CreateRun', { scope: SCOPE, taskName: 'sleeper', taskVersion: 'v1', runId: 'abort-me', inputs: {} });
  const page = await logIn(await freshContext(t, browser), dev.consoleUrl, adminToken);
  await page.goto(`${dev.consoleUrl}runs/abort-me`);
  await waitForPhase(page, '.run > p', 'RUNNING');
  let question = '';
  page.once('dialog', (dialog) => {
    question = dialog.message();
    void dialog.accept();
  });
  await page.click('.run button[data-action="abort-run"]');
  await waitForPhase(page, '.run > p', 'ABORTED');
  t.regex(question, /^Abort run abort-me \(sleeper v1\)\?/);
  t.regex(await textOf(page, '#flash'), /abort-run: done/);
  const audit = await apiOk('AuditService/ListAudit', { org: 'dev', operation: 'run.abort' });
  const records = audit.records as Array<{ principal: string; resource: string; result: string }>;
  t.true(records.some((record) => record.principal === 'user:dev' && record.resource.endsWith('/run/abort-me') && record.result === 'OK'), JSON.stringify(records));
  t.log(await screenshot(page, 'run-aborted'));
});

browserCase('a dismissed confirmation sends nothing', async (t) => {
  const { browser, dev, adminToken } = ready();
  await apiOk('RunService/CreateRun', { scope: SCOPE, taskName: 'sleeper', taskVersion: 'v1', runId: 'keep-me', inputs: {} });
  t.teardown(async () => {
    await api('RunService/AbortRun', { runId: 'keep-me', reason: 'test over' });
  });
  const page = await logIn(await freshContext(t, browser), dev.consoleUrl, adminToken);
  await page.goto(`${dev.consoleUrl}runs/keep-me`);
  await page.waitForSelector('.run button[data-action="abort-run"]', { timeout: 10_000 });
  let asked = false;
  page.once('dialog', (dialog) => {
    asked = true;
    void dialog.dismiss();
  });
  const before = await textOf(page, '#updated');
  await page.click('.run button[data-action="abort-run"]');
  t.true(asked, 'the page asked before acting');
  // A request sent despite the answer would have finished by the next refresh.
  await page.waitForFunction(`document.getElementById('updated').textContent !== ${JSON.stringify(before)}`, { timeout: 10_000 });
  const run = (await apiOk('RunService/GetRun', { runId: 'keep-me' })).run as { phase: string };
  t.true(['PHASE_QUEUED', 'PHASE_INITIALIZING', 'PHASE_RUNNING'].includes(run.phase), run.phase);
  t.true(await inPage<boolean>(page, `document.getElementById('flash').hidden`), 'no action was sent');
});

browserCase('a viewer sees every page but gets no action buttons, and a forged action call is refused 403 and audited', async (t) => {
  const { browser, dev, viewerToken } = ready();
  await apiOk('RunService/CreateRun', { scope: SCOPE, taskName: 'sleeper', taskVersion: 'v1', runId: 'viewer-target', inputs: {} });
  t.teardown(async () => {
    await api('RunService/AbortRun', { runId: 'viewer-target', reason: 'test over' });
  });
  const page = await logIn(await freshContext(t, browser), dev.consoleUrl, viewerToken);
  t.is(await textOf(page, '#who'), `user:${VIEWER}`);
  t.regex(await textOf(page, '.who .roles'), /Viewer/);
  await page.waitForSelector('tr[data-agent="dev-agent"]', { timeout: 10_000 });
  t.is(await count(page, 'button[data-action]'), 0, 'no revoke button for a viewer');

  await page.goto(`${dev.consoleUrl}runs`);
  await page.waitForSelector('tr[data-run-id="viewer-target"]', { timeout: 10_000 });
  t.is(await count(page, 'button[data-action]'), 0, 'no abort button for a viewer');
  t.log(await screenshot(page, 'runs-viewer'));
  await page.goto(`${dev.consoleUrl}runs/viewer-target`);
  await page.waitForSelector('.run', { timeout: 10_000 });
  t.is(await count(page, 'button[data-action]'), 0);
  await page.goto(`${dev.consoleUrl}schedules`);
  await page.waitForSelector('tr[data-schedule="hourly-report"]', { timeout: 10_000 });
  t.is(await count(page, 'button[data-action]'), 0, 'no pause button for a viewer');

  const abort = await forgeAction(page, 'abort-run', { runId: 'viewer-target' });
  t.is(abort.status, 403);
  t.is(abort.body.code, 'CONTROL_PERMISSION_DENIED');
  const pause = await forgeAction(page, 'set-schedule-active', { id: 'hourly-report', active: false });
  t.is(pause.status, 403);
  t.is(pause.body.code, 'CONTROL_PERMISSION_DENIED');
  const revoke = await forgeAction(page, 'revoke-agent', { clusterId: 'demo', agentId: 'dev-agent' });
  t.is(revoke.status, 403);
  t.is(revoke.body.code, 'CONTROL_PERMISSION_DENIED');

  const run = (await apiOk('RunService/GetRun', { runId: 'viewer-target' })).run as { phase: string };
  t.false(['PHASE_ABORTING', 'PHASE_ABORTED'].includes(run.phase), run.phase);
  const schedules = (await apiOk('ScheduleService/ListSchedules', { org: 'dev' })).schedules as Array<{ id: string; active?: boolean }>;
  t.true(schedules.find((schedule) => schedule.id === 'hourly-report')?.active);
  const audit = (await apiOk('AuditService/ListAudit', { org: 'dev', principal: `user:${VIEWER}` })).records as Array<{ operation: string; result: string }>;
  for (const operation of ['run.abort', 'schedule.write', 'agent.revoke']) {
    t.true(audit.some((record) => record.operation === operation && record.result === 'CONTROL_PERMISSION_DENIED'), `${operation} refusal audited`);
  }

  await page.goto(`${dev.consoleUrl}audit`);
  await page.waitForSelector('[data-denied="audit.read"]', { timeout: 10_000 });
  t.log(await screenshot(page, 'audit-viewer'));
});

browserCase('an admin pauses a schedule from the page; the schedules and audit pages show it', async (t) => {
  const { browser, dev, adminToken } = ready();
  const page = await logIn(await freshContext(t, browser), dev.consoleUrl, adminToken);
  await page.goto(`${dev.consoleUrl}schedules`);
  await page.waitForSelector('tr[data-schedule="hourly-report"] [data-active="active"]', { timeout: 10_000 });
  page.once('dialog', (dialog) => void dialog.accept());
  await page.click('tr[data-schedule="hourly-report"] button[data-action="set-schedule-active"]');
  await page.waitForSelector('tr[data-schedule="hourly-report"] [data-active="paused"]', { timeout: 10_000 });
  t.log(await screenshot(page, 'schedules'));
  await page.goto(`${dev.consoleUrl}audit?operation=schedule.write`);
  await page.waitForSelector('table.audit tr[data-seq]', { timeout: 10_000 });
  t.regex(await textOf(page, 'table.audit tbody tr'), /user:dev[\s\S]*schedule\.write[\s\S]*hourly-report[\s\S]*OK/);
  await page.goto(`${dev.consoleUrl}audit`);
  await page.waitForSelector('table.audit tr[data-seq]', { timeout: 10_000 });
  t.log(await screenshot(page, 'audit'));
});

browserCase('an admin revokes the agent: its channel and tunnels close, it cannot get a certificate; reinstating lifts it (runs last: the dev agent stays out)', async (t) => {
  const { browser, dev, adminToken } = ready();
  const page = await logIn(await freshContext(t, browser), dev.consoleUrl, adminToken);
  await page.waitForSelector('tr[data-agent="dev-agent"] [data-agent-state="connected"]', { timeout: 10_000 });
  let question = '';
  page.once('dialog', (dialog) => {
    question = dialog.message();
    void dialog.accept();
  });
  await page.click('tr[data-agent="dev-agent"] button[data-action="revoke-agent"]');
  await page.waitForSelector('tr[data-agent="dev-agent"] [data-agent-state="revoked"]', { timeout: 10_000 });
  t.regex(question, /^Revoke agent dev-agent of cluster demo\?/);
  t.log(await screenshot(page, 'clusters-revoked'));

  await page.goto(`${dev.consoleUrl}tunnels`);
  await page.waitForFunction(`document.querySelector('tr[data-replica="dev-gateway"] [data-figure="tunnels"]')?.textContent.trim().startsWith('0')`, { timeout: 10_000 });
  const exchange = await fetch(`${dev.controlUrl}/tether.control.v1.IdentityService/ExchangeToken`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token: 'not-checked', csrPem: 'not-checked', clusterId: 'demo', agentId: 'dev-agent' }),
  });
  t.is(exchange.status, 403, 'the identity exchange refuses the revoked agent before looking at its token');
  const audit = (await apiOk('AuditService/ListAudit', { org: 'dev', operation: 'agent.revoke' })).records as Array<{ principal: string; resource: string; result: string }>;
  t.true(audit.some((record) => record.principal === 'user:dev' && record.resource === 'org/dev/cluster/demo/agent/dev-agent' && record.result === 'OK'));

  await page.goto(`${dev.consoleUrl}clusters`);
  page.once('dialog', (dialog) => void dialog.accept());
  await page.click('tr[data-agent="dev-agent"] button[data-action="reinstate-agent"]');
  await page.waitForFunction(`document.querySelector('tr[data-agent="dev-agent"] [data-agent-state]')?.getAttribute('data-agent-state') !== 'revoked'`, { timeout: 10_000 });
  t.is(await count(page, 'tr[data-agent="dev-agent"] button[data-action="revoke-agent"]'), 1);
});
