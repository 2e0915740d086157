// GET /metrics: Prometheus's text format 0.0.4, rendered from one Snapshot per scrape.
//
// lb's counters already live in the data path, so its families are written straight from the snapshot
// of the current scrape: the numbers agree with `show stat` taken from the same snapshot, to the byte,
// and series of a removed backend vanish at the next scrape. They were prom-client metrics with a
// collect() each; at 10,000 backends (180,000 series) that took 1.2-1.8 s of the main thread a scrape
// and 20 s at 100,000, mostly in hashing label sets it then printed once. The layout is prom-client's
// (HELP, TYPE, samples, a blank line between families), which still renders the process's own metrics.

import { collectDefaultMetrics, Registry } from 'prom-client';
import type { BackendSnap, BackendStatus, ListenerSnap, Snapshot } from '../stats/snapshot.ts';

export const METRICS_CONTENT_TYPE: string = Registry.PROMETHEUS_CONTENT_TYPE;

/** What operators call a backend: the configured `name` where the table has one, else host:port. */
export function backendName(b: BackendSnap): string {
  return (b.entry as { name?: string }).name ?? b.entry.key;
}

const STATES: readonly BackendStatus[] = ['ENA', 'dis', 'DIS', 'DRN'];

// Default process metrics (memory, CPU, handles, event loop lag, GC) belong to the process, not to one
// HTTP server: registered once, so a reload that rebinds the HTTP face adds no second GC observer.
let processRegistry: Registry | null = null;
function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
    // Gauges named like counters, which promtool's lint rejects; the per-type gauges beside them stay.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
      processRegistry.removeSingleMetric(name);
    }
  }
  return processRegistry;
}

type MetricType = 'counter' | 'gauge';

/** A metric family whose samples are read from one kind of snapshot row (null: no sample for that row). */
interface Family<Row> {
  readonly name: string;
  readonly type: MetricType;
  readonly help: string;
  readonly value: (row: Row) => number | null;
}

/** A family with one sample per backend (no sample where `value` is null). */
const BACKEND_FAMILIES: readonly Family<BackendSnap>[] = [
  { name: 'lb_backend_connections_total', type: 'counter', help: 'Connections relayed to the backend (successful connects; show stat stot).', value: (b) => b.total },
  { name: 'lb_backend_attempts_total', type: 'counter', help: 'Times the backend was chosen, first tries and failovers (show totalc, show stat lbtot).', value: (b) => b.attempts },
  { name: 'lb_backend_connect_failures_total', type: 'counter', help: 'Connects to the backend that failed: refused, timed out, unreachable (show stat econ).', value: (b) => b.failures },
  { name: 'lb_backend_bytes_sent_total', type: 'counter', help: 'Bytes relayed client to backend (balance sent, show stat bin).', value: (b) => b.sent },
  { name: 'lb_backend_bytes_received_total', type: 'counter', help: 'Bytes relayed backend to client (balance rcvd, show stat bout).', value: (b) => b.rcvd },
  { name: 'lb_backend_check_failures_total', type: 'counter', help: 'Failed health checks (show stat chkfail; 0 without checks).', value: (b) => b.check?.failed ?? 0 },
  { name: 'lb_backend_check_downs_total', type: 'counter', help: 'Transitions from up to down by health checks (show stat chkdown).', value: (b) => b.check?.downs ?? 0 },
  { name: 'lb_backend_current_connections', type: 'gauge', help: 'Connections open to the backend now (show stat scur).', value: (b) => b.cur },
  { name: 'lb_backend_peak_connections', type: 'gauge', help: 'Most connections open at once since start (show stat smax).', value: (b) => b.max },
  { name: 'lb_backend_max_connections', type: 'gauge', help: "The backend's maxc; 0 = unlimited.", value: (b) => b.entry.maxc },
  { name: 'lb_backend_weight', type: 'gauge', help: 'Configured weight (weighted and leastconn policies).', value: (b) => b.entry.weight },
  { name: 'lb_backend_up', type: 'gauge', help: '1 when the backend takes new connections (state ENA), else 0.', value: (b) => (b.status === 'ENA' ? 1 : 0) },
  { name: 'lb_backend_last_change_seconds', type: 'gauge', help: 'Seconds since the backend last changed between up and down (show stat lastchg).', value: (b) => b.lastChangeSec },
  { name: 'lb_backend_check_duration_seconds', type: 'gauge', help: 'Duration of the last health check (only backends with checks).', value: (b) => (b.check ? b.check.durationMs / 1000 : null) },
];

