// GET /metrics: Prometheus's text format 0.0.4, rendered by prom-client from one Snapshot per scrape.
//
// prom-client is the library Prometheus users know; its metrics are usually pushed into (inc() on every
// event), but lb's counters already live in the data path, so each metric here has a collect() that
// copies its values from the snapshot of the current scrape. prom-client calls every collect() of a
// registry synchronously within one metrics() call, so one scrape reads one snapshot: the numbers agree
// with `show stat` taken from the same snapshot, to the byte. Series of a removed backend vanish at the
// next scrape because every collect() starts from reset().

import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import type { BackendSnap, BackendStatus, GroupSnap, ListenerSnap, Snapshot } from '../stats/snapshot.ts';

export const METRICS_CONTENT_TYPE: string = Registry.PROMETHEUS_CONTENT_TYPE;

type BackendLabels = 'listener' | 'group' | 'backend';
interface BackendRow {
  l: ListenerSnap;
  g: GroupSnap;
  b: BackendSnap;
}

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

export class MetricsExporter {
  private readonly registry = new Registry();
  private snap: Snapshot | null = null;
  private startedAt = 0;

  constructor() {
    const self = this; // collect() runs with `this` bound to the metric
    const backends = (): BackendRow[] =>
      (self.snap?.listeners ?? []).flatMap((l) => l.groups.flatMap((g) => g.backends.map((b) => ({ l, g, b }))));
    const labels = ({ l, g, b }: BackendRow): Record<BackendLabels, string> => ({ listener: l.name, group: String(g.index), backend: backendName(b) });
    const registers = [this.registry];
    const bLabels: BackendLabels[] = ['listener', 'group', 'backend'];

    const backendCounter = (name: string, help: string, value: (r: BackendRow) => number): void => {
      new Counter({
        name, help, labelNames: bLabels, registers,
        collect() {
          this.reset();
          for (const r of backends()) this.inc(labels(r), value(r));
        },
      });
    };
    const backendGauge = (name: string, help: string, value: (r: BackendRow) => number | null): void => {
      new Gauge({
        name, help, labelNames: bLabels, registers,
        collect() {
          this.reset();
          for (const r of backends()) {
            const v = value(r);
            if (v !== null) this.set(labels(r), v);
          }
        },
      });
    };
    const listenerMetric = (kind: 'counter' | 'gauge', name: string, help: string, value: (l: ListenerSnap) => number | null): void => {
      const collect = (set: (labels: { listener: string }, v: number) => void): void => {
        for (const l of self.snap?.listeners ?? []) {
          const v = value(l);
          if (v !== null) set({ listener: l.name }, v);
        }
      };
      if (kind === 'counter') {
        new Counter({ name, help, labelNames: ['listener'], registers, collect() { this.reset(); collect((lb, v) => this.inc(lb, v)); } });
      } else {
        new Gauge({ name, help, labelNames: ['listener'], registers, collect() { this.reset(); collect((lb, v) => this.set(lb, v)); } });
      }
    };

    backendCounter('lb_backend_connections_total', 'Connections relayed to the backend (successful connects; show stat stot).', (r) => r.b.total);
    backendCounter('lb_backend_attempts_total', 'Times the backend was chosen, first tries and failovers (show totalc, show stat lbtot).', (r) => r.b.attempts);
    backendCounter('lb_backend_connect_failures_total', 'Connects to the backend that failed: refused, timed out, unreachable (show stat econ).', (r) => r.b.failures);
    backendCounter('lb_backend_bytes_sent_total', 'Bytes relayed client to backend (balance sent, show stat bin).', (r) => r.b.sent);
    backendCounter('lb_backend_bytes_received_total', 'Bytes relayed backend to client (balance rcvd, show stat bout).', (r) => r.b.rcvd);
    backendCounter('lb_backend_check_failures_total', 'Failed health checks (show stat chkfail; 0 without checks).', (r) => r.b.check?.failed ?? 0);
    backendCounter('lb_backend_check_downs_total', 'Transitions from up to down by health checks (show stat chkdown).', (r) => r.b.check?.downs ?? 0);
    backendGauge('lb_backend_current_connections', 'Connections open to the backend now (show stat scur).', (r) => r.b.cur);
    backendGauge('lb_backend_peak_connections', 'Most connections open at once since start (show stat smax).', (r) => r.b.max);
    backendGauge('lb_backend_max_connections', 'The backend\'s maxc; 0 = unlimited.', (r) => r.b.entry.maxc);
    backendGauge('lb_backend_weight', 'Configured weight (weighted and leastconn policies).', (r) => r.b.entry.weight);
    backendGauge('lb_backend_up', '1 when the backend takes new connections (state ENA), else 0.', (r) => (r.b.status === 'ENA' ? 1 : 0));
    backendGauge('lb_backend_last_change_seconds', 'Seconds since the backend last changed between up and down (show stat lastchg).', (r) => r.b.lastChangeSec);
    backendGauge('lb_backend_check_duration_seconds', 'Duration of the last health check (only backends with checks).', (r) =>
      r.b.check ? r.b.check.durationMs / 1000 : null,
    );
    new Gauge({
      name: 'lb_backend_state',
      help: 'The backend\'s state as in show: 1 for the current one of ENA, dis (down), DIS (disabled), DRN (draining).',
      labelNames: [...bLabels, 'state'],
      registers,
      collect() {
        this.reset();
        for (const r of backends()) for (const state of STATES) this.set({ ...labels(r), state }, r.b.status === state ? 1 : 0);
      },
    });
    new Gauge({
      name: 'lb_group_usable_backends',
      help: 'Backends of the group that could take a new connection were it not for maxc.',
      labelNames: ['listener', 'group'],
      registers,
      collect() {
        this.reset();
        for (const l of self.snap?.listeners ?? []) for (const g of l.groups) this.set({ listener: l.name, group: String(g.index) }, g.up);
      },
    });

    listenerMetric('counter', 'lb_listener_connections_total', 'Client connections relayed (show stat FRONTEND stot).', (l) => l.total);
    listenerMetric('gauge', 'lb_listener_current_connections', 'Client connections open now.', (l) => l.cur);
    listenerMetric('gauge', 'lb_listener_peak_connections', 'Most client connections open at once since start.', (l) => l.max);
    listenerMetric('counter', 'lb_listener_bytes_sent_total', 'Bytes relayed client to backend.', (l) => l.sent);
    listenerMetric('counter', 'lb_listener_bytes_received_total', 'Bytes relayed backend to client.', (l) => l.rcvd);
    listenerMetric('counter', 'lb_listener_no_backend_total', 'Clients closed because no backend was usable (show stat FRONTEND ereq).', (l) => l.noBackend);
    listenerMetric('gauge', 'lb_queue_length', 'Clients waiting for a free slot now (0 without a queue).', (l) => l.queue?.cur ?? 0);
    listenerMetric('gauge', 'lb_queue_limit', 'Most clients the queue holds (listeners with a queue only).', (l) => l.queue?.limit ?? null);
    listenerMetric('counter', 'lb_queue_timeouts_total', 'Queued clients closed after queue.timeout.', (l) => l.queue?.timeouts ?? 0);
    listenerMetric('counter', 'lb_queue_abandoned_total', 'Queued clients that left before a slot was free.', (l) => l.queue?.abandoned ?? 0);
    listenerMetric('counter', 'lb_queue_rejected_total', 'Clients closed because the queue was full.', (l) => l.queue?.rejected ?? 0);

    // Of the process as a whole (no labels).
    const processMetric = (type: 'counter' | 'gauge', name: string, help: string, value: (s: Snapshot) => number): void => {
      if (type === 'counter') new Counter({ name, help, registers, collect() { this.reset(); if (self.snap) this.inc(value(self.snap)); } });
      else new Gauge({ name, help, registers, collect() { if (self.snap) this.set(value(self.snap)); } });
    };
    processMetric('gauge', 'lb_maxconn', 'The [global] maxconn in force: connections lb holds at most (0: no limit).', (s) => s.conns.max);
    processMetric('gauge', 'lb_current_connections', 'Connections lb holds now, all listeners, queued clients included (show info CurrConns).', (s) => s.conns.cur);
    processMetric('counter', 'lb_maxconn_reached_total', 'Times lb reached maxconn: a worker stopped accepting at it, or a client was closed at it (show info MaxconnReached).', (s) => s.conns.reached);
    processMetric('counter', 'lb_maxconn_refused_total', 'Clients closed at once because lb was at maxconn, on listeners that cannot stop accepting (show info MaxconnRefused).', (s) => s.conns.refused);
    new Gauge({
      name: 'lb_build_info',
      help: 'Always 1; the labels say which lb and which Node run.',
      labelNames: ['version', 'node'],
      registers,
      collect() {
        this.reset();
        this.set({ version: self.snap?.version ?? '', node: process.version }, 1);
      },
    });
    new Gauge({
      name: 'lb_start_time_seconds',
      help: 'When lb started, in seconds since the Unix epoch.',
      registers,
      collect() {
        this.set(self.startedAt / 1000);
      },
    });
  }

  /** The exposition for one snapshot: lb's families, then the process's. */
  async render(snap: Snapshot, startedAtMs: number): Promise<string> {
    this.startedAt = startedAtMs;
    // Every collect() of one metrics() call runs before its first await, so concurrent scrapes cannot
    // mix two snapshots.
    this.snap = snap;
    const own = this.registry.metrics();
    const proc = processMetrics().metrics();
    return (await own) + '\n' + (await proc);
  }
}
