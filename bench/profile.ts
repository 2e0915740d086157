// Where lb's time and bytes go per connection: runs lb under the bench's own load with V8's profilers on
// and summarises what they wrote. Not part of `npm run bench` (profiling changes the figures); run it by
// hand when working on speed:
//
//   node bench/profile.ts                 # CPU: --cpu-prof under the connection-rate load, top self time
//   node bench/profile.ts --mode heap     # memory: heap snapshots with none and N idle connections held
//   node bench/profile.ts --proxy node-pipe   # the same for the naive proxy, to see what lb adds
//   node bench/profile.ts --lb-main ../wt/src/cli/main.ts   # another checkout of lb, to weigh a change
//
// Both modes print markdown. lb runs with its default settings (access log on, stderr to a file) unless
// --no-access-log is given. The CPU summary covers the measured window only (start-up and warm-up left
// out), so its µs per connection are those of the steady state.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { BACKEND_KINDS, type BackendKind, type BackendPorts } from './lib/backends.ts';
import { Helper } from './lib/ipc.ts';
import { LoadGen } from './lib/loadgen.ts';
import { freePort, rssKb } from './lib/procfs.ts';
import { startLb, startNodePipe, type RunningProxy } from './lib/proxies.ts';
import { diffHeaps, summariseCpuProfile, summariseHeapSnapshot } from './lib/v8-profiles.ts';

