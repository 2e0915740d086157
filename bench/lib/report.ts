// Turning samples into figures: median and spread per figure, ratios to the reference rows, the markdown
// report and the JSON written by --json (kept stable so results can be compared across commits).

import os from 'node:os';
import type { CpuUse } from './procfs.ts';
import type { LogSummary } from './proxies.ts';

export type Metric = 'tput1' | 'tput4' | 'rate' | 'latency' | 'idle';
export const METRICS: readonly Metric[] = ['tput1', 'tput4', 'rate', 'latency', 'idle'];

/** One measurement of one metric on one target. Failed samples keep their error and count in the report. */
export interface Sample {
  rep: number;
  ok: boolean;
  error?: string;
  cpu?: CpuUse;
  /** The metric's own values (gbps, connPerSec, p99Ms, kbPerConn, ...) and details. */
  [key: string]: unknown;
}

/** A column of the table: which metric it comes from, how to read its value, and which way is better. */
interface Figure {
  key: string;
  metric: Metric;
  title: string;
  better: 'high' | 'low';
  value: (s: Sample) => number | null;
  /** Not meaningful without a proxy (memory): blank on the direct row. */
  proxyOnly?: boolean;
  /** The proxy's CPU per unit of work: shown in its own table, not the main one. */
  cost?: boolean;
}

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

export const FIGURES: readonly Figure[] = [
  { key: 'tput1_gbps', metric: 'tput1', title: '1-stream Gbit/s', better: 'high', value: (s) => num(s.gbps) },
  { key: 'tput4_gbps', metric: 'tput4', title: '4-stream Gbit/s', better: 'high', value: (s) => num(s.gbps) },
  { key: 'rate_conn_per_s', metric: 'rate', title: 'conn/s', better: 'high', value: (s) => num(s.connPerSec) },
  { key: 'latency_req_per_s', metric: 'latency', title: 'req/s', better: 'high', value: (s) => num(s.reqPerSec) },
  { key: 'latency_p50_ms', metric: 'latency', title: 'p50 ms', better: 'low', value: (s) => num(s.p50Ms) },
  { key: 'latency_p99_ms', metric: 'latency', title: 'p99 ms', better: 'low', value: (s) => num(s.p99Ms) },
  { key: 'idle_rss_mb', metric: 'idle', title: 'idle RSS MB', better: 'low', value: (s) => num(s.rssKb) && num(s.rssKb)! / 1024, proxyOnly: true },
  { key: 'idle_kb_per_conn', metric: 'idle', title: 'KB/idle conn', better: 'low', value: (s) => num(s.kbPerConn), proxyOnly: true },
  { key: 'tput1_cpu_ms_per_gb', metric: 'tput1', title: '1-stream CPU ms/GB', better: 'low', value: (s) => num(s.proxyCpuPerUnit), proxyOnly: true, cost: true },
  { key: 'tput4_cpu_ms_per_gb', metric: 'tput4', title: '4-stream CPU ms/GB', better: 'low', value: (s) => num(s.proxyCpuPerUnit), proxyOnly: true, cost: true },
  { key: 'rate_cpu_us_per_conn', metric: 'rate', title: 'CPU µs/conn', better: 'low', value: (s) => num(s.proxyCpuPerUnit), proxyOnly: true, cost: true },
  { key: 'latency_cpu_us_per_req', metric: 'latency', title: 'CPU µs/req', better: 'low', value: (s) => num(s.proxyCpuPerUnit), proxyOnly: true, cost: true },
];

export interface Stat {
  median: number;
  min: number;
  max: number;
  /** Half the min–max range, in % of the median: the ± shown in the table. */
  spreadPct: number;
  n: number;
}