/** A family with one sample per listener. */
const LISTENER_FAMILIES: readonly Family<ListenerSnap>[] = [
  { name: 'lb_listener_connections_total', type: 'counter', help: 'Client connections relayed (show stat FRONTEND stot).', value: (l) => l.total },
  { name: 'lb_listener_current_connections', type: 'gauge', help: 'Client connections open now.', value: (l) => l.cur },
  { name: 'lb_listener_peak_connections', type: 'gauge', help: 'Most client connections open at once since start.', value: (l) => l.max },
  { name: 'lb_listener_bytes_sent_total', type: 'counter', help: 'Bytes relayed client to backend.', value: (l) => l.sent },
  { name: 'lb_listener_bytes_received_total', type: 'counter', help: 'Bytes relayed backend to client.', value: (l) => l.rcvd },
  { name: 'lb_listener_no_backend_total', type: 'counter', help: 'Clients closed because no backend was usable (show stat FRONTEND ereq).', value: (l) => l.noBackend },
  { name: 'lb_queue_length', type: 'gauge', help: 'Clients waiting for a free slot now (0 without a queue).', value: (l) => l.queue?.cur ?? 0 },
  { name: 'lb_queue_limit', type: 'gauge', help: 'Most clients the queue holds (listeners with a queue only).', value: (l) => l.queue?.limit ?? null },
  { name: 'lb_queue_timeouts_total', type: 'counter', help: 'Queued clients closed after queue.timeout.', value: (l) => l.queue?.timeouts ?? 0 },
  { name: 'lb_queue_abandoned_total', type: 'counter', help: 'Queued clients that left before a slot was free.', value: (l) => l.queue?.abandoned ?? 0 },
  { name: 'lb_queue_rejected_total', type: 'counter', help: 'Clients closed because the queue was full.', value: (l) => l.queue?.rejected ?? 0 },
];

/** Of the process as a whole (no labels). */
const PROCESS_FAMILIES: readonly Family<Snapshot>[] = [
  { name: 'lb_maxconn', type: 'gauge', help: 'The [global] maxconn in force: connections lb holds at most (0: no limit).', value: (s) => s.conns.max },
  { name: 'lb_current_connections', type: 'gauge', help: 'Connections lb holds now, all listeners, queued clients included (show info CurrConns).', value: (s) => s.conns.cur },
  { name: 'lb_maxconn_reached_total', type: 'counter', help: 'Times lb reached maxconn: a worker stopped accepting at it, or a client was closed at it (show info MaxconnReached).', value: (s) => s.conns.reached },
  { name: 'lb_maxconn_refused_total', type: 'counter', help: 'Clients closed at once because lb was at maxconn, on listeners that cannot stop accepting (show info MaxconnRefused).', value: (s) => s.conns.refused },
  { name: 'lb_config_generation', type: 'gauge', help: 'The routing table in force: 1 at start, a higher number at each change every worker committed (reload, edit, discovery) (show info Generation).', value: (s) => s.config.generation },
  { name: 'lb_config_last_reload_successful', type: 'gauge', help: 'Whether the last reload succeeded (1; also before the first) or was refused, the old table kept (0).', value: (s) => (s.config.lastReload?.ok === false ? 0 : 1) },
  { name: 'lb_config_last_reload_success_timestamp_seconds', type: 'gauge', help: 'When the table in force was last loaded from the file successfully (start or reload), in seconds since the Unix epoch.', value: (s) => s.config.lastSuccessAt / 1000 },
  { name: 'lb_config_reloads_total', type: 'counter', help: 'Reloads asked for (SIGHUP, reload command), refused ones included (show info Reloads).', value: (s) => s.config.reloads },
  { name: 'lb_config_reload_failures_total', type: 'counter', help: 'Reloads refused, the old table kept (show info ReloadFailures).', value: (s) => s.config.reloadFailures },
];

