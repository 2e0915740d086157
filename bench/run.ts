// `npm run bench`: lb's benchmark suite. Measures lb against the client talking straight to the backend
// ("direct", the limit of this machine), the naive Node proxy the targets are stated against
// ("node-pipe") and, when installed, haproxy with one thread — all in one run, interleaved, because this
// machine is shared and noisy and only figures from the same run compare.
//
// Everything runs on 127.0.0.1: the backends and the load generator are helper processes of this suite
// (bench/lib), each proxy is started fresh for each metric, every phase has a deadline, and a watchdog
// ends the whole run. See `npm run bench -- --help`.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { BACKEND_KINDS, RATE_REQUEST, RATE_RESPONSE, type BackendKind, type BackendPorts } from './lib/backends.ts';
import { Helper } from './lib/ipc.ts';
import { LoadGen, type Window } from './lib/loadgen.ts';
import { CpuMeter, fdCount, freePort, nofileLimits, rssKb, waitQuiet, withRaisedNofile, type CpuUse } from './lib/procfs.ts';
import { ALL_TARGETS, comparedLb, lbVersion, makeTargets, RunningProxy, type Target } from './lib/proxies.ts';
import { METRICS, toJson, toMarkdown, type Metric, type Results, type RunInfo, type Sample } from './lib/report.ts';

const HELP = `usage: npm run bench -- [options]

  --quick            2 repetitions of short samples, 2000 idle connections: under a minute
  --smoke            a few hundred ms per figure, 200 idle connections, targets direct,lb:
                     keeps the suite from rotting (test/e2e/bench-smoke.test.ts); figures mean little
  (default)          3 repetitions, 1 s warm-up + 3 s per sample, 10,000 idle connections (capped by ulimit -n)
  --json FILE        write every figure and sample as JSON
  --md FILE          also write the markdown report to FILE
  --targets LIST     comma-separated, from ${ALL_TARGETS.join(',')} (default: all; haproxy-1t only when installed)
  --metrics LIST     comma-separated, from ${METRICS.join(',')} (default: all)
  --compare NAME=PATH  also run another lb (PATH = its src/cli/main.ts, e.g. a worktree with a change)
                     with default settings as row NAME; repeatable
  --reps N           repetitions per figure
  --warmup S         seconds of warm-up before each sample
  --duration S       seconds measured per sample
  --conns N          concurrent connections of the conn/s and latency tests (50)
  --idle-conns N     idle connections to hold (capped by the fd limit)
  --gen-procs N      load generator processes for the conn/s test (default: the number of cores;
                     bulk and latency use one, as iperf3 and wrk -t1 do)
  --settle S         before each sample, wait up to S seconds for the machine to be idle (it is
                     shared): full 5, quick and smoke 0
  --preheat S        extra warm-up before a target's first sample of each metric, so that a proxy
                     whose heap takes a while to settle is measured in its steady state: full 4, else 0
  --keep-tmp         keep the run directory (configs, proxy logs) under ${os.tmpdir()}
  -h, --help
`;

// ------------------------------------------------------------------------------------------ options

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    smoke: { type: 'boolean' },
    json: { type: 'string' },
    md: { type: 'string' },
    targets: { type: 'string' },
    metrics: { type: 'string' },
    compare: { type: 'string', multiple: true },
    reps: { type: 'string' },
    warmup: { type: 'string' },
    duration: { type: 'string' },
    conns: { type: 'string' },
    'idle-conns': { type: 'string' },
    'gen-procs': { type: 'string' },
    settle: { type: 'string' },
    preheat: { type: 'string' },
    'keep-tmp': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
  strict: true,
});
if (opt.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

// The idle test needs ~2 fds per connection in the proxy: raise the soft limit to the hard one by running
// again under a shell that did (Node cannot call setrlimit). Children inherit it.
await withRaisedNofile('LB_BENCH_NOFILE', main);

function positive(name: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!(n > 0)) {
    console.error(`bench: --${name} must be a positive number, got ${v}`);
    process.exit(2);
  }
  return n;
}

