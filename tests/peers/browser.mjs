// A person at a browser, for tests/browser.rs: Debian's chromium, headless, driven through the
// DevTools protocol by puppeteer-core (pinned in package.json; it downloads no browser). It opens
// a URL and does what a person signing in does on oidc-provider's development pages: types a
// login and password and submits, continues (or cancels) on the consent page, and types the
// device flow's user code on its verification page. It stops on the first page with nothing to
// fill in (or once the URL starts with `until`), and reports that page as a person sees it.
//
// Usage: node browser.mjs '<json>', the JSON object holding:
//   url          the page to open (required)
//   login        typed into the login page's login field (default `test-user`)
//   password     typed into its password field (default `any password`; the pages take any)
//   consent      `accept` (default): Continue on the consent and device confirmation pages;
//                `deny`: [ Cancel ] / [ Abort ] there
//   userCode     typed into the device flow's user-code page
//   until        a URL prefix: stop once the page's URL starts with it, whatever it shows
//   screenshot   path of a PNG of the last page (its directory is created)
//   timeoutMs    limit on the whole run, browser start included (default 30000)
//   chromium     the browser (default $CHROMIUM, else /usr/bin/chromium)
//
// Prints one JSON line on stdout: {url, status, title, text, steps, blocked, screenshot} where
// `text` is the page's visible text (innerText), `status` the HTTP status of its document,
// `steps` what was done on which page and `blocked` the requests refused (only loopback is
// reached: the pages import web fonts, and a test must not depend on the internet). On failure
// it prints {error, url, text, steps, screenshot} and exits 1. Either way the browser is closed,
// killed if it does not close, and its temporary profile removed. It also ends (killing the
// browser) when its stdin closes, so a test that dies takes the browser with it;
// BROWSER_IGNORE_STDIN=1 turns that off for a run by hand.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import puppeteer from 'puppeteer-core';

const args = JSON.parse(process.argv[2] ?? '{}');
if (typeof args.url !== 'string') {
  process.stderr.write('usage: node browser.mjs \'{"url": "...", ...}\'\n');
  process.exit(2);
}
const TIMEOUT_MS = args.timeoutMs ?? 30_000;
// One page load or one element to wait for; the whole run is bounded by TIMEOUT_MS too.
const STEP_TIMEOUT_MS = Math.min(10_000, TIMEOUT_MS);
// Login, consent, device code, device confirmation, and a second look at each at most.
const MAX_STEPS = 8;
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

let browser;
let page;
let profile;
const steps = [];
const blocked = new Set();

// The document's last HTTP status (a redirect chain reports its last response).
let status = null;

async function visible() {
  const url = page?.url() ?? null;
  let title = null;
  let text = null;
  try {
    title = await page.title();
    text = await page.evaluate(() => document.body?.innerText ?? '');
  } catch {
    // A page still loading or gone: report what is known.
  }
  return { url, status, title, text };
}

async function screenshot() {
  if (!args.screenshot || !page) return null;
  try {
    mkdirSync(path.dirname(args.screenshot), { recursive: true });
    await page.screenshot({ path: args.screenshot, fullPage: true });
    return args.screenshot;
  } catch (err) {
    process.stderr.write(`browser.mjs: no screenshot: ${err?.message ?? err}\n`);
    return null;
  }
}

