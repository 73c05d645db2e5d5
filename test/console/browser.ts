/**
 * Headless Chromium for the console's tests, driven over the DevTools protocol by puppeteer-core
 * (the Debian package `chromium`; no browser is downloaded). Locally, without it, the tests skip
 * with a message naming the package; in CI (`CI` set) its absence fails the file.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExecutionContext, SkipFn, TestFn } from 'ava';
import puppeteer from 'puppeteer-core';
import type { Browser, BrowserContext, Page } from 'puppeteer-core';
import { REPO } from '../helpers/dev-process.js';

export const SCREENSHOTS = join(REPO, 'test-results', 'console');

const CANDIDATES = [process.env.TETHER_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'];

/** The Chromium binary, or null (and a warning) when it is missing outside CI. */
export function findChromium(): string | null {
  const found = CANDIDATES.find((path): path is string => path !== undefined && path !== '' && existsSync(path)) ?? null;
  if (found === null) {
    if (process.env.CI !== undefined && process.env.CI !== '') throw new Error('Chromium is required in CI (Debian package "chromium")');
    console.warn('skipping the console browser tests: install the Debian package "chromium"');
  }
  return found;
}

/** `test.serial`, or its skip when there is no Chromium. */
export function browserTest<C>(test: TestFn<C>, chromium: string | null): SkipFn<C> {
  return chromium === null ? test.serial.skip : test.serial;
}

export async function launch(executablePath: string): Promise<Browser> {
  return puppeteer.launch({
    executablePath,
    headless: true,
    // Root in CI has no user namespace sandbox; the pages are our own console on loopback.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check'],
  });
}

/** Close the browser; whatever is left of its process is killed. */
export async function release(browser: Browser | undefined): Promise<void> {
  if (browser === undefined) return;
  const child = browser.process();
  try {
    await browser.close();
  } finally {
    if (child !== null && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

/** A fresh cookie jar (one per user) whose pages are closed when the test ends. */
export async function freshContext(t: ExecutionContext<unknown>, browser: Browser): Promise<BrowserContext> {
  const context = await browser.createBrowserContext();
  t.teardown(() => context.close());
  return context;
}

/** Log in through the form with `token`; the page ends on /console/clusters. */
export async function logIn(context: BrowserContext, consoleUrl: string, token: string): Promise<Page> {
  const page = await context.newPage();
  await page.setViewport({ width: 1280, height: 860 });
  page.on('dialog', (dialog) => {
    // Every test that expects a confirmation handles it itself with page.once; anything else is a failure.
    if (dialog.type() !== 'confirm') void dialog.dismiss();
  });
  await page.goto(`${consoleUrl}login`);
  await page.type('#token', token);
  await Promise.all([page.waitForNavigation(), page.click('#login-form button[type="submit"]')]);
  return page;
}

/**
 * A full-page screenshot. Chromium may measure a page that is not the focused tab (several
 * contexts in one browser) as 0 pixels wide: bring it to the front and let it paint a frame, and
 * try again (at most three times) when it still does.
 */
export async function screenshot(page: Page, name: string): Promise<string> {
  await mkdir(SCREENSHOTS, { recursive: true });
  const path = join(SCREENSHOTS, `${name}.png`);
  for (let attempt = 1; ; attempt += 1) {
    await page.bringToFront();
    await page.evaluate('new Promise((resolve) => requestAnimationFrame(() => resolve(null)))');
    try {
      await page.screenshot({ path, fullPage: true });
      return path;
    } catch (reason) {
      if (attempt >= 3 || !(reason instanceof Error) || !reason.message.includes('0 width')) throw reason;
    }
  }
}

/** `expression` evaluated in the page (the tests type-check without the DOM library). */
export async function inPage<T>(page: Page, expression: string): Promise<T> {
  return (await page.evaluate(expression)) as T;
}

export async function textOf(page: Page, selector: string): Promise<string> {
  return inPage<string>(page, `document.querySelector(${JSON.stringify(selector)})?.textContent ?? ''`);
}

export async function count(page: Page, selector: string): Promise<number> {
  return inPage<number>(page, `document.querySelectorAll(${JSON.stringify(selector)}).length`);
}

export interface ForgedAnswer {
  status: number;
  body: { code?: string; message?: string; ok?: boolean };
}

/** POST an action from inside the page, with the page's own CSRF token (what a crafted call by that user does). */
export async function forgeAction(page: Page, action: string, body: unknown, withCsrf = true): Promise<ForgedAnswer> {
  return inPage<ForgedAnswer>(
    page,
    `(async () => {
      const csrf = document.querySelector('meta[name="tether-csrf"]')?.getAttribute('content') ?? '';
      const headers = { 'content-type': 'application/json' };
      if (${withCsrf ? 'true' : 'false'}) headers['x-tether-csrf'] = csrf;
      const response = await fetch('/console/actions/${action}', { method: 'POST', credentials: 'same-origin', headers, body: ${JSON.stringify(JSON.stringify(body))} });
      return { status: response.status, body: await response.json() };
    })()`,
  );
}