function nonNegative(name: string, v: string | undefined, fallback: number): number {
  return v === '0' ? 0 : positive(name, v, fallback);
}

function list<T extends string>(name: string, v: string | undefined, known: readonly T[], fallback: readonly T[]): T[] {
  if (v === undefined) return [...fallback];
  const items = v.split(',').map((s) => s.trim()).filter(Boolean);
  for (const i of items) {
    if (!known.includes(i as T)) {
      console.error(`bench: unknown ${name} "${i}" (known: ${known.join(', ')})`);
      process.exit(2);
    }
  }
  return items as T[];
}

// --------------------------------------------------------------------------------------------- main

async function main(): Promise<void> {
  const mode: RunInfo['mode'] = opt.smoke ? 'smoke' : opt.quick ? 'quick' : 'full';
  const preset = {
    full: { reps: 3, warmup: 1, preheat: 4, duration: 3, idle: 10_000, settle: 5, targets: ALL_TARGETS },
    quick: { reps: 2, warmup: 0.2, preheat: 0, duration: 0.6, idle: 2000, settle: 0, targets: ALL_TARGETS },
    smoke: { reps: 1, warmup: 0.1, preheat: 0, duration: 0.3, idle: 200, settle: 0, targets: ['direct', 'lb'] as const },
  }[mode === 'smoke' ? 'smoke' : mode === 'quick' ? 'quick' : 'full'];
  const reps = Math.round(positive('reps', opt.reps, preset.reps));
  const w: Window = {
    warmupMs: Math.round(1000 * positive('warmup', opt.warmup, preset.warmup)),
    durationMs: Math.round(1000 * positive('duration', opt.duration, preset.duration)),
  };
  const conns = Math.round(positive('conns', opt.conns, mode === 'smoke' ? 8 : 50));
  const genProcs = Math.round(positive('gen-procs', opt['gen-procs'], os.cpus().length));
  const settleMs = Math.round(1000 * nonNegative('settle', opt.settle, preset.settle));
  const preheatMs = Math.round(1000 * nonNegative('preheat', opt.preheat, preset.preheat));
  // The proxy holds 2 fds per idle connection, plus its own few: the hard limit decides how many fit.
  const nofile = nofileLimits().soft;
  const idleWanted = Math.round(positive('idle-conns', opt['idle-conns'], preset.idle));
  const idleCap = Math.floor((nofile - 200) / 2 / 100) * 100;
  const idleConns = Math.max(1, Math.min(idleWanted, idleCap));
  const metrics = list('metric', opt.metrics, METRICS, METRICS);
  const notes: string[] = [];
  let targets: Target[];
  try {
    targets = [...makeTargets(list('target', opt.targets, ALL_TARGETS, preset.targets), nofile, notes), ...(opt.compare ?? []).map(comparedLb)];
  } catch (err) {
    console.error(`bench: ${(err as Error).message}`);
    process.exit(2);
  }
  const changed = ['reps', 'warmup', 'duration', 'conns', 'idle-conns', 'targets', 'metrics', 'compare'].some((k) => (opt as Record<string, unknown>)[k] !== undefined);
  const info: RunInfo = {
    mode: changed ? 'custom' : mode,
    lb: lbVersion(),
    startedAt: new Date().toISOString(),
    elapsedS: 0,
    settings: {
      reps,
      warmupS: w.warmupMs / 1000,
      durationS: w.durationMs / 1000,
      rateConns: conns,
      latencyConns: conns,
      latencyBytes: 64,
      rateRequestBytes: RATE_REQUEST.length,
      rateResponseBytes: RATE_RESPONSE.length,
      idleConns,
      idleNote: idleConns < idleWanted ? `wanted ${idleWanted}; capped because the proxy needs 2 fds per connection and ulimit -n is ${nofile}` : '',
      genProcs,
      settleS: settleMs / 1000,
      preheatS: preheatMs / 1000,
      nofile,
    },
    targets: targets.map((t) => ({ name: t.name, desc: t.desc })),
    metrics,
    notes,
    logs: {},
    incidents: [],
  };
  const results: Results = Object.fromEntries(targets.map((t) => [t.name, Object.fromEntries(metrics.map((m) => [m, [] as Sample[]]))]));
  const t0 = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lb-bench-'));
  const log = (msg: string): void => console.error(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${msg}`);

  // Everything this run started, so that an abort can kill it all.
  const running = new Set<RunningProxy>();
  let backends: Helper | null = null;
  let gen: LoadGen | null = null;
  const killAll = (): void => {
    for (const p of running) p.kill();
    backends?.kill();
    gen?.kill();
  };
  const finish = (aborted?: string): void => {
    info.elapsedS = (Date.now() - t0) / 1000;
    if (aborted) info.aborted = aborted;
    const md = toMarkdown(info, results);
    process.stdout.write(md + '\n');
    if (opt.md) fs.writeFileSync(opt.md, md + '\n');
    if (opt.json) fs.writeFileSync(opt.json, JSON.stringify(toJson(info, results), null, 1) + '\n');
    if (opt['keep-tmp']) log(`run directory kept: ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  };
  const abort = (why: string): never => {
    log(`aborting: ${why}`);
    killAll();
    finish(why);
    process.exit(1);
  };
  // Twice the expected time plus every allowed settling wait, and two minutes more: a hung phase ends the
  // run, not the machine.
  const samples = metrics.filter((m) => m !== 'idle').length * targets.length * reps;
  const expectS =
    (samples * (w.warmupMs + w.durationMs + 250) + (samples / reps) * preheatMs) / 1000 +
    (metrics.includes('idle') ? targets.length * (3 + idleConns / 2500) : 0);
  const limitS = Math.ceil(2 * expectS + (samples * settleMs) / 1000 + 120);
  const watchdog = setTimeout(() => abort(`watchdog: the run took more than ${limitS} s`), limitS * 1000);
  watchdog.unref();
  process.on('SIGINT', () => abort('SIGINT'));
  process.on('SIGTERM', () => abort('SIGTERM'));
  log(
    `${info.mode}: targets ${targets.map((t) => t.name).join(', ')}; metrics ${metrics.join(', ')}; ${reps} rep(s) of ` +
      `${w.warmupMs / 1000}+${w.durationMs / 1000} s; ${idleConns} idle conns; ${genProcs} generator process(es); expect ~${Math.round(expectS)} s` +
      (settleMs ? ` plus up to ${settleMs / 1000} s per sample waiting for a quiet machine` : ''),
  );

  const ports = {} as BackendPorts;
  for (const k of BACKEND_KINDS) ports[k] = await freePort();
  backends = Helper.start('backends', path.join(import.meta.dirname, 'lib/backends.ts'));
  await backends.call('start', { ports }, 10_000);
  gen = LoadGen.start(genProcs);

  const backendFor: Record<Metric, BackendKind> = { tput1: 'source', tput4: 'source', rate: 'close', latency: 'echo', idle: 'hold' };
  // haproxy sizes its fd table from maxconn (2 per connection, plus pipes): keep the headroom small.
  const maxConns = idleConns + 20;

  const startTarget = async (t: Target, m: Metric): Promise<{ port: number; proxy: RunningProxy | null }> => {
    if (t.direct || !t.start) return { port: ports[backendFor[m]], proxy: null };
    const listenPort = await freePort();
    const runDir = path.join(dir, `${m}-${t.name}`);
    fs.mkdirSync(runDir, { recursive: true });
    const proxy = await t.start({ listenPort, backendPort: ports[backendFor[m]], maxConns, dir: runDir });
    running.add(proxy);
    return { port: listenPort, proxy };
  };

  const stopTarget = async (t: Target, m: Metric, proxy: RunningProxy | null): Promise<void> => {
    if (!proxy) return;
    running.delete(proxy);
    const st = await proxy.stop();
    if (!st.clean) info.incidents.push(`${t.name} ${m}: did not stop within 3 s of SIGTERM (killed)`);
    else if (st.code !== 0 && st.signal !== 'SIGTERM') info.incidents.push(`${t.name} ${m}: exited with code ${st.code} signal ${st.signal} on SIGTERM`);
    (info.logs[t.name] ??= {})[m] = proxy.logSummary();
  };

  const measure = async (m: Metric, rep: number, port: number, proxy: RunningProxy | null, win: Window): Promise<Sample> => {
    const quiet = settleMs > 0 ? await waitQuiet(settleMs) : null;
    const meter = new CpuMeter({ proxy: proxy?.pids() ?? [], gen: gen!.pids, backend: [backends!.pid] });
    // The meter covers the generator's measured window: it starts when the warm-up ends.
    const window = sleep(win.warmupMs).then(() => meter.start());
    let r: Record<string, unknown>;
    switch (m) {
      case 'tput1':
        r = { ...(await gen!.bulk(port, 1, win)) };
        break;
      case 'tput4':
        r = { ...(await gen!.bulk(port, 4, win)) };
        break;
      case 'rate':
        r = { ...(await gen!.rate(port, conns, win)) };
        break;
      case 'latency':
        r = { ...(await gen!.latency(port, conns, 64, win)) };
        break;
      default:
        throw new Error(`not a timed metric: ${m}`);
    }
    await window;
    const cpu = meter.stop();
    if (proxy?.exited) throw new Error(`${proxy.name} died during the run (code ${proxy.exitCode}, signal ${proxy.exitSignal}): ${proxy.stderrGist()}`);
    return { rep, ok: true, ...r, ...(proxy ? proxyCost(m, r, cpu) : {}), cpu, ...(quiet && { quiet }) };
  };

  const describe = (m: Metric, s: Sample): string => {
    if (!s.ok) return `FAILED: ${s.error}`;
    const f = (v: unknown, d = 3): string => (typeof v === 'number' ? Number(v.toPrecision(d)).toLocaleString('en-US') : '—');
    const cpu = s.cpu
      ? ` [cpu proxy ${f(s.cpu.groups.proxy, 2)}% gen ${f(s.cpu.groups.gen, 2)}% backend ${f(s.cpu.groups.backend, 2)}% softirq ${f(s.cpu.softirq, 2)}% other ${f(s.cpu.other, 2)}%; machine ${f(s.cpu.machine, 2)}%]`
      : '';
    const errs = s.errors && Object.keys(s.errors).length ? ` errors ${JSON.stringify(s.errors)}` : '';
    const cost = (unit: string): string => (typeof s.proxyCpuPerUnit === 'number' ? `, proxy CPU ${f(s.proxyCpuPerUnit)} ${unit}` : '');
    if (m === 'tput1' || m === 'tput4') return `${f(s.gbps)} Gbit/s${cost('ms/GB')}${errs}${cpu}`;
    if (m === 'rate') return `${f(s.connPerSec)} conn/s${cost('µs/conn')}${errs}${cpu}`;
    if (m === 'latency') return `${f(s.reqPerSec)} req/s p50 ${f(s.p50Ms)} ms p99 ${f(s.p99Ms)} ms${cost('µs/req')}${errs}${cpu}`;
    return `${s.established}/${s.n} conns, RSS ${f((s.baseRssKb as number) / 1024)} → ${f((s.rssKb as number) / 1024)} MB, ${f(s.kbPerConn)} KB/conn`;
  };

  // Timed metrics: every target runs at once (only the measured one is busy), the repetitions walk the
  // targets in rotated order, so a drift of the machine hits every target alike.
  for (const m of metrics.filter((x) => x !== 'idle')) {
    const live = new Map<string, { port: number; proxy: RunningProxy | null }>();
    const startErrors = new Map<string, string>();
    for (const t of targets) {
      try {
        live.set(t.name, await startTarget(t, m));
      } catch (err) {
        startErrors.set(t.name, (err as Error).message);
      }
    }
    await sleep(200); // let the start-ups' compilation and GC settle
    for (let rep = 1; rep <= reps; rep++) {
      const k = (rep - 1) % targets.length;
      for (const t of [...targets.slice(k), ...targets.slice(0, k)]) {
        let s: Sample;
        const l = live.get(t.name);
        if (!l) s = { rep, ok: false, error: `did not start: ${startErrors.get(t.name)}` };
        else {
          try {
            // The first sample of each fresh proxy gets the preheat on top of the usual warm-up.
            const wr = rep === 1 ? { ...w, warmupMs: w.warmupMs + preheatMs } : w;
            s = await measure(m, rep, l.port, l.proxy, wr);
          } catch (err) {
            s = { rep, ok: false, error: (err as Error).message.replace(/\s+/g, ' ').slice(0, 500) };
          }
        }
        results[t.name]![m]!.push(s);
        log(`${m.padEnd(7)} rep ${rep} ${t.name.padEnd(10)} ${describe(m, s)}`);
        await sleep(100); // the sockets of the last sample close before the next one starts
      }
    }
    for (const t of targets) await stopTarget(t, m, live.get(t.name)?.proxy ?? null);
  }

  // Idle memory: one proxy at a time, fresh, so its RSS before and after differ by the connections only.
  if (metrics.includes('idle')) {
    for (const t of targets) {
      let s: Sample;
      if (t.direct) {
        s = { rep: 1, ok: true, skipped: true };
        results[t.name]!.idle!.push(s);
        continue;
      }
      let proxy: RunningProxy | null = null;
      try {
        const started = await startTarget(t, 'idle');
        proxy = started.proxy!;
        await sleep(500); // start-up garbage collected, heap at its resting size
        const base = rssKb(proxy.pids());
        const timeoutMs = 20_000 + Math.ceil(idleConns / 250) * 1000;
        const r = await gen.idleOpen(started.port, idleConns, timeoutMs);
        await sleep(1000); // what the connections cost once the proxy is quiet again
        const pids = proxy.pids();
        const loaded = rssKb(pids);
        const fds = fdCount(pids);
        if (proxy.exited) throw new Error(`${t.name} died while holding connections: ${proxy.stderrGist()}`);
        if (!r.ok) throw new Error(`no connection established: ${JSON.stringify(r.errors)}`);
        s = {
          rep: 1,
          ok: true,
          n: idleConns,
          established: r.ok,
          failed: r.failed,
          connectErrors: r.errors,
          openMs: r.ms,
          baseRssKb: base,
          rssKb: loaded,
          kbPerConn: (loaded - base) / r.ok,
          fds,
          processes: pids.length,
        };
      } catch (err) {
        s = { rep: 1, ok: false, error: (err as Error).message.replace(/\s+/g, ' ').slice(0, 500) };
      } finally {
        await gen.idleRelease().catch(() => 0);
        // Stop the proxy only once it has closed its side too (the holder sees it), so its log shows no
        // drain at shutdown: a bounded wait.
        for (let i = 0; i < 50 && (await backends.call<number>('held', null, 5000).catch(() => 0)) > 0; i++) await sleep(100);
        await stopTarget(t, 'idle', proxy);
      }
      results[t.name]!.idle!.push(s);
      log(`idle    rep 1 ${t.name.padEnd(10)} ${describe('idle', s)}`);
    }
  }

  clearTimeout(watchdog);
  await gen.stop();
  await backends.stop();
  finish();
}

/**
 * What the proxy spent per unit of work (µs per connection or request, ms per GB) and the kernel's share of
 * it. Unlike a rate, a cost barely moves when something else on the machine takes CPU away from the
 * proxy, so it compares proxies even when the rates were disturbed.
 */
function proxyCost(m: Metric, r: Record<string, unknown>, cpu: CpuUse): { proxyCpuPerUnit?: number; proxySysShare?: number } {
  const proxyPct = cpu.groups.proxy ?? 0;
  const units = m === 'rate' ? (r.conns as number) : m === 'latency' ? (r.requests as number) : ((r.gbps as number) * cpu.seconds) / 8;
  if (!(units > 0)) return {};
  const cpuSeconds = (proxyPct / 100) * cpu.seconds;
  return {
    proxyCpuPerUnit: (cpuSeconds * (m === 'tput1' || m === 'tput4' ? 1e3 : 1e6)) / units,
    proxySysShare: proxyPct > 0 ? (cpu.groupsSys.proxy ?? 0) / proxyPct : 0,
  };
}
