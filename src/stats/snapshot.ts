// One snapshot of every counter, taken at once: `show`, `show stat`, `show info`, `show json` and the
// MRTG four-liners all render from it, so the formats cannot disagree with each other.

import type { BackendState, ListenerState } from '../balance/state.ts';
import type { BackendEntry, ListenerEntry, Policy } from '../config/table.ts';

/**
 * ENA enabled; dis down by health, ejection or autodisable; DIS disabled by an operator (balance.fm's
 * three states); DRN draining (an operator's `drain`: no new connections, running ones go on).
 */
export type BackendStatus = 'ENA' | 'dis' | 'DIS' | 'DRN';

export interface TrafficSnap {
  cur: number;
  max: number;
  total: number;
  sent: number;
  rcvd: number;
}

export interface BackendSnap extends TrafficSnap {
  index: number;
  entry: BackendEntry;
  status: BackendStatus;
  attempts: number;
  failures: number;
  /** Seconds since the last change between up and down. */
  lastChangeSec: number;
  /** Seconds spent down (health, autodisable, ejection) over the backend's life. */
  downtimeSec: number;
  /** New connections in the last second, and the most seen in a second. */
  rate: number;
  rateMax: number;
  downReason: string;
  /** Active checks: null when the backend has none. */
  check: { status: string; durationMs: number; failed: number; downs: number; rise: number; fall: number } | null;
}

export interface GroupSnap extends TrafficSnap {
  index: number;
  policy: Policy;
  backends: BackendSnap[];
  /** Backends that could take a new connection were it not for maxc. */
  up: number;
}

export interface QueueSnap {
  cur: number;
  max: number;
  limit: number;
  timeouts: number;
  abandoned: number;
  rejected: number;
}

export interface ListenerSnap extends TrafficSnap {
  name: string;
  address: string;
  /** The path its connections take: `native connect + splice`, or what runs instead and why. */
  path: string;
  noBackend: number;
  queue: QueueSnap | null;
  /** New clients in the last second, and the most seen in a second. */
  rate: number;
  rateMax: number;
  /** accept_proxy listeners: clients closed without a valid PROXY header in time; null when off. */
  proxyRejected: number | null;
  groups: GroupSnap[];
}

export interface Snapshot {
  version: string;
  pid: number;
  now: number;
  uptimeSec: number;
  /** Data-plane worker threads running, and how many were replaced after dying. */
  workers: number;
  workerRestarts: number;
  /** The relay in use: "on" (splice) or "off (why)". */
  splice: string;
  /** How new listen addresses are checked before the workers bind them (ports.ts). */
  portCheck: string;
  /** `[global] maxconn` in force (0: none) and what it counts (src/proxy/conn-limit.ts). */
  conns: ConnFigures;
  /** Which table is in force, and how the reloads went. */
  config: ConfigFigures;
  listeners: ListenerSnap[];
}

export interface ConfigFigures {
  /** The table generation every worker confirmed: 1 at start, a higher one at each change committed (reload, edit, discovery). */
  readonly generation: number;
  /** The generation each worker routes by (all equal outside a change). */
  readonly workerGenerations: readonly number[];
  /** Reloads (SIGHUP, `reload`) so far, and those that failed (the old table kept). */
  readonly reloads: number;
  readonly reloadFailures: number;
  /** The last reload: null until there is one. */
  readonly lastReload: { readonly ok: boolean; readonly at: number; readonly error: string | null } | null;
  /** When the table in force was last loaded successfully (start or reload), ms since the epoch. */
  readonly lastSuccessAt: number;
}

/** The reload half of ConfigFigures: what the supervisor records at each reload. */
export type ReloadFigures = Omit<ConfigFigures, 'generation' | 'workerGenerations'>;

export interface ConnFigures {
  /** The limit (0: none). */
  readonly max: number;
  /** Connections lb holds now: accepted, queued ones included, not yet closed. */
  readonly cur: number;
  /** Times the limit was reached: a worker's listeners paused at it, or a client closed at it. */
  readonly reached: number;
  /** Clients Node accepted beyond the limit, closed at once (listeners that cannot pause). */
  readonly refused: number;
}

/** What the process as a whole runs with. */
export interface ProcessInfo {
  readonly workers: number;
  readonly restarts: number;
  readonly splice: string;
  readonly portCheck: string;
  readonly conns: ConnFigures;
  readonly config: ConfigFigures;
}