// Closes the browser, and kills it if closing does not finish at once.
async function closeBrowser() {
  const proc = browser?.process();
  if (browser) {
    await Promise.race([browser.close().catch(() => {}), new Promise((r) => { setTimeout(r, 3000); })]);
  }
  if (proc && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  if (profile) rmSync(profile, { recursive: true, force: true, maxRetries: 3 });
}

// `promise`, or `fallback` after `ms`: a hung browser must not hold up the report.
function bounded(promise, ms, fallback) {
  return Promise.race([promise, new Promise((r) => { setTimeout(() => r(fallback), ms); })]);
}

let finished = false;
async function finish(code, report) {
  if (finished) return;
  finished = true;
  report.screenshot = await bounded(screenshot(), 5000, null);
  await closeBrowser();
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exit(code);
}

async function fail(err) {
  const seen = await bounded(visible().catch(() => ({})), 3000, {});
  await finish(1, { error: String(err?.message ?? err), ...seen, steps, blocked: [...blocked] });
}

// Clicks `selector` and waits for the page it leads to.
async function clickAndWait(selector) {
  const [response] = await Promise.all([
    page.waitForNavigation({ waitUntil: 'load', timeout: STEP_TIMEOUT_MS }),
    page.click(selector),
  ]);
  status = response?.status() ?? status;
}

async function has(selector) {
  return (await page.$(selector)) !== null;
}

// What a person would do on the current page, or null when there is nothing to fill in.
async function nextAction() {
  const accept = (args.consent ?? 'accept') === 'accept';
  if (await has('form input[name="prompt"][value="login"]')) {
    return ['login', async () => {
      await page.type('input[name="login"]', args.login ?? 'test-user');
      await page.type('input[name="password"]', args.password ?? 'any password');
      await clickAndWait('button[type="submit"]');
    }];
  }
  if (await has('form input[name="prompt"][value="consent"]')) {
    return accept
      ? ['consent: Continue', () => clickAndWait('button[type="submit"]')]
      : ['consent: Cancel', () => clickAndWait('a[href$="/abort"]')];
  }
  if (await has('form[id="op.deviceInputForm"]')) {
    if (typeof args.userCode !== 'string') throw new Error('the page asks for a user code and none was given');
    return ['device: user code', async () => {
      await page.type('input[name="user_code"]', args.userCode);
      await clickAndWait('button[form="op.deviceInputForm"]');
    }];
  }
  if (await has('form[id="op.deviceConfirmForm"]')) {
    return accept
      ? ['device: Continue', () => clickAndWait('button[autofocus][form="op.deviceConfirmForm"]')]
      : ['device: Abort', () => clickAndWait('button[name="abort"][form="op.deviceConfirmForm"]')];
  }
  return null;
}

async function main() {
  profile = mkdtempSync(path.join(os.tmpdir(), 'tower-bearer-chromium-'));
  browser = await puppeteer.launch({
    executablePath: args.chromium ?? process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    userDataDir: profile,
    pipe: true,
    timeout: STEP_TIMEOUT_MS,
    protocolTimeout: STEP_TIMEOUT_MS,
    defaultViewport: { width: 800, height: 600 },
    args: [
      // Chromium's sandbox refuses to run as root, which CI containers are.
      ...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
      '--disable-dev-shm-usage',
      '--disable-gpu',
      '--no-first-run',
      '--no-default-browser-check',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  page = await browser.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  await page.setRequestInterception(true);
  page.on('request', (request) => {
    const url = new URL(request.url());
    // data: and blob: URLs stay in the page; the network is reached through the others.
    const network = ['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol);
    if (!network || LOOPBACK_HOSTS.has(url.hostname)) {
      request.continue();
    } else {
      blocked.add(`${url.origin}${url.pathname}`);
      request.abort('blockedbyclient');
    }
  });

  const response = await page.goto(args.url, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
  status = response?.status() ?? null;
  for (;;) {
    if (args.until && page.url().startsWith(args.until)) break;
    const action = await nextAction();
    if (!action) break;
    if (steps.length >= MAX_STEPS) throw new Error(`still filling in pages after ${MAX_STEPS} steps`);
    const [what, act] = action;
    steps.push({ page: page.url(), action: what });
    await act();
  }
  await finish(0, { ...(await visible()), steps, blocked: [...blocked] });
}

setTimeout(() => { fail(new Error(`not done within ${TIMEOUT_MS} ms`)); }, TIMEOUT_MS);
if (process.env.BROWSER_IGNORE_STDIN !== '1') {
  const gone = () => { fail(new Error('stdin closed: the test has gone')); };
  process.stdin.on('end', gone);
  process.stdin.on('close', gone);
  process.stdin.on('error', gone);
  process.stdin.resume();
}
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => { fail(new Error(signal)); });
main().catch(fail);
