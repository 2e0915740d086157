// 10,000 backends (issue 38). Before: `lb --check` passed such a file, then `lb run` exited 70 with
// "more than 4096 backends in the running tables [LB_INTERNAL]" (the shared memory had a fixed size).
//
// A real `lb` process with 10,000 health-checked backends (10,000 listening sockets, one per backend on
// an address of its own in 127.1.0.0/16, each answering with its own number): it starts, `show` lists every one, round robin reaches
// each enabled backend exactly once a round and never a disabled one, the first health checks are spread
// over the interval rather than sent at once, and a reload that adds a 10,001st backend keeps all of that.
// A file past the limit fails `--check` with the key path of the first backend too many.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net, { type Server } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TABLE_LIMITS } from '../../src/config/limits.ts';

const MAX_TABLE_BACKENDS = TABLE_LIMITS.backends;
import { within } from '../helpers/backends.ts';
import { ctl, parseShow } from '../helpers/control.ts';
import { runLb } from '../helpers/cli.ts';
import { cleanup, spawnLb } from '../helpers/lb.ts';

const N = 10_000;
/**
 * ADDRESSES: nothing here binds or connects from 127.0.0.1, where the other test files (run alongside)
 * bind their listeners: 20,000 connections a minute and 10,000 listening sockets would take ports from
 * 127.0.0.1's ephemeral range between an lb's port probe and its bind there (seen: EADDRINUSE in
 * control-commands). Backends listen on 127.1.x.y, clients connect from CLIENT_SOURCE and lb reaches the
 * backends (traffic and checks) from LB_SOURCE.
 */
const CLIENT_SOURCE = '127.2.0.1';
const LB_SOURCE = '127.3.0.1';
/** Every 100th backend is disabled in the file. */
const disabled = (i: number): boolean => i % 100 === 0;

interface Farm {
  readonly servers: Server[];
  readonly ports: number[];
  /** Each backend's address: 127.1.x.y, never 127.0.0.1 (see ADDRESSES). */
  readonly hosts: string[];
  /** Client connections each backend answered. */
  readonly served: number[];
  /** Connections that closed without sending anything: health checks. */
  readonly checks: number[];
}

/** A backend: answers a client's first bytes with its number and closes; counts silent connections as checks. */
function backend(farm: Farm, i: number): Promise<void> {
  const server = net.createServer((s) => {
    let spoke = false;
    s.once('data', () => {
      spoke = true;
      farm.served[i]! += 1;
      s.end(`${i}\n`);
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      if (!spoke) farm.checks[i]! += 1;
    });
  });
  farm.servers[i] = server;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    farm.hosts[i] = `127.1.${Math.floor(i / 200)}.${1 + (i % 200)}`;
    server.listen(0, farm.hosts[i], () => {
      farm.ports[i] = (server.address() as net.AddressInfo).port;
      resolve();
    });
  });
}

async function startFarm(n: number): Promise<Farm> {
  const farm: Farm = { servers: [], ports: [], hosts: [], served: new Array<number>(n).fill(0), checks: new Array<number>(n).fill(0) };
  for (let i = 0; i < n; i += 500) await Promise.all(Array.from({ length: Math.min(500, n - i) }, (_, k) => backend(farm, i + k)));
  return farm;
}

function backendLine(host: string, port: number, off: boolean): string {
  return off ? `  { host = "${host}", port = ${port}, enabled = false },` : `  "${host}:${port}",`;
}

function config(socket: string, lines: readonly string[]): string {
  return [
    '[global]',
    'workers = 1',
    'drain_timeout = "1s"',
    'access_log = false',
    '[control]',
    `socket = ${JSON.stringify(socket)}`,
    'http = "127.0.0.1:0"',
    '[listeners.web]',
    'listen = "127.0.0.1:0"',
    'connect_timeout = "2s"',
    `source = "${LB_SOURCE}"`,
    '[[listeners.web.groups]]',
    'backends = [',
    ...lines,
    ']',
    // Long enough that the first checks are still arriving when the test looks (spread over 120 s).
    '[listeners.web.groups.health]',
    'interval = "120s"',
    '',
  ].join('\n');
}

/** `count` clients, `parallel` at a time: each sends a byte and reads the backend's number to the end. */
async function round(port: number, count: number, parallel = 64): Promise<number[]> {
  const answers: number[] = [];
  let next = 0;
  const one = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const c = net.connect({ port, host: '127.0.0.1', localAddress: CLIENT_SOURCE });
      let got = '';
      c.setEncoding('latin1');
      c.on('connect', () => c.write('x'));
      c.on('data', (d: string) => (got += d));
      c.on('error', reject);
      c.on('end', () => {
        c.destroy();
        answers.push(Number(got.trim()));
        resolve();
      });
    });
  const lane = async (): Promise<void> => {
    while (next < count) {
      next++;
      await one();
    }
  };
  await within(Promise.all(Array.from({ length: parallel }, lane)), 120_000, `${count} clients through lb`);
  return answers;
}

let dir = '';
let farm: Farm;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'lb-large-'));
  farm = await startFarm(N + 1); // the last one is added by the reload
}, 60_000);

afterAll(async () => {
  await cleanup();
  await Promise.all(farm.servers.map((s) => new Promise((r) => s.close(r))));
  rmSync(dir, { recursive: true, force: true });
});