const { values: opt } = parseArgs({
  options: {
    mode: { type: 'string', default: 'cpu' },
    proxy: { type: 'string', default: 'lb' },
    'lb-main': { type: 'string' },
    seconds: { type: 'string', default: '5' },
    conns: { type: 'string', default: '50' },
    'idle-conns': { type: 'string', default: '2000' },
    'no-access-log': { type: 'boolean' },
    top: { type: 'string', default: '15' },
    keep: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (opt.help || !['cpu', 'heap'].includes(opt.mode!) || !['lb', 'node-pipe'].includes(opt.proxy!)) {
  process.stdout.write(`usage: node bench/profile.ts [--mode cpu|heap] [--proxy lb|node-pipe] [--lb-main PATH/src/cli/main.ts] [--seconds S] [--conns N] [--idle-conns N] [--no-access-log] [--top N] [--keep]\n`);
  process.exit(opt.help ? 0 : 2);
}
const accessLog = !opt['no-access-log'];
const top = Number(opt.top);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lb-profile-'));
const log = (m: string): void => console.error(`profile: ${m}`);

const ports = {} as BackendPorts;
for (const k of BACKEND_KINDS) ports[k] = await freePort();
const backends = Helper.start('backends', path.join(import.meta.dirname, 'lib/backends.ts'));
await backends.call('start', { ports }, 10_000);
const gen = LoadGen.start(os.cpus().length);
let lb = null as RunningProxy | null;
const lbMain = opt['lb-main'] ? path.resolve(opt['lb-main']) : undefined; // another checkout, to compare a change
const name =
  opt.proxy === 'lb'
    ? `lb${lbMain ? ` at ${lbMain}` : ''} (${accessLog ? 'default settings, access log on' : 'access_log = false'})`
    : 'node-pipe (the naive proxy)';

async function start(kind: BackendKind, flags: string[]): Promise<{ lb: RunningProxy; port: number }> {
  const listenPort = await freePort();
  const ctx = { listenPort, backendPort: ports[kind], maxConns: 20_000, dir };
  const p = opt.proxy === 'lb' ? await startLb('lb', ctx, accessLog, flags, lbMain) : await startNodePipe(ctx, flags);
  return { lb: p, port: listenPort };
}

/** Waits until `file` exists and its size has stopped changing (V8 writes it in pieces). */
async function written(find: () => string | undefined, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = -1;
  for (;;) {
    const f = find();
    if (f) {
      const size = fs.statSync(f).size;
      if (size > 0 && size === last) return f;
      last = size;
    }
    if (Date.now() > deadline) throw new Error('profile file not written in time');
    await sleep(250);
  }
}

const ms = (v: number): string => (v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(1));
const pct = (a: number, b: number): string => `${((100 * a) / b).toFixed(1)}%`;

async function cpu(): Promise<void> {
  const seconds = Number(opt.seconds);
  const warmupMs = 1000;
  const spawnedAt = performance.now(); // the profile starts with the process, within a few ms
  const started = await start('close', ['--cpu-prof', `--cpu-prof-dir=${dir}`, '--cpu-prof-name=lb.cpuprofile']);
  lb = started.lb;
  log(`${name} pid ${lb.pid} under ${opt.conns} concurrent connect/request/response/close loops for ${seconds} s`);
  const windowFrom = performance.now() - spawnedAt + warmupMs;
  const r = await gen.rate(started.port, Number(opt.conns), { warmupMs, durationMs: seconds * 1000 });
  await sleep(200);
  await lb.stop(10_000);
  const file = await written(() => (fs.existsSync(path.join(dir, 'lb.cpuprofile')) ? path.join(dir, 'lb.cpuprofile') : undefined), 20_000);
  // Only the measured window: the connections in it are the ones the load generator counted.
  const s = summariseCpuProfile(file, windowFrom, windowFrom + seconds * 1000);
  const conns = r.conns;
  const perConnUs = (msv: number): string => ((1000 * msv) / conns).toFixed(2);
  const L: string[] = [];
  L.push(`### CPU profile of ${name} under the connection-rate load`, '');
  L.push(
    `${r.connPerSec.toFixed(0)} conn/s with the profiler on, ${conns} connections in the ${seconds} s window profiled ` +
      `(${ms(s.wallMs)} ms sampled, ${ms(s.busyMs)} ms of it busy) = ${perConnUs(s.busyMs)} µs of proxy CPU per connection. ` +
      `Percentages are of the busy time; native functions (no location) are mostly the system call they make. Client errors: ${JSON.stringify(r.errors)}.`,
    '',
  );
  L.push('| # | self % | self ms | µs/conn | incl. % | function | where |', '|---:|---:|---:|---:|---:|:---|:---|');
  const busy = s.functions.filter((f) => f.name !== '(idle)').sort((a, b) => b.selfMs - a.selfMs);
  busy.slice(0, top).forEach((f, i) => {
    L.push(`| ${i + 1} | ${pct(f.selfMs, s.busyMs)} | ${ms(f.selfMs)} | ${perConnUs(f.selfMs)} | ${pct(f.totalMs, s.busyMs)} | \`${f.name}\` | ${f.where} |`);
  });
  L.push('', '#### Self time by origin', '', '| origin | % | µs/conn |', '|:---|---:|---:|');
  for (const [o, v] of Object.entries(s.byOrigin).filter(([o]) => o !== '(idle)').sort((a, b) => b[1] - a[1]).slice(0, 20)) {
    L.push(`| ${o} | ${pct(v, s.busyMs)} | ${perConnUs(v)} |`);
  }
  L.push('', "#### lb's own functions by inclusive time (what each costs with everything it calls)", '', '| incl. % | µs/conn | self % | function | where |', '|---:|---:|---:|:---|:---|');
  for (const f of s.functions.filter((f) => f.where.startsWith('src/')).sort((a, b) => b.totalMs - a.totalMs).slice(0, top)) {
    L.push(`| ${pct(f.totalMs, s.busyMs)} | ${perConnUs(f.totalMs)} | ${pct(f.selfMs, s.busyMs)} | \`${f.name}\` | ${f.where} |`);
  }
  process.stdout.write(L.join('\n') + '\n');
}

async function heap(): Promise<void> {
  const n = Number(opt['idle-conns']);
  const started = await start('hold', ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${dir}`]);
  lb = started.lb;
  const snaps = (): string[] => fs.readdirSync(dir).filter((f) => f.endsWith('.heapsnapshot')).sort();
  const snapshot = async (): Promise<string> => {
    const before = snaps().length;
    process.kill(lb!.pid, 'SIGUSR2');
    return written(() => {
      const f = snaps()[before];
      return f && path.join(dir, f);
    }, 60_000);
  };
  await sleep(1000);
  const rss0 = rssKb([lb.pid]);
  const s0 = summariseHeapSnapshot(await snapshot()); // (a snapshot collects garbage first)
  log(`lb pid ${lb.pid}: opening ${n} idle connections`);
  const r = await gen.idleOpen(started.port, n, 60_000);
  await sleep(1000);
  const rss1 = rssKb([lb.pid]);
  const s1 = summariseHeapSnapshot(await snapshot());
  const k = r.ok;
  const L: string[] = [];
  L.push(`### ${name}: memory per idle connection (${k} held; heap snapshots before and after, each after a full GC)`, '');
  L.push(
    `RSS ${(rss0 / 1024).toFixed(1)} → ${(rss1 / 1024).toFixed(1)} MB: ${((rss1 - rss0) / k).toFixed(2)} KB/conn (the first snapshot itself grows the RSS a little). ` +
      `JS heap (live objects) ${(s0.totalBytes / 2 ** 20).toFixed(2)} → ${(s1.totalBytes / 2 ** 20).toFixed(2)} MB: ${((s1.totalBytes - s0.totalBytes) / 1024 / k).toFixed(2)} KB/conn; ` +
      `the rest of the RSS growth is native memory (libuv handles, Node's TCPWrap and stream state, malloc) and the heap's free space.`,
    '',
    '| kind (V8 type and constructor) | bytes/conn | objects/conn |',
    '|:---|---:|---:|',
  );
  for (const d of diffHeaps(s0, s1).slice(0, 25)) L.push(`| ${d.kind} | ${(d.bytes / k).toFixed(0)} | ${(d.count / k).toFixed(2)} |`);
  await gen.idleRelease();
  await lb.stop();
  process.stdout.write(L.join('\n') + '\n');
}

try {
  if (opt.mode === 'cpu') await cpu();
  else await heap();
} finally {
  lb?.kill();
  await gen.stop();
  await backends.stop();
  if (opt.keep) log(`kept ${dir}`);
  else fs.rmSync(dir, { recursive: true, force: true });
}