/** A label value as the text format wants it (backslash, quote and newline escaped). */
function labelValue(v: string): string {
  return /[\\"\n]/.test(v) ? v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"') : v;
}

/** A sample value as prom-client writes it. */
function sampleValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v > 0 ? '+Inf' : '-Inf';
  return String(v);
}

/** One family: HELP and TYPE, then its samples, each a line. */
function family(name: string, type: MetricType, help: string, samples: string): string {
  return `# HELP ${name} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}\n# TYPE ${name} ${type}\n${samples}`;
}

export class MetricsExporter {
  /** The exposition for one snapshot: lb's families, then the process's. */
  async render(snap: Snapshot, startedAtMs: number): Promise<string> {
    // Each backend's labels are written once a scrape, not once a sample.
    const rows: { labels: string; b: BackendSnap }[] = [];
    for (const l of snap.listeners) {
      const listener = labelValue(l.name);
      for (const g of l.groups) {
        for (const b of g.backends) rows.push({ labels: `listener="${listener}",group="${g.index}",backend="${labelValue(backendName(b))}"`, b });
      }
    }
    const out: string[] = [];
    for (const f of BACKEND_FAMILIES) {
      let samples = '';
      for (const r of rows) {
        const v = f.value(r.b);
        if (v !== null) samples += `${f.name}{${r.labels}} ${sampleValue(v)}\n`;
      }
      out.push(family(f.name, f.type, f.help, samples));
    }
    let states = '';
    for (const r of rows) {
      for (const state of STATES) states += `lb_backend_state{${r.labels},state="${state}"} ${r.b.status === state ? 1 : 0}\n`;
    }
    out.push(family('lb_backend_state', 'gauge', "The backend's state as in show: 1 for the current one of ENA, dis (down), DIS (disabled), DRN (draining).", states));
    let usable = '';
    for (const l of snap.listeners) for (const g of l.groups) usable += `lb_group_usable_backends{listener="${labelValue(l.name)}",group="${g.index}"} ${sampleValue(g.up)}\n`;
    out.push(family('lb_group_usable_backends', 'gauge', 'Backends of the group that could take a new connection were it not for maxc.', usable));
    for (const f of LISTENER_FAMILIES) {
      let samples = '';
      for (const l of snap.listeners) {
        const v = f.value(l);
        if (v !== null) samples += `${f.name}{listener="${labelValue(l.name)}"} ${sampleValue(v)}\n`;
      }
      out.push(family(f.name, f.type, f.help, samples));
    }
    for (const f of PROCESS_FAMILIES) {
      const v = f.value(snap);
      out.push(family(f.name, f.type, f.help, v === null ? '' : `${f.name} ${sampleValue(v)}\n`));
    }
    out.push(
      family(
        'lb_build_info',
        'gauge',
        'Always 1; the labels say which lb and which Node run.',
        `lb_build_info{version="${labelValue(snap.version)}",node="${labelValue(process.version)}"} 1\n`,
      ),
    );
    out.push(family('lb_start_time_seconds', 'gauge', 'When lb started, in seconds since the Unix epoch.', `lb_start_time_seconds ${sampleValue(startedAtMs / 1000)}\n`));
    return out.join('\n') + '\n' + (await processMetrics().metrics());
  }
}
