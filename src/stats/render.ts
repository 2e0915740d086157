// Renderers of a Snapshot: balance's `show` table, HAProxy's `show stat` CSV and `show info`, JSON, MRTG.

import type { FailureRecord } from './rates.ts';
import type { BackendEntry, Policy } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';
import type { BackendSnap, GroupSnap, ListenerSnap, Snapshot, TrafficSnap } from './snapshot.ts';

const TYPE: Record<Policy, string> = { rr: 'RR', hash: 'Hash', leastconn: 'LC', random: 'Rnd', weighted: 'WRR', first: 'Frst' };

const r = (v: string | number, width: number): string => String(v).padStart(width);

/**
 * balance's header and column widths, with lb's own columns at the right: `fail`, `check`, and `name` (the
 * configured name, else "host:port" with the host as configured, so a host name shows there too).
 */
export const SHOW_HEADER =
  'GRP Type  #   S       ip-address  port    c      totalc maxc        sent        rcvd     fail  check name';

function showRow(g: GroupSnap, b: BackendSnap): string {
  const e = b.entry;
  return [
    r(g.index, 3), r(TYPE[g.policy], 4), r(b.index, 2), r(b.status, 3), r(e.address, 16), r(e.port, 5),
    r(b.cur, 4), r(b.attempts, 11), r(e.maxc, 4), r(b.sent, 11), r(b.rcvd, 11), r(b.failures, 8),
    r(b.check?.status ?? '-', 6), e.name,
  ].join(' ').trimEnd();
}

export function renderShow(snap: Snapshot, only?: string): string {
  const blocks = snap.listeners
    .filter((l) => only === undefined || l.name === only)
    .map((l) => {
      const q = l.queue;
      const queue = q ? `  queue ${q.cur}/${q.limit} (max ${q.max}, timeouts ${q.timeouts}, left ${q.abandoned}, full ${q.rejected})` : '';
      const proxy = l.proxyRejected !== null ? `  proxy-rejected ${l.proxyRejected}` : '';
      const head = `listener ${l.name} ${l.address}  current ${l.cur}  total ${l.total}  no-backend ${l.noBackend}${proxy}${queue}`;
      const rows = l.groups.flatMap((g) => g.backends.map((b) => showRow(g, b)));
      return [head, SHOW_HEADER, ...rows].join('\n');
    });
  // No blank lines inside a reply: on the control port a blank line marks the reply's end.
  return blocks.join('\n');
}

export function formatUptime(sec: number): string {
  const d = Math.floor(sec / 86400);
  const h = Math.floor((sec % 86400) / 3600);
  const m = Math.floor((sec % 3600) / 60);
  const s = sec % 60;
  return `${d}d ${h}h${String(m).padStart(2, '0')}m${String(s).padStart(2, '0')}s`;
}

/** The fourth MRTG line for one backend: where it is, and what operators call it. */
export function mrtgBackendTitle(listener: string, group: number, channel: number, entry: BackendEntry): string {
  return `lb ${listener} group ${group} channel ${channel} (${entry.name})`;
}

/** MRTG's external-script protocol: exactly four lines. */
export function renderMrtg(first: number, second: number, uptimeSec: number, name: string): string {
  return `${first}\n${second}\n${formatUptime(uptimeSec)}\n${name}`;
}

// HAProxy's `show stat` columns 0..38, in its order: tools index them by position. lb's own follow.
const HAPROXY_COLUMNS = [
  'pxname', 'svname', 'qcur', 'qmax', 'scur', 'smax', 'slim', 'stot', 'bin', 'bout', 'dreq', 'dresp', 'ereq',
  'econ', 'eresp', 'wretr', 'wredis', 'status', 'weight', 'act', 'bck', 'chkfail', 'chkdown', 'lastchg',
  'downtime', 'qlimit', 'pid', 'iid', 'sid', 'throttle', 'lbtot', 'tracked', 'type', 'rate', 'rate_lim',
  'rate_max', 'check_status', 'check_code', 'check_duration',
] as const;
const LB_COLUMNS = ['addr', 'algo', 'check_rise', 'check_fall', 'lb_listener', 'lb_group', 'lb_backend', 'lb_state', 'lb_qtimeouts', 'lb_proxy_rejected'] as const;
type Column = (typeof HAPROXY_COLUMNS)[number] | (typeof LB_COLUMNS)[number];
type Row = Partial<Record<Column, string | number>>;

const STATUS = { ENA: 'UP', dis: 'DOWN', DIS: 'MAINT', DRN: 'DRAIN' } as const;