describe('10,000 backends', () => {
  it('start, show lists them, rr reaches each enabled one once a round, checks are spread; a reload adds one more', { timeout: 240_000 }, async () => {
    const file = path.join(dir, 'lb.toml');
    const socket = path.join(dir, 'ctl.sock');
    const lines = farm.ports.slice(0, N).map((p, i) => backendLine(farm.hosts[i]!, p, disabled(i)));
    writeFileSync(file, config(socket, lines));

    const t0 = performance.now();
    const lb = await spawnLb(['run', file], { startMs: 60_000 });
    const startMs = performance.now() - t0;
    const port = lb.ports['web']!;

    const show = parseShow(await ctl(socket, 'show', 30_000)).get('web')!;
    expect(show).toHaveLength(N);
    expect(show.map((r) => `${r.ip}:${r.port}`)).toEqual(farm.ports.slice(0, N).map((p, i) => `${farm.hosts[i]}:${p}`));
    expect(show.filter((r) => r.state === 'DIS').map((r) => r.ch)).toEqual(show.map((r) => r.ch).filter(disabled));

    // The HTTP face: a scrape and the page, each with every backend (times for the note).
    const http = Number(/; http 127\.0\.0\.1:(\d+)/.exec(lb.logs.raw.find((l) => l.startsWith('lb ')) ?? '')?.[1]);
    expect(http).toBeGreaterThan(0);
    let t = performance.now();
    const metrics = await within(fetch(`http://127.0.0.1:${http}/metrics`).then((r) => r.text()), 30_000, 'a scrape');
    const scrapeMs = performance.now() - t;
    expect(metrics.match(/^lb_backend_up\{/gm)).toHaveLength(N);
    t = performance.now();
    const page = await within(fetch(`http://127.0.0.1:${http}/`).then((r) => r.text()), 30_000, 'the status page');
    const pageMs = performance.now() - t;
    expect(page).toContain(`${farm.hosts[N - 1]}:${farm.ports[N - 1]}`);

    const enabled = N - N / 100;
    const first = await round(port, enabled);
    expect(first.toSorted((a, b) => a - b)).toEqual([...Array(N).keys()].filter((i) => !disabled(i)));
    expect(farm.served.slice(0, N).filter((n, i) => n !== (disabled(i) ? 0 : 1))).toEqual([]);

    // Health checks: running, and spread over the 120 s interval (all at once, every backend would
    // have had its check long before the first round ended).
    const checkedBy = (): number => farm.checks.filter((n) => n > 0).length;
    const sinceStart = performance.now() - t0;
    const checked = checkedBy();
    expect(sinceStart).toBeLessThan(60_000);
    expect(checked).toBeLessThan(N / 2);
    await within(
      (async () => {
        while (checkedBy() < 20) await new Promise((r) => setTimeout(r, 50));
      })(),
      30_000,
      'the first health checks',
    );

    // The reload: one backend more, first in the list (the others keep their slots and counts).
    const added = farm.ports[N]!;
    writeFileSync(file, config(socket, [backendLine(farm.hosts[N]!, added, false), ...lines]));
    const mark = lb.logs.mark();
    lb.proc.kill('SIGHUP');
    await lb.logs.waitFor('reloaded', { ms: 60_000, from: mark });
    const after = parseShow(await ctl(socket, 'show', 30_000)).get('web')!;
    expect(after).toHaveLength(N + 1);
    expect(after[0]).toMatchObject({ port: added, state: 'ENA', totalc: 0 });
    expect(after.slice(1).map((r) => r.totalc)).toEqual(show.map((r) => (disabled(r.ch) ? 0 : 1)));

    const second = await round(port, enabled + 1);
    expect(second.toSorted((a, b) => a - b)).toEqual([...Array(N + 1).keys()].filter((i) => i === N || !disabled(i)));

    const rss = Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${lb.proc.pid}/status`, 'utf8'))![1]) * 1024;
    console.log(`10,000 backends: started in ${startMs.toFixed(0)} ms, RSS ${(rss / 2 ** 20).toFixed(0)} MiB; a scrape ${scrapeMs.toFixed(0)} ms, the page ${pageMs.toFixed(0)} ms; ${checked} first checks in the first ${(sinceStart / 1000).toFixed(1)} s`);
    expect(rss).toBeLessThan(1024 * 2 ** 20); // memory follows the table: far below what 200,000 reserved slots would take
  });

  it('a file past the limit fails --check with the key path of the first backend too many', { timeout: 60_000 }, async () => {
    const file = path.join(dir, 'over.toml');
    const lines = Array.from({ length: MAX_TABLE_BACKENDS + 1 }, (_, i) => `  "127.0.${(i >> 8) & 255}.${i & 255}:${1000 + (i >> 16)}",`);
    writeFileSync(file, ['[listeners.web]', 'listen = "127.0.0.1:0"', '[[listeners.web.groups]]', 'backends = [', ...lines, ']', ''].join('\n'));
    const r = await runLb(['--check', file]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`${file}:${MAX_TABLE_BACKENDS + 5}:3: listeners.web.groups[0].backends[${MAX_TABLE_BACKENDS}]: one backend too many: a table may have at most 100,000 backends`);
    expect(r.stderr).toContain('[LB_TABLE_LIMIT]');
  });
});