export interface SnapshotSource {
  readonly startedAt: number;
  processInfo(): ProcessInfo;
  /** The path its connections take (src/proxy/path.ts). */
  listenerPath(entry: ListenerEntry): string;
  /** Per-second rate of a series (`L name` for a listener, `B slot` for a backend) and its highest. */
  rateOf(key: string): { rate: number; max: number };
  listenerViews(): { entry: ListenerEntry; state: ListenerState; address: string }[];
}

interface Counters {
  readonly cur: number;
  readonly max: number;
  readonly total: number;
  sent(): number;
  rcvd(): number;
}

function traffic(c: Counters): TrafficSnap {
  return { cur: c.cur, max: c.max, total: c.total, sent: c.sent(), rcvd: c.rcvd() };
}

export function backendStatus(entry: BackendEntry, st: BackendState, now: number): BackendStatus {
  if (!entry.enabled) return 'DIS';
  if (st.draining) return 'DRN';
  return entry.resolveError !== undefined || st.isDown(now) ? 'dis' : 'ENA';
}

function downReason(entry: BackendEntry, st: BackendState, now: number): string {
  if (!entry.enabled) return 'disabled by operator';
  if (entry.resolveError !== undefined) return `cannot resolve ${entry.host}: ${entry.resolveError} (retrying)`;
  if (st.autoDisabled) return `autodisabled: ${st.lastFailure}`;
  if (st.draining) return 'draining';
  if (!st.checkUp) return `health check failed: ${st.check.lastStatus} ${st.lastFailure}`.trimEnd();
  if (st.ejectedUntil > now) return `ejected ${Math.ceil((st.ejectedUntil - now) / 1000)}s: ${st.lastFailure}`;
  if (st.probing) return 'probing';
  return '';
}

export function takeSnapshot(src: SnapshotSource, version: string, now = Date.now()): Snapshot {
  return {
    version,
    pid: process.pid,
    now,
    uptimeSec: Math.floor((now - src.startedAt) / 1000),
    ...((w) => ({
      workers: w.workers,
      workerRestarts: w.restarts,
      splice: w.splice,
      portCheck: w.portCheck,
      conns: w.conns,
      config: w.config,
    }))(src.processInfo()),
    listeners: src.listenerViews().map(({ entry, state, address }) => ({
      name: entry.name,
      address,
      path: src.listenerPath(entry),
      noBackend: state.noBackend,
      ...((r) => ({ rate: r.rate, rateMax: r.max }))(src.rateOf(`L ${entry.name}`)),
      proxyRejected: entry.acceptProxy ? state.proxyRejected : null,
      queue: entry.queue
        ? {
            cur: state.queued,
            max: state.queueMax,
            limit: entry.queue.max,
            timeouts: state.queueTimeouts,
            abandoned: state.queueAbandoned,
            rejected: state.queueRejected,
          }
        : null,
      ...traffic(state),
      groups: entry.groups.map((g, gi) => {
        const gs = state.groups[gi]!;
        const backends = g.backends.map((b, bi): BackendSnap => {
          const st = gs.backends[bi]!;
          return {
            index: bi,
            entry: b,
            status: backendStatus(b, st, now),
            attempts: st.attempts,
            failures: st.failures,
            downtimeSec: Math.floor(st.shared.downtimeMs(st.slot, now) / 1000),
            ...((r) => ({ rate: r.rate, rateMax: r.max }))(src.rateOf(`B ${st.slot}`)),
            lastChangeSec: Math.floor((now - st.lastChange) / 1000),
            downReason: downReason(b, st, now),
            check: b.health
              ? {
                  status: st.check.lastStatus,
                  durationMs: Math.round(st.check.lastDurationMs),
                  failed: st.check.failedChecks,
                  downs: st.check.downTransitions,
                  rise: b.health.rise,
                  fall: b.health.fall,
                }
              : null,
            ...traffic(st),
          };
        });
        const sum = (k: keyof TrafficSnap): number => backends.reduce((n, b) => n + b[k], 0);
        return {
          index: gi,
          policy: g.policy,
          backends,
          up: backends.filter((b) => b.status === 'ENA').length,
          cur: sum('cur'),
          max: Math.max(0, ...backends.map((b) => b.max)), // highest of its backends: groups have no own count
          total: sum('total'),
          sent: sum('sent'),
          rcvd: sum('rcvd'),
        };
      }),
    })),
  };
}