function csvField(v: string | number | undefined): string {
  if (v === undefined) return '';
  const s = String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function trafficCols(t: TrafficSnap): Row {
  return { scur: t.cur, smax: t.max, stot: t.total, bin: t.sent, bout: t.rcvd };
}

export function renderStatCsv(snap: Snapshot): string {
  const rows: Row[] = [];
  snap.listeners.forEach((l: ListenerSnap, li) => {
    rows.push({
      pxname: l.name, svname: 'FRONTEND', ...trafficCols(l), ereq: l.noBackend, status: 'OPEN', rate: l.rate, rate_max: l.rateMax,
      pid: snap.pid, iid: li + 1, sid: 0, type: 0, addr: l.address, lb_listener: l.name,
      // lb queues per listener, so the queue columns are on the FRONTEND row.
      ...(l.queue ? { qcur: l.queue.cur, qmax: l.queue.max, qlimit: l.queue.limit, lb_qtimeouts: l.queue.timeouts } : {}),
      ...(l.proxyRejected !== null ? { lb_proxy_rejected: l.proxyRejected } : {}),
    });
    for (const g of l.groups) {
      const px = `${l.name}/${g.index}`;
      for (const b of g.backends) {
        rows.push({
          pxname: px, svname: b.entry.name, ...trafficCols(b), slim: b.entry.maxc || undefined, econ: b.failures,
          status: STATUS[b.status], weight: b.entry.weight, act: g.index === 0 ? 1 : 0, bck: g.index === 0 ? 0 : 1,
          lastchg: b.lastChangeSec, downtime: b.downtimeSec, rate: b.rate, rate_max: b.rateMax, pid: snap.pid, iid: li + 1, sid: b.index + 1, lbtot: b.attempts, type: 2,
          ...(b.check
            ? { chkfail: b.check.failed, chkdown: b.check.downs, check_status: b.check.status,
                check_duration: b.check.durationMs, check_rise: b.check.rise, check_fall: b.check.fall }
            : {}),
          // '' for a backend name with no address now (BackendEntry.resolveError).
          addr: b.entry.address === '' ? '' : formatHostPort(b.entry.address, b.entry.port), lb_listener: l.name, lb_group: g.index,
          lb_backend: b.index, lb_state: b.status,
        });
      }
      rows.push({
        pxname: px, svname: 'BACKEND', ...trafficCols(g), econ: g.backends.reduce((n, b) => n + b.failures, 0),
        status: g.up > 0 ? 'UP' : 'DOWN', weight: g.backends.reduce((n, b) => n + (b.status === 'ENA' ? b.entry.weight : 0), 0),
        act: g.index === 0 ? g.up : 0, bck: g.index === 0 ? 0 : g.up, pid: snap.pid, iid: li + 1, sid: 0,
        lbtot: g.backends.reduce((n, b) => n + b.attempts, 0), type: 1, algo: g.policy, lb_listener: l.name, lb_group: g.index,
      });
    }
  });
  const columns: Column[] = [...HAPROXY_COLUMNS, ...LB_COLUMNS];
  const lines = rows.map((row) => columns.map((c) => csvField(row[c])).join(','));
  return [`# ${columns.join(',')}`, ...lines].join('\n');
}

export function renderInfo(snap: Snapshot): string {
  const sum = (f: (l: ListenerSnap) => number): number => snap.listeners.reduce((n, l) => n + f(l), 0);
  const lines: [string, string | number][] = [
    ['Name', 'lb'],
    ['Version', snap.version],
    ['Pid', snap.pid],
    ['Uptime', formatUptime(snap.uptimeSec)],
    ['Uptime_sec', snap.uptimeSec],
    ['Node', process.version],
    ['Workers', snap.workers],
    ['WorkerRestarts', snap.workerRestarts],
    ['Splice', snap.splice],
    ['PortCheck', snap.portCheck],
    ['Generation', snap.config.generation],
    ['WorkerGenerations', snap.config.workerGenerations.join(',')],
    ['Reloads', snap.config.reloads],
    ['ReloadFailures', snap.config.reloadFailures],
    ['LastReload', lastReload(snap)],
    ['LastReloadTime', snap.config.lastReload ? new Date(snap.config.lastReload.at).toISOString() : '-'],
    ['LastReloadError', snap.config.lastReload?.error ?? '-'],
    ['Listeners', snap.listeners.length],
    ...snap.listeners.map((l): [string, string] => [`Path.${l.name}`, l.path]),
    ['Maxconn', snap.conns.max],
    ['CurrConns', snap.conns.cur],
    ['MaxconnReached', snap.conns.reached],
    ['MaxconnRefused', snap.conns.refused],
    ['CumConns', sum((l) => l.total)],
    ['NoBackend', sum((l) => l.noBackend)],
    ['BytesIn', sum((l) => l.sent)],
    ['BytesOut', sum((l) => l.rcvd)],
    ['Memory_rss_bytes', process.memoryUsage.rss()],
  ];
  return lines.map(([k, v]) => `${k}: ${v}`).join('\n');
}

/** `ok`, `failed`, or `none` before the first reload. */
function lastReload(snap: Snapshot): string {
  const last = snap.config.lastReload;
  return last === null ? 'none' : last.ok ? 'ok' : 'failed';
}

export function renderJson(snap: Snapshot): string {
  return JSON.stringify(snap, null, 2);
}

/** `show errors`: the last connect and check failures, oldest first, one per line. */
export function renderErrors(list: readonly FailureRecord[]): string {
  if (list.length === 0) return 'no failures recorded';
  return list
    .map((f) => `${new Date(f.at).toISOString()} ${f.listener} group ${f.group} ${f.backend} ${f.by === 'check' ? 'check' : 'connect'}: ${f.reason}`)
    .join('\n');
}