export function median(xs: readonly number[]): number | null {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return null;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function stat(values: number[]): Stat | null {
  const med = median(values);
  if (med === null) return null;
  const min = Math.min(...values);
  const max = Math.max(...values);
  return { median: med, min, max, spreadPct: med ? (50 * (max - min)) / Math.abs(med) : 0, n: values.length };
}

export interface RunInfo {
  mode: 'full' | 'quick' | 'smoke' | 'custom';
  /** The lb measured: commit, and files of src/ modified in the working tree. */
  lb: { commit: string; modified: string[] };
  startedAt: string;
  elapsedS: number;
  settings: Record<string, unknown>;
  targets: { name: string; desc: string }[];
  metrics: Metric[];
  notes: string[];
  /** What each proxy logged, by target and metric (lb's warn/error events, stray lines). */
  logs: Record<string, Record<string, LogSummary>>;
  /** Stops that needed SIGKILL or exited non-zero, and proxies that died. */
  incidents: string[];
  aborted?: string;
}

export type Results = Record<string, Partial<Record<Metric, Sample[]>>>;

/** figures[target][figureKey] = Stat, or null when every sample failed or the figure does not apply. */
export function summarise(results: Results, targets: readonly string[]): Record<string, Record<string, Stat | null>> {
  const out: Record<string, Record<string, Stat | null>> = {};
  for (const t of targets) {
    out[t] = {};
    for (const f of FIGURES) {
      const samples = results[t]?.[f.metric];
      if (!samples) continue;
      const vals = samples.filter((s) => s.ok).map(f.value).filter((v): v is number => v !== null);
      out[t]![f.key] = stat(vals);
    }
  }
  return out;
}

const REFERENCES = ['direct', 'haproxy-1t', 'node-pipe'];

function ratios(fig: Record<string, Record<string, Stat | null>>, targets: readonly string[]): Record<string, Record<string, Record<string, number | null>>> {
  const out: Record<string, Record<string, Record<string, number | null>>> = {};
  for (const ref of REFERENCES) {
    if (!targets.includes(ref)) continue;
    out[ref] = {};
    for (const t of targets) {
      if (t === ref) continue;
      out[ref]![t] = {};
      for (const f of FIGURES) {
        if (!(f.key in (fig[t] ?? {}))) continue;
        const a = fig[t]![f.key]?.median;
        const b = fig[ref]![f.key]?.median;
        out[ref]![t]![f.key] = a != null && b ? a / b : null;
      }
    }
  }
  return out;
}

export function toJson(info: RunInfo, results: Results): object {
  const names = info.targets.map((t) => t.name);
  const figures = summarise(results, names);
  return {
    schema: 'lb-bench/1',
    ...info,
    machine: machine(),
    node: process.version,
    figures,
    ratios: ratios(figures, names),
    samples: results,
  };
}

function machine(): string {
  const cpus = os.cpus();
  return `${cpus.length} cores (${cpus[0]?.model ?? '?'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}`;
}

function fmt(v: number | null | undefined): string {
  if (v == null || !Number.isFinite(v)) return '—';
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  return Number(v.toPrecision(3)).toString();
}

function fmtRatio(r: number | null | undefined): string {
  if (r == null || !Number.isFinite(r)) return '—';
  return `${r >= 10 ? r.toFixed(1) : r >= 0.1 ? r.toFixed(2) : r.toPrecision(2)}×`;
}

function table(head: string[], rows: string[][]): string[] {
  return [`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i ? '---:' : ':---')).join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)];
}

const SATURATED = 90;

export function toMarkdown(info: RunInfo, results: Results): string {
  const names = info.targets.map((t) => t.name);
  const fig = summarise(results, names);
  const cols = FIGURES.filter((f) => info.metrics.includes(f.metric) && !f.cost);
  const costCols = FIGURES.filter((f) => info.metrics.includes(f.metric) && f.cost);
  const L: string[] = [];
  const s = info.settings;
  L.push(`## lb bench (${info.mode}) — ${info.startedAt.replace(/\.\d+Z$/, 'Z')}`, '');
  if (info.aborted) L.push(`**ABORTED: ${info.aborted}** (partial results)`, '');
  L.push(
    `lb ${info.lb.commit}${info.lb.modified.length ? ` with uncommitted changes to ${info.lb.modified.join(', ')}` : ''}. ` +
      `Machine: ${machine()}; Node ${process.version}. Everything on 127.0.0.1; load generator: bench/lib/loadgen.ts, ${s.genProcs} process(es) for conn/s, one for bulk and latency; ` +
      `backends: one process of bench/lib/backends.ts. ${s.reps} repetition(s) per figure, interleaved (each repetition walks the targets in rotated order; ` +
      `proxies are restarted for each metric); cells are the median ±half the min–max range in %. Warm-up ${s.warmupS} s${s.preheatS ? ` (${(s.warmupS as number) + (s.preheatS as number)} s before a proxy's first sample)` : ''}, measured ${s.durationS} s per sample. ` +
      `Bulk: the backend streams 256 KiB writes, the client counts what it receives. conn/s: ${s.rateConns} concurrent loops of connect, ` +
      `${s.rateRequestBytes} B request, ${s.rateResponseBytes} B response, server closes. Latency: ${s.latencyConns} persistent connections, ` +
      `${s.latencyBytes} B echoed, one request in flight per connection. Idle: ${s.idleConns} connections held${s.idleNote ? ` (${s.idleNote})` : ''}; ` +
      `KB/conn = (RSS with them − RSS of the fresh proxy) / connections. ` +
      `${s.settleS ? `Before each sample the run waited (≤ ${s.settleS} s) for the shared machine to be idle. ` : ''}Wall time ${Math.round(info.elapsedS)} s.`,
    '',
  );
  const rows = info.targets.map((t) => {
    const row = [t.name];
    for (const f of cols) {
      const samples = results[t.name]?.[f.metric] ?? [];
      const st = fig[t.name]?.[f.key];
      const failed = samples.filter((x) => !x.ok).length;
      if (t.name === 'direct' && f.proxyOnly) row.push('—');
      else if (!st) row.push(failed ? 'FAIL' : '—');
      else {
        let cell = fmt(st.median);
        if (st.n > 1) cell += ` ±${Math.round(st.spreadPct)}%`;
        if (failed) cell += ` (${failed} failed)`;
        const busy = median(samples.filter((x) => x.ok && x.cpu).map((x) => x.cpu!.machine));
        if (f.metric !== 'idle' && busy !== null && busy >= SATURATED && (f.key.endsWith('per_s') || f.key.endsWith('gbps'))) cell += ' †';
        row.push(cell);
      }
    }
    if (info.metrics.includes('rate')) {
      const errs = (results[t.name]?.rate ?? []).reduce((n, x) => n + Object.values((x.errors as Record<string, number>) ?? {}).reduce((a, b) => a + b, 0), 0);
      row.splice(1 + cols.findIndex((c) => c.key === 'rate_conn_per_s') + 1, 0, String(errs));
    }
    return row;
  });
  const head = ['target', ...cols.map((c) => c.title)];
  if (info.metrics.includes('rate')) head.splice(1 + cols.findIndex((c) => c.key === 'rate_conn_per_s') + 1, 0, 'conn errors');
  L.push(...table(head, rows), '');
  L.push(`† the whole machine was ≥${SATURATED}% busy (median) during that figure: it ranks the targets by CPU cost more than it shows their ceiling.`);

  const rt = ratios(fig, names);
  const refTitle: Record<string, string> = {
    direct: 'target ÷ direct',
    'haproxy-1t': 'target ÷ haproxy-1t',
    'node-pipe': 'target ÷ node-pipe (the issue: lb ≥ 1.3× on conn/s, ≥ 1× on the rest, ≤ 1× on memory)',
  };
  for (const [ref, byTarget] of Object.entries(rt)) {
    const rc = cols.filter((c) => !(ref === 'direct' && c.proxyOnly) && !c.cost);
    const rrows = Object.entries(byTarget).map(([t, r]) => [t, ...rc.map((c) => (t === 'direct' && c.proxyOnly ? '—' : fmtRatio(r[c.key])))]);
    L.push('', `### Ratios: ${refTitle[ref]} (throughput and rates: higher is better; latency and memory: lower is better)`, '');
    L.push(...table(['target', ...rc.map((c) => c.title)], rrows));
  }

  if (costCols.length) {
    L.push('', '### Proxy CPU per unit of work (median; lower is better; in brackets the kernel\'s share: system calls and the TCP work done in them)', '');
    L.push('A cost barely moves when other work on the machine takes CPU away from the proxy, so it ranks the proxies even when the rates above are disturbed.', '');
    const crow = (t: string): string[] => [
      t,
      ...costCols.map((c) => {
        const st = fig[t]?.[c.key];
        if (!st) return '—';
        const sys = median((results[t]?.[c.metric] ?? []).filter((x) => x.ok).map((x) => num(x.proxySysShare)).filter((v): v is number => v !== null));
        return `${fmt(st.median)}${st.n > 1 ? ` ±${Math.round(st.spreadPct)}%` : ''}${sys !== null ? ` (${Math.round(100 * sys)}%)` : ''}`;
      }),
    ];
    L.push(...table(['target', ...costCols.map((c) => c.title)], names.filter((t) => t !== 'direct').map(crow)));
    for (const ref of ['node-pipe', 'haproxy-1t'].filter((r) => names.includes(r))) {
      const others = names.filter((t) => t !== 'direct' && t !== ref);
      if (!others.length) continue;
      L.push('', `CPU cost ÷ ${ref}:`, '');
      L.push(...table(['target', ...costCols.map((c) => c.title)], others.map((t) => [t, ...costCols.map((c) => fmtRatio(rt[ref]?.[t]?.[c.key]))])));
    }
  }

  const cpuMetrics = info.metrics.filter((m) => m !== 'idle');
  if (cpuMetrics.length) {
    L.push(
      '',
      '### CPU during the measured window (median, % of one core): proxy / load generator / backend / softirq / other — machine busy % of all cores',
      '',
      'softirq is mostly the kernel\'s side of loopback TCP (largely charged to the processes too); "other" is busy time of none of these processes: whatever else runs on this shared machine (large = disturbed figure).',
      '',
    );
    const crows = info.targets.map((t) => [
      t.name,
      ...cpuMetrics.map((m) => {
        const ok = (results[t.name]?.[m] ?? []).filter((x) => x.ok && x.cpu);
        if (!ok.length) return '—';
        const g = (k: string): string => fmt(median(ok.map((x) => x.cpu!.groups[k] ?? 0)) ?? 0);
        const c = (f: (u: CpuUse) => number): string => fmt(median(ok.map((x) => f(x.cpu!))));
        return `${t.name === 'direct' ? '—' : g('proxy')} / ${g('gen')} / ${g('backend')} / ${c((u) => u.softirq)} / ${c((u) => u.other)} — ${c((u) => u.machine)}`;
      }),
    ]);
    L.push(...table(['target', ...cpuMetrics], crows));
  }

  const idleRows = info.targets
    .map((t) => [t.name, (results[t.name]?.idle ?? []).find((x) => x.ok && !x.skipped)] as const)
    .filter(([, x]) => x);
  if (idleRows.length) {
    L.push('', '### Idle connections', '');
    L.push(
      ...table(
        ['target', 'established', 'open ms', 'RSS before MB', 'RSS loaded MB', 'fds', 'processes'],
        idleRows.map(([n, x]) => [
          n,
          `${x!.established}/${x!.n}`,
          String(x!.openMs),
          fmt((x!.baseRssKb as number) / 1024),
          fmt((x!.rssKb as number) / 1024),
          String(x!.fds),
          String(x!.processes),
        ]),
      ),
    );
  }

  L.push('', '### Targets', '');
  for (const t of info.targets) L.push(`- **${t.name}**: ${t.desc}`);

  const problems: string[] = [];
  for (const t of names) {
    for (const m of info.metrics) {
      for (const x of results[t]?.[m] ?? []) {
        if (!x.ok) problems.push(`- ${t} ${m} rep ${x.rep}: FAILED — ${x.error}`);
        else {
          const errs = x.errors as Record<string, number> | undefined;
          if (errs && Object.keys(errs).length) problems.push(`- ${t} ${m} rep ${x.rep}: client errors ${JSON.stringify(errs)}`);
          if (x.closedEarly) problems.push(`- ${t} ${m} rep ${x.rep}: ${x.closedEarly} stream(s) closed before the end`);
          if (m === 'idle' && (x.failed as number) > 0) problems.push(`- ${t} idle: ${x.established}/${x.n} established, ${JSON.stringify(x.connectErrors)}`);
        }
      }
    }
  }
  for (const [t, byMetric] of Object.entries(info.logs)) {
    for (const [m, log] of Object.entries(byMetric)) {
      const bad = Object.entries(log.events).filter(([k]) => !k.startsWith('info '));
      if (bad.length) problems.push(`- ${t} ${m}: logged ${bad.map(([k, v]) => `${v}× ${k}`).join(', ')}`);
      for (const line of log.other) problems.push(`- ${t} ${m}: stderr: \`${line}\``);
    }
  }
  problems.push(...info.incidents.map((i) => `- ${i}`));
  L.push('', '### Errors, failures, notes', '');
  L.push(...info.notes.map((n) => `- note: ${n}`));
  L.push(...(problems.length ? problems : ['- none']));
  L.push('');
  return L.join('\n');
}
