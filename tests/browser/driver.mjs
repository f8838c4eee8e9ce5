// Drives the official LiveKit browser SDK (livekit-client) in Debian's Chromium through
// playwright-core, for tests/support/browser.py. Never downloads a browser: it launches
// /usr/bin/chromium (or $CHROMIUM) with fake camera and microphone.
//
// It serves page.html, page.js and livekit-client's UMD build from node_modules on
// http://localhost:<port> (localhost is a secure context, so getUserMedia works), then reads
// one JSON command per line on stdin and answers one JSON line on stdout:
//   {"id": 1, "op": "open", "page": "alice"}              a new browser context + page
//   {"id": 2, "op": "call", "page": "alice", "fn": "connect", "args": [...]}
//                                                         window.T[fn](...args) in the page
//   {"id": 3, "op": "close", "page": "alice"}
//   {"id": 4, "op": "screenshot", "page": "alice", "path": "/tmp/x.png"}
//   {"id": 5, "op": "goto", "page": "console", "url": "http://..."}   a new context + page at
//                                                         any URL (no page.js helpers there)
//   {"id": 6, "op": "text", "page": "console", "selector": "#nodes"}   its innerText
//   {"id": 7, "op": "click", "page": "console", "selector": "button[data-drain]"}
//   {"id": 9, "op": "fill", "page": "console", "selector": "input", "value": "..."}
//   {"id": 10, "op": "url", "page": "console"}              the address the page shows
//   {"id": 8, "op": "wait_text", "page": "console", "selector": "...", "text": "...", "ms": 9000}
//                                                         until the selector's text has "text"
// Answers: {"id": 1, "ok": true, "result": ...} or {"id": 1, "ok": false, "error": "..."}.
// Unsolicited lines carry "event": ready, console (page errors and warnings), pageerror, crash.
// It exits when stdin closes.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const FILES = {
  '/': ['page.html', 'text/html'],
  '/page.js': ['page.js', 'text/javascript'],
  '/livekit-client.umd.js': [
    'node_modules/livekit-client/dist/livekit-client.umd.js',
    'text/javascript',
  ],
};

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const server = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://localhost').pathname;
  const entry = FILES[path];
  if (!entry) {
    res.writeHead(404).end();
    return;
  }
  try {
    const body = await readFile(join(here, entry[0]));
    res.writeHead(200, { 'Content-Type': entry[1], 'Cache-Control': 'no-store' }).end(body);
  } catch (err) {
    res.writeHead(500).end(String(err));
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const origin = `http://localhost:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  timeout: 60_000,
  args: [
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
    // Pages share two cores with the server: keep hidden-tab throttling out of the picture.
    '--disable-background-timer-throttling',
    '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
    // Real host candidates (no mDNS names): the test namespace's address is all there is.
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    '--disable-gpu',
    '--no-first-run',
    '--no-default-browser-check',
    '--disable-dev-shm-usage',
  ],
});

const pages = new Map();

async function openPage(name, url) {
  if (pages.has(name)) throw new Error(`page ${name} is already open`);
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    permissions: ['camera', 'microphone'],
  });
  const page = await context.newPage();
  page.on('console', (msg) => {
    const type = msg.type();
    if (type === 'error' || type === 'warning') {
      emit({ event: 'console', page: name, type, text: msg.text().slice(0, 400) });
    }
  });
  page.on('pageerror', (err) => emit({ event: 'pageerror', page: name, text: String(err) }));
  page.on('crash', () => emit({ event: 'crash', page: name }));
  if (url) {
    await page.goto(url, { timeout: 30_000 });
    pages.set(name, { context, page });
    return { url: page.url() };
  }
  await page.goto(`${origin}/`, { timeout: 30_000 });
  await page.waitForFunction(() => window.T && window.T.ready, null, { timeout: 30_000 });
  pages.set(name, { context, page });
  return { origin, userAgent: await page.evaluate(() => navigator.userAgent) };
}

function pageOf(name) {
  const entry = pages.get(name);
  if (!entry) throw new Error(`no page ${name}`);
  return entry.page;
}

async function handle(cmd) {
  switch (cmd.op) {
    case 'open':
      return openPage(cmd.page);
    case 'call':
      return pageOf(cmd.page).evaluate(
        ({ fn, args }) => {
          if (typeof window.T[fn] !== 'function') throw new Error(`no helper T.${fn}`);
          return window.T[fn](...args);
        },
        { fn: cmd.fn, args: cmd.args ?? [] },
      );
    case 'close': {
      const entry = pages.get(cmd.page);
      pages.delete(cmd.page);
      if (entry) await entry.context.close();
      return null;
    }
    case 'goto':
      return openPage(cmd.page, cmd.url);
    case 'text':
      return pageOf(cmd.page).locator(cmd.selector).first().innerText({ timeout: cmd.ms ?? 10_000 });
    case 'click':
      await pageOf(cmd.page).locator(cmd.selector).first().click({ timeout: cmd.ms ?? 10_000 });
      return null;
    case 'fill':
      await pageOf(cmd.page).locator(cmd.selector).first().fill(cmd.value, { timeout: 10_000 });
      return null;
    case 'url':
      return pageOf(cmd.page).url();
    case 'wait_text': {
      const found = await pageOf(cmd.page).waitForFunction(
        ({ selector, text }) => {
          const node = document.querySelector(selector);
          return node && node.innerText.includes(text) ? node.innerText : false;
        },
        { selector: cmd.selector, text: cmd.text },
        { timeout: cmd.ms ?? 10_000 },
      );
      return found.jsonValue();
    }
    case 'screenshot':
      await pageOf(cmd.page).screenshot({ path: cmd.path });
      return cmd.path;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

emit({
  event: 'ready',
  origin,
  chromium: browser.version(),
  sdk: JSON.parse(await readFile(join(here, 'node_modules/livekit-client/package.json'))).version,
});

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    emit({ event: 'bad_command', text: line.slice(0, 200) });
    return;
  }
  handle(cmd).then(
    (result) => emit({ id: cmd.id, ok: true, result: result ?? null }),
    (err) => emit({ id: cmd.id, ok: false, error: String(err?.message ?? err).slice(0, 4000) }),
  );
});
lines.on('close', async () => {
  const timer = setTimeout(() => process.exit(0), 5_000);
  try {
    await browser.close();
  } finally {
    clearTimeout(timer);
    server.close();
    process.exit(0);
  }
});
