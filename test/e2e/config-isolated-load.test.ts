// loadConfigIsolated (src/config/isolate.ts): the reload path's loader. Same result as loadConfigFile,
// computed in a worker thread within a time and memory budget; FIFOs, non-files and oversized files
// refused with non-blocking calls, before any read. Real files, a real FIFO, real worker threads.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfigIsolated } from '../../src/config/isolate.ts';
import { loadConfigFile, type PipelineResult } from '../../src/config/pipeline.ts';
import { within } from '../helpers/backends.ts';
import { ROOT } from '../helpers/lb.ts';

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'lb-isolate-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const VALID = '[listeners.web]\nlisten = "127.0.0.1:0"\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:1"]\n';

function write(name: string, text: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
}

function everyObjectFrozen(value: unknown): boolean {
  const stack = [value];
  for (let v = stack.pop(); v !== undefined; v = stack.pop()) {
    if (v === null || typeof v !== 'object') continue;
    if (!Object.isFrozen(v)) return false;
    stack.push(...Object.values(v));
  }
  return true;
}

/** The longest gap between ticks of a 10 ms interval while `p` runs: how long the event loop was held. */
async function longestStall<T>(p: Promise<T>): Promise<{ result: T; stallMs: number }> {
  let last = performance.now();
  let stallMs = 0;
  const tick = setInterval(() => {
    const now = performance.now();
    stallMs = Math.max(stallMs, now - last);
    last = now;
  }, 10);
  try {
    const result = await p;
    stallMs = Math.max(stallMs, performance.now() - last);
    return { result, stallMs };
  } finally {
    clearInterval(tick);
  }
}

function failed(r: PipelineResult) {
  if (r.ok) throw new Error('expected a failure');
  return { exitCode: r.exitCode, codes: r.diagnostics.map((d) => d.code), first: r.diagnostics[0]! };
}

describe('the same result as loadConfigFile', () => {
  it.each(['lb.toml', 'imap-failover.toml', 'distcc.toml', 'sticky-hash.toml'])('examples/%s', async (name) => {
    const file = path.join(ROOT, 'examples', name);
    const direct = await loadConfigFile(file, { resolve: 'warning' });
    const isolated = await within(loadConfigIsolated(file, { resolve: 'warning' }), 15_000, 'the isolated load');
    expect(isolated).toEqual(direct);
    if (isolated.ok) expect(everyObjectFrozen(isolated.table)).toBe(true);
  });

  it('a broken file: the same diagnostics, with lines', async () => {
    const file = write('bad.toml', VALID.replace('"127.0.0.1:1"', '"127.0.0.1:99999"') + 'bogus = 1\n');
    const direct = await loadConfigFile(file, { resolve: 'error' });
    const isolated = await within(loadConfigIsolated(file, { resolve: 'error' }), 15_000, 'the isolated load');
    expect(isolated).toEqual(direct);
    expect(failed(isolated).first.line).toBeGreaterThan(0);
  });

  it('names are resolved in the worker (a source host name becomes its address)', async () => {
    const file = write('src.toml', VALID.replace('listen = ', 'source = "localhost"\nlisten = '));
    const r = await within(loadConfigIsolated(file, { resolve: 'error' }), 15_000, 'the isolated load');
    if (!r.ok) throw new Error(JSON.stringify(r.diagnostics));
    expect(r.table.listeners[0]).toMatchObject({ sourceHost: 'localhost', source: '127.0.0.1' });
    expect(everyObjectFrozen(r.table)).toBe(true);
  });
});

describe('refusals, each with a stable code', () => {
  it('a FIFO in place of the file (no writer): refused at once, the event loop never held', async () => {
    const fifo = path.join(dir, 'lb.toml');
    execFileSync('mkfifo', [fifo]);
    const { result, stallMs } = await longestStall(within(loadConfigIsolated(fifo, { resolve: 'error' }), 2000, 'the FIFO refusal'));
    expect(failed(result)).toMatchObject({ exitCode: 66, codes: ['LB_CONFIG_NOT_FILE'] });
    expect(stallMs).toBeLessThan(200);
  });

  it('a 50 MB string value: refused from its size, without reading it', async () => {
    const file = path.join(dir, 'big.toml');
    execFileSync('sh', ['-c', `{ printf 'a = "'; head -c 50000000 /dev/zero | tr '\\0' x; printf '"\\n'; } > ${file}`]);
    const rss = process.memoryUsage().rss;
    const { result, stallMs } = await longestStall(within(loadConfigIsolated(file, { resolve: 'error' }), 2000, 'the size refusal'));
    expect(failed(result)).toMatchObject({ exitCode: 78, codes: ['LB_CONFIG_TOO_LARGE'] });
    expect(stallMs).toBeLessThan(200);
    expect(process.memoryUsage().rss - rss).toBeLessThan(20 * 1024 * 1024);
  });

  it('a 5,000-level key: refused by the worker with its line', async () => {
    const file = write('deep.toml', `${VALID}${Array.from({ length: 5000 }, () => 'k').join('.')} = 1\n`);
    const { result, stallMs } = await longestStall(within(loadConfigIsolated(file, { resolve: 'error' }), 15_000, 'the depth refusal'));
    expect(failed(result)).toMatchObject({ exitCode: 78, codes: ['LB_CONFIG_TOO_DEEP'], first: { line: 5 } });
    expect(stallMs).toBeLessThan(200);
  });

  it('a directory, a missing file: unreadable (66)', async () => {
    expect(failed(await loadConfigIsolated(dir, { resolve: 'error' }))).toMatchObject({ exitCode: 66, codes: ['LB_CONFIG_UNREADABLE'] });
    expect(failed(await loadConfigIsolated(path.join(dir, 'none.toml'), { resolve: 'error' }))).toMatchObject({
      exitCode: 66,
      codes: ['LB_CONFIG_UNREADABLE'],
    });
  });

  it('over the wall-clock budget: the worker is stopped and the load fails', async () => {
    const file = write('ok.toml', VALID);
    const t0 = performance.now();
    const r = await within(loadConfigIsolated(file, { resolve: 'error', timeoutMs: 1 }), 2000, 'the budget to end the load');
    expect(failed(r)).toMatchObject({ exitCode: 78, codes: ['LB_CONFIG_BUDGET'] });
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  it('over the memory budget: the worker runs out of heap, the load fails, this thread goes on', async () => {
    // ~2.5 MB of keys: tens of MB of parsed objects and positions, well over a 16 MiB heap.
    const file = write('keys.toml', Array.from({ length: 250_000 }, (_, i) => `k${i} = ${i}`).join('\n') + '\n');
    const r = await within(loadConfigIsolated(file, { resolve: 'error', maxHeapMb: 16 }), 15_000, 'the memory budget to end the load');
    expect(failed(r)).toMatchObject({ exitCode: 78, codes: ['LB_CONFIG_BUDGET'] });
    expect(failed(r).first.message).toMatch(/more than 16 MiB/);
    // The same file within the default budget: an ordinary result (unknown keys).
    const ok = await within(loadConfigIsolated(file, { resolve: 'error' }), 15_000, 'the load with the default budget');
    expect(failed(ok).codes).toContain('LB_CONFIG_UNKNOWN_KEY');
  });
});
