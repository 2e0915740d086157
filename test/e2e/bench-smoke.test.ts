// The bench suite (bench/, `npm run bench`) must keep running: its smoke mode measures every figure for
// a few hundred milliseconds against direct and lb and writes them as JSON. Only that a figure exists and
// is positive is checked: the values themselves are never asserted (they depend on the machine and on
// whatever else runs on it, tests included).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');
const FIGURES = ['tput1_gbps', 'tput4_gbps', 'rate_conn_per_s', 'latency_req_per_s', 'latency_p50_ms', 'latency_p99_ms'];
/** Memory figures need a proxy: they are null on the direct row by design. */
const PROXY_FIGURES = ['idle_rss_mb', 'idle_kb_per_conn'];

interface Stat {
  median: number;
  n: number;
}
interface BenchJson {
  schema: string;
  targets: { name: string }[];
  figures: Record<string, Record<string, Stat | null>>;
  samples: Record<string, Record<string, { ok: boolean; error?: string }[]>>;
}

let dir: string | null = null;
afterEach(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  dir = null;
});

function runBench(args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'bench/run.ts'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    // The bench has its own watchdog; this one only keeps a wedged run from outliving the test.
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('bench smoke', () => {
  it('measures every figure for direct and lb and writes them as JSON', { timeout: 120_000 }, async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lb-bench-smoke-'));
    const json = path.join(dir, 'bench.json');
    const r = await runBench(['--smoke', '--json', json], 100_000);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(r.stdout).toMatch(/\| lb \|/); // the markdown table was printed

    const out = JSON.parse(fs.readFileSync(json, 'utf8')) as BenchJson;
    expect(out.schema).toBe('lb-bench/1');
    expect(out.targets.map((t) => t.name)).toEqual(['direct', 'lb']);
    for (const [target, bySample] of Object.entries(out.samples)) {
      for (const [metric, samples] of Object.entries(bySample)) {
        for (const s of samples) expect(s.ok, `${target} ${metric}: ${s.error}`).toBe(true);
      }
    }
    for (const target of ['direct', 'lb']) {
      const wanted = target === 'direct' ? FIGURES : [...FIGURES, ...PROXY_FIGURES];
      for (const key of wanted) {
        const stat = out.figures[target]?.[key];
        expect(stat, `${target} ${key}`).toBeTruthy();
        expect(stat!.median, `${target} ${key}`).toBeGreaterThan(0);
      }
    }
  });
});
