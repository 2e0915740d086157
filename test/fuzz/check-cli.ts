// Runs fuzzed configs through the real `lb --check` process, one process per config, and reports
// crashes, exit codes and the slowest runs (issue 11: 0 crashes over 10,000 configs, every exit code one
// of 0/64/66/78, none slower than 1 s on a config under 1 MB).
//
//   node test/fuzz/check-cli.ts [--count 10000] [--seed 6929] [--jobs 2] [--max-bytes 1000000] [--bundle]
//
// --bundle runs the esbuild bundle of the CLI (what the Debian package ships; built into a temporary
// directory first) instead of src/cli/main.ts: the same program, without the ~0.3 s of TypeScript
// loading per process, so 10,000 processes take minutes instead of an hour. A case that fails is
// regenerated with `fuzzCase(seed, index, maxBytes)` and kept in the output directory printed at the end.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fuzzCase } from './generate.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const OK_CODES = new Set([0, 64, 66, 78]);
const PROCESS_TIMEOUT_MS = 15_000;

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '10000' },
    seed: { type: 'string', default: '6929' },
    jobs: { type: 'string', default: '2' },
    'max-bytes': { type: 'string', default: String(1_000_000) },
    bundle: { type: 'boolean', default: false },
  },
});
const count = Number(values.count);
const seed = Number(values.seed);
const jobs = Math.max(1, Number(values.jobs));
const maxBytes = Number(values['max-bytes']);

const work = mkdtempSync(path.join(tmpdir(), 'lb-fuzz-'));
const failures = path.join(work, 'failures');
mkdirSync(failures);

async function cliEntry(): Promise<string> {
  if (!values.bundle) return path.join(ROOT, 'src/cli/main.ts');
  const { build } = await import('esbuild');
  const { BUNDLE_ENTRIES } = await import('../../src/entries.ts');
  const outdir = path.join(work, 'bundle');
  const entryPoints: Record<string, string> = { lb: path.join(ROOT, 'src/cli/main.ts') };
  for (const [name, source] of Object.entries(BUNDLE_ENTRIES)) entryPoints[name] = path.join(ROOT, 'src', source);
  await build({
    entryPoints,
    outdir,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node22',
    banner: { js: "import { createRequire as __lbRequire } from 'node:module'; const require = __lbRequire(import.meta.url);" },
    logLevel: 'silent',
  });
  writeFileSync(path.join(outdir, 'package.json'), '{ "type": "module" }\n');
  return path.join(outdir, 'lb.js');
}

interface Run {
  code: number | null;
  signal: string | null;
  ms: number;
  stderr: string;
  timedOut: boolean;
}

function runCheck(entry: string, file: string): Promise<Run> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    // The compile cache only saves re-compiling lb's JavaScript in every process: nothing of lb's behaviour.
    const env = { ...process.env, NODE_COMPILE_CACHE: path.join(work, 'compile-cache') };
    const child = spawn(process.execPath, [entry, '--check', file], { stdio: ['ignore', 'ignore', 'pipe'], env });
    let stderr = '';
    let timedOut = false;
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 20_000) stderr += d.toString();
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, PROCESS_TIMEOUT_MS);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, ms: performance.now() - t0, stderr, timedOut });
    });
  });
}

/** A crash: any exit code outside sysexits' config codes, a signal, a timeout or a stack trace. */
function crashOf(r: Run): string | null {
  if (r.timedOut) return `timed out after ${PROCESS_TIMEOUT_MS} ms`;
  if (r.signal) return `killed by ${r.signal}`;
  if (!OK_CODES.has(r.code ?? -1)) return `exit ${r.code}`;
  if (/unexpected error|RangeError|TypeError|\n\s+at .+:\d+:\d+\)?\n/.test(r.stderr)) return 'stack trace on stderr';
  return null;
}

const entry = await cliEntry();
// Process start-up is not config checking: measured on a trivial config, reported beside the figures.
const baselineFile = path.join(work, 'baseline.toml');
writeFileSync(baselineFile, '[listeners.w]\nlisten = "127.0.0.1:0"\n[[listeners.w.groups]]\nbackends = ["127.0.0.1:1"]\n');
const baseline: number[] = [];
for (let i = 0; i < 5; i++) baseline.push((await runCheck(entry, baselineFile)).ms);
baseline.sort((a, b) => a - b);
const startup = baseline[2]!;

const codes = new Map<string, number>();
const crashes: string[] = [];
const slow: { index: number; ms: number; bytes: number; kind: string }[] = [];
let next = 0;
let done = 0;
// SIGINT/SIGTERM: finish the configs being checked, then report on those done so far.
let stopping = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => (stopping = true));
const started = performance.now();

async function worker(): Promise<void> {
  for (;;) {
    if (stopping) return;
    const index = next++;
    if (index >= count) return;
    const c = fuzzCase(seed, index, maxBytes);
    const file = path.join(work, `case-${index % (jobs * 4)}.toml`);
    writeFileSync(file, c.text);
    const bytes = Buffer.byteLength(c.text);
    const r = await runCheck(entry, file);
    const key = r.code === null ? `signal ${r.signal}` : String(r.code);
    codes.set(key, (codes.get(key) ?? 0) + 1);
    const crash = crashOf(r);
    if (crash) {
      crashes.push(`#${index} (${c.kind}, ${bytes} bytes): ${crash}\n${r.stderr.slice(0, 2000)}`);
      writeFileSync(path.join(failures, `case-${index}.toml`), c.text);
    }
    slow.push({ index, ms: r.ms, bytes, kind: c.kind });
    slow.sort((a, b) => b.ms - a.ms);
    slow.length = Math.min(slow.length, 10);
    if (++done % 500 === 0) process.stderr.write(`${done}/${count} (${((performance.now() - started) / 1000).toFixed(0)} s)\n`);
  }
}

await Promise.all(Array.from({ length: jobs }, () => worker()));

const under1MB = slow.filter((s) => s.bytes < 1_000_000);
console.log(`lb --check fuzz: ${done} of ${count} configs${stopping ? ' (stopped early)' : ''}, seed ${seed}, ${jobs} at a time, up to ${maxBytes} bytes, ${values.bundle ? 'bundle' : 'source tree'}`);
console.log(`wall time ${((performance.now() - started) / 1000).toFixed(0)} s; process start-up (median --check of a trivial config) ${startup.toFixed(0)} ms`);
console.log(`exit codes: ${[...codes].sort().map(([k, v]) => `${k}: ${v}`).join(', ')}`);
console.log(`crashes: ${crashes.length}`);
for (const c of crashes.slice(0, 20)) console.log(`  ${c}`);
console.log('slowest (process wall time, start-up included):');
for (const s of slow) console.log(`  #${s.index} ${s.kind} ${s.bytes} bytes: ${s.ms.toFixed(0)} ms (${(s.ms - startup).toFixed(0)} ms over start-up)`);
const worst = under1MB[0];
console.log(`slowest under 1 MB: ${worst ? `${worst.ms.toFixed(0)} ms, ${(worst.ms - startup).toFixed(0)} ms over start-up` : '-'}`);
if (crashes.length) console.log(`failing cases kept in ${failures}`);
else rmSync(work, { recursive: true, force: true });
process.exitCode = crashes.length ? 1 : 0;
