// The status page in a real browser (Debian's chromium, driven by playwright-core; no browser download):
// rows and states, live updates and growing charts, an operator's button taking a backend out while
// traffic goes on, no buttons without the level, and the plain table with JavaScript off.
//
// A screenshot of the live page is written to $LB_ARTIFACTS (default: the OS temp dir)/http-status-page.png;
// LB_SCREENSHOT=docs/status-page.png writes the README's picture.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ask, backendOf, echoServer, track } from '../helpers/backends.ts';
import { startHttpLb, type HttpLb } from '../helpers/http.ts';
import { at, cleanup, ROOT } from '../helpers/lb.ts';
import { hasTool } from '../helpers/control.ts';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];

afterEach(cleanup);

let haveChromium = false;
beforeAll(() => {
  haveChromium = hasTool('chromium');
});

/** A fresh browser profile per test, closed (and removed) with the test's other resources. */
async function browser(opts: { javaScriptEnabled?: boolean } = {}): Promise<BrowserContext> {
  const profile = mkdtempSync(path.join(tmpdir(), 'lb-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1400, height: 900 },
    timeout: 20_000,
    ...opts,
  });
  track({
    close: async () => {
      await context.close().catch(() => undefined);
      rmSync(profile, { recursive: true, force: true });
    },
  });
  return context;
}

async function startPage(doc: Record<string, unknown>, sampleMs = 250): Promise<{ h: HttpLb; page: Page; ports: number[] }> {
  const backends = [await echoServer('a', { prefix: true }), await echoServer('b', { prefix: true }), await echoServer('c', { prefix: true })];
  const ports = backends.map((b) => b.port);
  const h = await startHttpLb(
    {
      global: { access_log: false },
      control: { http: '127.0.0.1:0', ...doc },
      listeners: { web: { listen: '127.0.0.1:0', groups: [{ policy: 'rr', backends: ports.map(at) }] } },
    },
    { sampleMs },
  );
  const context = await browser();
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(8000);
  return { h, page, ports };
}

/** Clients through lb until stopped (bounded in count), each answer's backend recorded in order. */
function traffic(port: number): { answers: string[]; stop(): Promise<void> } {
  const answers: string[] = [];
  let running = true;
  const loop = (async () => {
    for (let i = 0; i < 2000 && running; i++) {
      answers.push(backendOf(await ask(port, `ping ${i}`)));
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return { answers, stop: async () => { running = false; await loop; } };
}

const row = (port: number): string => `tr[data-row="B web 0 127.0.0.1:${port}"]`;

describe('the status page in chromium', () => {
  it('shows the rows, updates itself, grows its charts, and an admin\'s disable button moves traffic away', async (ctx) => {
    if (!haveChromium) return ctx.skip('chromium (Debian package) is not installed');
    const { h, page, ports } = await startPage({ http_level: 'admin' });
    const load = traffic(h.lb.port());
    try {
      await page.goto(`${h.base}/`);
      await expect.poll(() => page.locator('tr[data-row]').count()).toBe(3);
      for (const p of ports) expect(await page.locator(`${row(p)} [data-k$="|state"]`).textContent()).toBe('UP');
      await expect.poll(() => page.locator('#live').textContent()).toMatch(/^live · /);

      // The listener's chart gains a point with every tick.
      const points = async (): Promise<number> => Number((await page.locator('svg[data-series="L web"]').getAttribute('data-points')) ?? 0);
      await expect.poll(points).toBeGreaterThanOrEqual(2);
      const before = await points();
      await expect.poll(points).toBeGreaterThan(before);
      expect(await page.locator('svg[data-series="L web"] path.c').getAttribute('d')).toMatch(/^M[\d.]+ [\d.]+(L[\d.]+ [\d.]+)+$/);
      // The total on the page follows the traffic without a reload.
      const total1 = await page.locator('[data-k="L web|total"]').textContent();
      await expect.poll(() => page.locator('[data-k="L web|total"]').textContent()).not.toBe(total1);

      await page.locator(`${row(ports[1]!)} button[value="disable"]`).click();
      await expect.poll(() => page.locator('#result').textContent()).toBe('channel 1 disabled');
      await expect.poll(() => page.locator(`${row(ports[1]!)} [data-k$="|state"]`).textContent()).toBe('DIS');
      expect(await page.locator(`${row(ports[1]!)} [data-k$="|state"]`).getAttribute('class')).toBe('st dis');

      // From the disable on, clients go to a and c only.
      const mark = load.answers.length;
      await expect.poll(() => load.answers.length, { timeout: 8000 }).toBeGreaterThan(mark + 12);
      const after = load.answers.slice(mark + 1); // the one in flight at the click may still have gone to b
      expect(after).not.toContain('b');
      expect(new Set(after)).toEqual(new Set(['a', 'c']));

      await expect.poll(points, { timeout: 8000 }).toBeGreaterThanOrEqual(8);
      const dir = process.env.LB_ARTIFACTS ?? path.join(tmpdir(), 'lb-test-artifacts');
      mkdirSync(dir, { recursive: true });
      await page.screenshot({ path: path.join(dir, 'http-status-page.png'), fullPage: true });
      if (process.env.LB_SCREENSHOT) await page.screenshot({ path: path.resolve(ROOT, process.env.LB_SCREENSHOT), fullPage: true });
    } finally {
      await load.stop();
    }
  }, 40_000);

  it('at read level has no buttons, and a POST forged from the page is refused', async (ctx) => {
    if (!haveChromium) return ctx.skip('chromium (Debian package) is not installed');
    const { h, page } = await startPage({});
    await page.goto(`${h.base}/`);
    await expect.poll(() => page.locator('tr[data-row]').count()).toBe(3);
    expect(await page.locator('button').count()).toBe(0);
    expect(await page.locator('.who').textContent()).toBe('level read');
    // Run in the page (its origin, its cookies): what a script injected there could do.
    const status = await page.evaluate(`fetch('/action', { method: 'POST', body: new URLSearchParams({ cmd: 'disable', listener: 'web', group: '0', backend: '0', csrf: 'forged' }) }).then((r) => r.status)`);
    expect(status).toBe(403);
    expect(h.lb.rt.table.listeners[0]!.groups[0]!.backends.every((b) => b.enabled)).toBe(true);
  }, 30_000);

  it('works with JavaScript off as a plain table, and its form posts still answer', async (ctx) => {
    if (!haveChromium) return ctx.skip('chromium (Debian package) is not installed');
    const backends = [await echoServer('a'), await echoServer('b')];
    const h = await startHttpLb({
      global: { access_log: false },
      control: { http: '127.0.0.1:0', http_level: 'operator' },
      listeners: { web: { listen: '127.0.0.1:0', groups: [{ backends: backends.map((b) => at(b.port)) }] } },
    });
    const context = await browser({ javaScriptEnabled: false });
    const page = context.pages()[0] ?? (await context.newPage());
    await page.goto(`${h.base}/`);
    expect(await page.locator('tr[data-row]').count()).toBe(2);
    expect(await page.locator('#live').textContent()).toBe('static page (reload for new numbers)');
    await page.locator(`tr[data-row="B web 0 127.0.0.1:${backends[0]!.port}"] button[value="drain"]`).click();
    await page.waitForLoadState();
    expect(await page.locator('pre').textContent()).toBe('channel 0 drained (no connections)');
    await page.goto(`${h.base}/`);
    expect(await page.locator(`tr[data-row="B web 0 127.0.0.1:${backends[0]!.port}"] [data-k$="|state"]`).textContent()).toBe('DRN');
  }, 30_000);
});
