// The supervisor: the main thread of a running lb. It owns the routing table and its changes (start,
// reload, runtime edits: one at a time), the control port, the health checks, `save`, and the log
// writer; the data-plane workers (src/supervisor/workers.ts) serve the traffic. Both sides meet in the
// shared state (src/shared/state.ts).
//
// The table is swapped, never edited: a change plans the slots of the new table, checks and binds what
// it adds in every worker, and only then switches everything to it in one step. Connections that are
// running keep the entry they started with. Any failure on the way leaves the old table running
// everywhere, with the old listeners, the old control port and the old slots.

import { lookup } from 'node:dns/promises';
import { dirname } from 'node:path';
import { availableParallelism } from 'node:os';
import { isIP } from 'node:net';
import { loadAddon } from './addon.ts';
import { ListenerState, type BackendState } from './balance/state.ts';
import type { BackendRef } from './config/edit.ts';
import { loadConfigIsolated } from './config/isolate.ts';
import {
  applyOperatorState,
  describeIdentity,
  isEmptyState,
  operatorState,
  readStateFile,
  saveTargetAllowed,
  writeStateFile,
  type BackendKey,
  type OperatorState,
} from './config/operator-state.ts';
import { saveTable } from './config/save.ts';
import type { Diagnostic } from './config/diagnostics.ts';
import type { ListenerEntry, RoutingTable } from './config/table.ts';
import { formatHostPort } from './config/values.ts';
import { Code, Exit, LbError } from './errors.ts';
import { tableLimitProblem, TABLE_LIMITS, type TableCounts } from './config/limits.ts';
import { formatPath } from './config/locate.ts';
import { createLogger, type Logger } from './log.ts';
import type { ControlTarget } from './control/commands.ts';
import { ControlServer } from './control/server.ts';
import { HealthMonitor } from './health/monitor.ts';
import { stageHttp, type HttpServer, type StagedFace } from './http/server.ts';
import { httpTargetOf } from './http/target.ts';
import { backendId, SlotAllocator, slotsFor, type SlotMap } from './shared/slots.ts';
import { SharedState } from './shared/state.ts';
import { takeSnapshot, type ProcessInfo, type ReloadFigures, type Snapshot } from './stats/snapshot.ts';
import { NameRetry, resolvedNames, withKnownAddresses } from './discovery/name-retry.ts';
import { FailureLog, RateMeter, type FailureRecord } from './stats/rates.ts';
import { checkListen, describePortCheck, portCheck } from './supervisor/ports.ts';
import { listenerPath } from './proxy/path.ts';
import { defaultMaxconn, effectiveMaxconn, openFileLimit, wakeLimited } from './proxy/conn-limit.ts';
import { WorkerPool, type CommitReport } from './supervisor/workers.ts';
import { sameEndpoint } from './worker/data-plane.ts';
import { VERSION } from './version.ts';

export interface RuntimeOptions {
  /** The file SIGHUP and `reload` re-read; null when started from balance's command line. */
  configFile?: string | null;
  log?: Logger;
  /** Overrides `[global] workers` (tests). */
  workers?: number;
  /** How an unresolved backend name is looked up again (default: the system's resolver, as at start; tests). */
  lookup?: (name: string) => Promise<string | Error>;
  /** What a table may hold (default TABLE_LIMITS; tests lower it to reach it with a few backends). */
  tableLimits?: TableCounts;
}

export interface ReloadResult {
  ok: boolean;
  diagnostics: Diagnostic[];
  error?: string;
  /** The table generation in force afterwards (the new one, or the old one everywhere). */
  generation: number;
  /** Workers that died during the commit and were restarted on the new table. */
  restarted?: number[];
}


/** A listener as the supervisor sees it: its entry, the shared state's view, where it is bound. */
export class ListenerView {
  entry: ListenerEntry;
  state: ListenerState;
  bound: { address: string; port: number };
  constructor(entry: ListenerEntry, state: ListenerState, bound: { address: string; port: number }) {
    this.entry = entry;
    this.state = state;
    this.bound = bound;
  }
  address(): { host: string; port: number } {
    return { host: this.bound.address, port: this.bound.port };
  }
}

/**
 * How many workers `[global] workers` asks for. "auto": where the addon relays, one per two CPUs the
 * process may use, since each such worker is two busy threads (its JS thread deciding, the addon's
 * thread accepting, connecting and splicing); measured on 2 CPUs, 1 worker made 9.0k connections/s
 * and 2 workers 8.3k (the 2 × 2 threads contend). Without the addon (or with `splice = "off"`) a worker
 * is one thread: one per CPU.
 */
export function workerCount(setting: number | 'auto', splice: 'auto' | 'off' = 'auto'): number {
  if (process.platform !== 'linux') return 1; // SO_REUSEPORT balancing is Linux's
  if (setting !== 'auto') return setting;
  const cpus = Math.max(1, availableParallelism());
  return nativeRelayExpected(splice) ? Math.max(1, Math.floor(cpus / 2)) : cpus;
}

/** Whether the workers will relay in the addon (checked in the supervisor, before any worker starts). */
function nativeRelayExpected(splice: 'auto' | 'off'): boolean {
  if (splice === 'off' || process.env['LB_SPLICE'] === 'off') return false;
  const addon = loadAddon();
  return addon.ok && typeof addon.exports['relay'] === 'function';
}

/**
 * The file's table was checked when it compiled; one that discovery expanded or an operator's `create`
 * grew was not: refused here, before any slot is taken, and the running table stays.
 */
function checkTableLimits(table: RoutingTable, limits: TableCounts): void {
  const over = tableLimitProblem(table.listeners, limits);
  if (over) throw new LbError(Code.TABLE_LIMIT, `${formatPath(over.path)}: ${over.message}`, Exit.CONFIG);
}

export class Runtime implements ControlTarget {
  table: RoutingTable;
  readonly version = VERSION;
  control: ControlServer | null = null;
  /** The HTTP face (status page, /metrics), when `[control] http` is set. */
  http: HttpServer | null = null;
  private readonly httpTarget = httpTargetOf(this, () => this.stopping !== null);
  /** Set by whoever owns the process (the CLI): the `kill` command asks it to stop. */
  onStopRequest: ((reason: string) => void) | null = null;
  readonly configFile: string | null;
  readonly log: Logger;
  readonly startedAt = Date.now();
  readonly listeners = new Map<string, ListenerView>();
  readonly workers: number;
  private readonly shared: SharedState;
  /** The soft descriptor limit, read once at start: maxconn's default (src/proxy/conn-limit.ts). */
  private readonly nofile: number | null;
  private readonly slots: SlotAllocator;
  private slotMap: SlotMap = { listeners: [] };
  private readonly pool: WorkerPool;
  private stopping: Promise<void> | null = null;
  private readonly health: HealthMonitor;
  /** Table changes run one at a time, in order. */
  private chain: Promise<unknown> = Promise.resolve();
  /** Reloads so far and how the last one went (`show info`, /metrics); replaced whole at each reload. */
  private reloadFigures: ReloadFigures = { reloads: 0, reloadFailures: 0, lastReload: null, lastSuccessAt: this.startedAt };
  /** A reload waiting for its turn: later requests join it (it reads the newest file when it runs). */
  private queuedReload: Promise<ReloadResult> | null = null;
  /**
   * The table the config file (or command line) gave, before operator changes: what `disable`, `maxc`,
   * `drain`, `create`... are changes of. They are kept apart (like HAProxy's server-state file), re-applied
   * after every reload and restart, and written to `[global] state_file` when one is set.
   */
  private configTable: RoutingTable;
  /**
   * DNS discovery, when `[global.dns]` is set (src/discovery/): a loaded table is expanded with the
   * answers known at once, and discovery follows the new file's names after a reload.
   */
  discovery: { expandNow(t: RoutingTable): RoutingTable; sync(): void } | null = null;
  private readonly rates = new RateMeter();
  private rateTimer: NodeJS.Timeout | null = null;
  /** The last connect and check failures, for `show errors`. */
  private readonly failures = new FailureLog();
  /** Backend names with no address when their table was made (without `[global.dns]`), looked up again. */
  private readonly nameRetry: NameRetry;
  private readonly tableLimits: TableCounts;
  /** What the state file said at start of each name's last address (written again when that changes). */
  private savedAddresses: Record<string, string> = {};
  /** Names that run on their `last` address (they did not resolve at start): retried too. */
  private staleNames = new Map<string, string>();

  constructor(table: RoutingTable, opts: RuntimeOptions = {}) {
    this.table = table;
    this.configTable = table;
    this.configFile = opts.configFile ?? null;
    this.log = opts.log ?? createLogger(table.global.logFormat, undefined, table.global.logLevel);
    this.workers = opts.workers ?? workerCount(table.global.workers, table.global.splice);
    if (process.platform !== 'linux' && table.global.workers !== 1) {
      this.log.log('warn', 'workers', { workers: 1, detail: 'SO_REUSEPORT load balancing needs Linux: running one data-plane worker' });
    }
    this.shared = new SharedState(undefined, { ...slotsFor(table), regions: this.workers });
    this.slots = new SlotAllocator(this.shared);
    this.nofile = openFileLimit();
    this.tableLimits = opts.tableLimits ?? TABLE_LIMITS;
    this.setMaxconn(table); // before any worker accepts
    this.warnMaxconn(table.global.maxconn);
    this.nameRetry = new NameRetry(this, this.log, opts.lookup);
    this.health = new HealthMonitor(this.log, () => this.serveQueues());
    this.health.onFailure = (listener, group, entry, r) =>
      this.failures.add({ at: Date.now(), listener, group, backend: entry.name, by: 'check', reason: `${r.status} ${r.detail}`.trim() });
    this.pool = new WorkerPool({
      size: this.workers,
      shared: this.shared,
      log: this.log,
      reusePort: process.platform === 'linux',
      testHooks: process.env.LB_TEST_HOOKS === '1',
      events: {
        failure: (slot, reason) => {
          const where = this.whereIsSlot(slot);
          if (!where) return;
          where.state.lastFailure = reason;
          this.failures.add({ at: Date.now(), listener: where.listener, group: where.group, backend: where.name, by: 'traffic', reason });
        },
        healthChanged: () => this.serveQueues(),
      },
    });
  }

  /** `[global] maxconn` (or the default from the descriptor limit) in force; raised: paused workers look again. */
  private setMaxconn(table: RoutingTable): void {
    if (this.shared.setMaxconn(effectiveMaxconn(table.global.maxconn, this.nofile))) wakeLimited(this.shared);
  }

  /** A configured maxconn that the descriptor limit cannot hold: lb would meet EMFILE before it. */
  private warnMaxconn(configured: number | null): void {
    const nofile = this.nofile;
    if (configured === null || nofile === null || configured <= defaultMaxconn(nofile)) return;
    this.log.log('warn', 'maxconn', {
      code: Code.MAXCONN,
      maxconn: configured,
      nofile,
      detail: `above what the descriptor limit holds (${defaultMaxconn(nofile)} connections): lb may run out of descriptors first; raise LimitNOFILE (ulimit -n)`,
    });
  }

  /** Something may have freed a slot (health, an edit): every worker looks at its queue again. */
  serveQueues(): void {
    for (const l of this.slotMap.listeners) this.shared.wake(l.slot);
  }

  private whereIsSlot(slot: number): { state: BackendState; listener: string; group: number; name: string } | undefined {
    for (const l of this.listeners.values()) {
      for (const [gi, g] of l.state.groups.entries()) {
        const i = g.backends.findIndex((b) => b.slot === slot);
        if (i >= 0) return { state: g.backends[i]!, listener: l.entry.name, group: gi, name: l.entry.groups[gi]!.backends[i]!.name };
      }
    }
    return undefined;
  }

  /**
   * Once a second: the increase of every connection total, for `show stat`'s rate and rate_max. With
   * `begin` (at start, after a reload): only the baselines of counters new here, so that their first
   * second counts; the known ones keep their one-second samples.
   */
  private sampleRates(begin = false): void {
    const now = Date.now();
    const keep = new Set<string>();
    const take = (key: string, total: number): void => {
      keep.add(key);
      if (begin) this.rates.begin(key, total, now);
      else this.rates.sample(key, total, now);
    };
    for (const l of this.listeners.values()) {
      take(`L ${l.entry.name}`, l.state.total);
      for (const g of l.state.groups) for (const b of g.backends) take(`B ${b.slot}`, b.total);
    }
    if (!begin) this.rates.retain(keep);
  }

  rateOf(key: string): { rate: number; max: number } {
    return { rate: this.rates.rate(key), max: this.rates.max(key) };
  }

  recentFailures(): readonly FailureRecord[] {
    return this.failures.list();
  }

  private syncHealth(): void {
    this.health.sync([...this.listeners.values()].map((l) => ({ entry: l.entry, groups: l.state.groups })));
  }

  /** Runs table changes one at a time. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Binds every listener in every worker; if anything fails, nothing stays bound. */
  async start(): Promise<void> {
    const restored = this.restoreState();
    checkTableLimits(this.table, this.tableLimits);
    const plan = this.slots.plan(this.table);
    const check = portCheck();
    if (check.method === 'listen') {
      this.log.log('warn', 'port-check', { method: 'listen', reason: check.reason, detail: 'a client connecting while a listener starts may be reset' });
    }
    try {
      const bound = await this.probe(this.table, new Map());
      await this.pool.start({ table: this.table, slots: plan.map, ports: portsOf(bound) });
      plan.commit();
      this.install(this.table, plan.map, bound);
      this.setDraining(restored);
      if (this.table.control) {
        const control = new ControlServer(this.table.control, this, this.log);
        await control.start();
        this.control = control;
      }
      this.http = await (await stageHttp(null, this.table.control, this.httpTarget, this.log)).commit();
      this.syncHealth();
      this.sampleRates(true);
      this.nameRetry.sync(this.staleNames);
      if (!sameRecord(this.savedAddresses, Object.fromEntries(resolvedNames(this.table)))) this.persistState();
      this.rateTimer = setInterval(() => this.sampleRates(), 1000);
      this.rateTimer.unref();
    } catch (err) {
      plan.rollback();
      await this.control?.close();
      await this.http?.close();
      this.http = null;
      await this.pool.terminate();
      this.listeners.clear();
      this.control = null;
      throw err;
    }
  }

  /** At start: the operator state of the state file, re-applied to the config's table. */
  private restoreState(): BackendKey[] {
    const file = this.table.global.stateFile;
    if (!file) return [];
    let state: OperatorState | null;
    try {
      state = readStateFile(file);
    } catch (err) {
      this.log.log('error', 'state-file', { file, error: (err as Error).message, detail: 'starting from the config alone' });
      return [];
    }
    if (!state) return [];
    this.savedAddresses = state.addresses ?? {};
    // A name that does not resolve now starts on the address it last had (HAProxy's init-addr last).
    const known = this.lastAddresses(this.table, new Map(Object.entries(this.savedAddresses)), `starting on the address ${file} kept; retrying`);
    this.table = this.configTable = known.table;
    this.staleNames = known.filled;
    if (isEmptyState(state)) return [];
    const r = applyOperatorState(this.table, state);
    this.table = r.table;
    this.logStateApplied(file, r.applied, r.skipped);
    return r.draining;
  }

  /**
   * Without `[global.dns]`: `table` with each backend name that did not resolve given the address `known`
   * has for it (said once per name in the log); the names so filled run on it and are retried.
   */
  private lastAddresses(table: RoutingTable, known: ReadonlyMap<string, string>, detail: string): { table: RoutingTable; filled: Map<string, string> } {
    if (table.global.dns) return { table, filled: new Map() };
    const r = withKnownAddresses(table, known);
    for (const [name, why] of r.filled) this.log.log('warn', 'resolve-last', { name, error: why, address: known.get(name), detail });
    return r;
  }

  private logStateApplied(source: string, applied: readonly string[], skipped: readonly string[]): void {
    for (const a of applied) this.log.log('info', 'operator-state', { from: source, applied: a });
    for (const s of skipped) this.log.log('warn', 'operator-state', { from: source, skipped: s });
  }

  /** Backends an operator drained, as slots of the running table. */
  private drainingKeys(): BackendKey[] {
    const out: BackendKey[] = [];
    for (const l of this.listeners.values()) {
      l.state.groups.forEach((g, gi) => g.backends.forEach((b, index) => b.draining && out.push({ listener: l.entry.name, group: gi, index })));
    }
    return out;
  }

  private setDraining(keys: readonly BackendKey[]): void {
    const now = Date.now();
    for (const k of keys) this.backendState(k)?.setDraining(true, now);
  }

  /** After an operator change: the state file gets the operator's changes (atomically), if there is one. */
  private persistState(): void {
    const file = this.table.global.stateFile;
    if (!file) return;
    try {
      const addresses = Object.fromEntries(resolvedNames(this.table));
      const state = operatorState(this.configTable, this.table, { draining: this.drainingKeys() });
      writeStateFile(file, Object.keys(addresses).length > 0 ? { ...state, addresses } : state);
      this.savedAddresses = addresses;
    } catch (err) {
      this.log.log('error', 'state-file', { file, error: (err as Error).message });
    }
  }

  /** Where each new or moved listener of `table` will be bound (checked alone first: see ports.ts). */
  private async probe(table: RoutingTable, current: ReadonlyMap<string, ListenerView>): Promise<Map<string, { address: string; port: number }>> {
    const out = new Map<string, { address: string; port: number }>();
    const heldPorts = new Set([...current.values()].map((l) => l.bound.port));
    for (const entry of table.listeners) {
      const have = current.get(entry.name);
      if (have && sameEndpoint(have.entry, entry)) {
        out.set(entry.name, have.bound);
        continue;
      }
      // A port this process already listens on (a listener moving between addresses of the same port)
      // cannot be bound alone: the workers' SO_REUSEPORT bind decides.
      if (entry.listen.port !== 0 && heldPorts.has(entry.listen.port)) {
        out.set(entry.name, { address: entry.listen.host ?? '::', port: entry.listen.port });
        continue;
      }
      out.set(entry.name, await checkListen(entry));
    }
    return out;
  }

  private install(table: RoutingTable, map: SlotMap, bound: ReadonlyMap<string, { address: string; port: number }>): void {
    const next = new Map<string, ListenerView>();
    table.listeners.forEach((entry, i) => {
      const prev = this.listeners.get(entry.name);
      const state = new ListenerState(this.shared, map.listeners[i]!, -1, prev?.state ?? null);
      next.set(entry.name, new ListenerView(entry, state, bound.get(entry.name)!));
    });
    this.listeners.clear();
    for (const [k, v] of next) this.listeners.set(k, v);
    this.table = table;
    this.slotMap = map;
    this.setMaxconn(table);
    this.log.format = table.global.logFormat;
    this.log.level = table.global.logLevel;
  }

  /** Swaps in a new table (one change at a time). On any failure the old table keeps running. */
  apply(table: RoutingTable, renamed?: ReadonlyMap<string, string>): Promise<void> {
    return this.exclusive(async () => {
      await this.applyNow(table, renamed);
    });
  }

  /**
   * Every part that can fail to set up (the workers' new sockets, the control port's and the HTTP face's
   * new addresses) is staged first, and a failure there refuses the change with nothing switched. Then
   * the workers commit (all, or all back: WorkerPool.commit), and only then do the faces switch.
   */
  private async applyNow(table: RoutingTable, renamed?: ReadonlyMap<string, string>): Promise<CommitReport> {
    if (this.stopping) throw new Error('lb is stopping');
    checkTableLimits(table, this.tableLimits);
    const plan = this.slots.plan(table, renamed);
    let control: ControlServer | null = null;
    let http: StagedFace | null = null;
    let report: CommitReport;
    let bound: Map<string, { address: string; port: number }>;
    const after = table.control;
    try {
      bound = await this.probe(table, this.listeners);
      // The control port first: a new address is bound before anything switches.
      const before = this.table.control;
      const sameControl = before && after && before.socket === after.socket && before.listen?.host === after.listen?.host && before.listen?.port === after.listen?.port;
      if (after && !(this.control && sameControl)) {
        control = new ControlServer(after, this, this.log);
        await control.start({ staged: true });
      }
      http = await stageHttp(this.http, table.control, this.httpTarget, this.log);
      const next = { table, slots: plan.map, ports: portsOf(bound) };
      await this.pool.stage(next);
      report = await this.pool.commit(next);
    } catch (err) {
      plan.rollback();
      await control?.close();
      await http?.abort();
      throw err;
    }
    // Committed everywhere: from here on nothing refuses the change.
    plan.commit();
    this.install(table, plan.map, bound);
    if (control || !after) {
      const old = this.control;
      this.control = control;
      try {
        control?.publish();
      } catch (err) {
        this.log.log('error', 'control-error', { error: `control socket: ${(err as Error).message}` });
      }
      old?.retire();
    } else this.control?.update(after);
    this.http = await http.commit();
    this.syncHealth();
    this.sampleRates(true);
    this.serveQueues();
    return report;
  }

  // --- ControlTarget: what the control port reads and changes -------------------------------------

  listenerViews() {
    return [...this.listeners.values()].map((l) => ({ entry: l.entry, state: l.state, address: formatHostPort(l.bound.address, l.bound.port) }));
  }

  listenerPath(entry: ListenerEntry): string {
    return listenerPath(entry, { splice: this.table.global.splice, spliceOk: this.pool.splice, nativeConnectOk: this.pool.nativeConnect, nativeAcceptOk: this.pool.nativeAccept });
  }

  processInfo(): ProcessInfo {
    const s = this.pool.splice;
    const splice = this.table.global.splice === 'off' ? 'off (splice = "off")' : s.ok ? 'on' : `off (${s.reason})`;
    return {
      workers: this.pool.threadIds().length,
      restarts: this.pool.restarts,
      splice,
      portCheck: describePortCheck(portCheck()),
      conns: this.shared.connFigures(),
      config: { generation: this.pool.generation, workerGenerations: this.pool.generations(), ...this.reloadFigures },
    };
  }

  snapshot(): Snapshot {
    return takeSnapshot(this, this.version);
  }

  refresh(): Promise<void> {
    return this.pool.publish();
  }

  backendState(ref: BackendRef): BackendState | undefined {
    return this.listeners.get(ref.listener)?.state.groups[ref.group]?.backends[ref.index];
  }

  /**
   * Swaps in an edited table. The edit was made from the table running when the command started: if a
   * reload switched tables meanwhile, the edit is refused rather than undoing the reload.
   */
  applyEdit(table: RoutingTable, carry?: { ref: BackendRef; state: BackendState }): Promise<void> {
    const base = this.table;
    return this.exclusive(async () => {
      if (this.table !== base) throw new Error('the configuration changed while the command ran (a reload): try again');
      let renamed: Map<string, string> | undefined;
      if (carry) {
        // `assign`: the channel keeps its counters at its new address, but not its health.
        const ref = carry.ref;
        const oldEntry = base.listeners.find((l) => l.name === ref.listener)!.groups[ref.group]!.backends[ref.index]!;
        const newEntry = table.listeners.find((l) => l.name === ref.listener)!.groups[ref.group]!.backends[ref.index]!;
        const ordinal = (t: RoutingTable, key: string): number =>
          t.listeners.find((l) => l.name === ref.listener)!.groups[ref.group]!.backends.slice(0, ref.index).filter((b) => b.key === key).length;
        renamed = new Map([[backendId(ref.listener, ref.group, newEntry.key, ordinal(table, newEntry.key)), backendId(ref.listener, ref.group, oldEntry.key, ordinal(base, oldEntry.key))]]);
      }
      await this.applyNow(table, renamed);
      if (carry) this.backendState(carry.ref)?.resetHealth(Date.now());
      this.persistState();
    });
  }

  /**
   * DNS discovery (src/discovery/): the config's table re-expanded with the addresses its names have
   * now, swapped in like a reload (one table change at a time; operator changes re-applied; backends
   * whose address stays keep their slots; one that disappears is drained, its connections go on).
   */
  applyDiscovered(expand: (configured: RoutingTable) => RoutingTable): Promise<void> {
    return this.exclusive(async () => {
      const configured = expand(this.configTable);
      if (configured === this.configTable) return;
      const overlay = operatorState(this.configTable, this.table, { draining: this.drainingKeys() });
      const next = isEmptyState(overlay) ? { table: configured, draining: [] } : applyOperatorState(configured, overlay);
      await this.applyNow(next.table);
      this.configTable = configured;
      this.setDraining(next.draining);
    });
  }

  /** NameRetry: a name resolved (its table is swapped in already): the next start knows its address. */
  resolved(name: string): void {
    this.staleNames.delete(name);
    this.persistState();
  }

  /** An operator change of runtime state (enable, drain): queued clients may now get a slot. */
  stateChanged(): void {
    this.serveQueues();
    this.persistState();
  }

  async resolveHost(host: string): Promise<string> {
    return isIP(host) ? host : (await lookup(host)).address;
  }

  save(file: string | undefined): string {
    let target = file ?? this.configFile;
    if (!target) throw new Error('started from the command line: name a FILE to save to');
    if (file !== undefined) {
      // A control client names the file: only inside the directories this lb already writes to.
      const dirs = [this.configFile, this.table.global.stateFile].filter((f): f is string => !!f).map((f) => dirname(f));
      if (process.env.STATE_DIRECTORY) dirs.push(...process.env.STATE_DIRECTORY.split(':'));
      const ok = saveTargetAllowed(file, dirs);
      if (!ok.ok) throw new Error(`save refused: ${ok.reason}`);
      target = ok.path;
    }
    saveTable(this.table, target, this.version);
    this.log.log('info', 'saved', { file: target });
    return target;
  }

  requestStop(reason: string): void {
    this.onStopRequest?.(reason);
  }

  /**
   * SIGHUP: re-read the file; on any error keep running the old table and report why. Reloads run one
   * at a time; requests made while one waits join it, so the file read last is the table that runs.
   */
  reload(): Promise<ReloadResult> {
    if (this.queuedReload) return this.queuedReload;
    const run = this.exclusive(async () => {
      this.queuedReload = null;
      const r = await this.reloadNow();
      this.recordReload(r);
      return { ...r, generation: this.pool.generation };
    });
    this.queuedReload = run;
    return run;
  }

  private recordReload(r: Omit<ReloadResult, 'generation'>): void {
    const at = Date.now();
    const f = this.reloadFigures;
    const error = r.ok ? null : (r.error ?? (r.diagnostics.length > 0 ? `${r.diagnostics[0]!.message}${r.diagnostics.length > 1 ? ` (and ${r.diagnostics.length - 1} more)` : ''}` : 'failed'));
    this.reloadFigures = {
      reloads: f.reloads + 1,
      reloadFailures: f.reloadFailures + (r.ok ? 0 : 1),
      lastReload: { ok: r.ok, at, error },
      lastSuccessAt: r.ok ? at : f.lastSuccessAt,
    };
  }

  private async reloadNow(): Promise<Omit<ReloadResult, 'generation'>> {
    if (!this.configFile) {
      const error = 'started from the command line: there is no file to reload';
      this.log.log('warn', 'reload-failed', { code: Code.RELOAD_FAILED, error });
      return { ok: false, diagnostics: [], error };
    }
    // Off this thread, within a time and memory budget: a bad file costs a failed reload, never an outage.
    const result = await loadConfigIsolated(this.configFile, { resolve: 'error' });
    if (!result.ok) {
      this.log.log('error', 'reload-failed', {
        code: Code.RELOAD_FAILED,
        file: this.configFile,
        errors: result.diagnostics.length,
        detail: 'the running configuration is unchanged',
      });
      return { ok: false, diagnostics: result.diagnostics };
    }
    // Names expanded with what discovery knows now; operator changes survive the reload, re-applied to the
    // new file's table where their backends remain. A name the reload could not resolve keeps the address
    // the running table has for it (and is retried), rather than taking its backends down.
    const known = this.lastAddresses(result.table, resolvedNames(this.table), 'the reload keeps the address it had; retrying');
    const configured = this.discovery?.expandNow(known.table) ?? known.table;
    const overlay = operatorState(this.configTable, this.table, { draining: this.drainingKeys() });
    const next = isEmptyState(overlay) ? { table: configured, applied: [], skipped: [], draining: [] } : applyOperatorState(configured, overlay);
    let report: CommitReport;
    try {
      report = await this.applyNow(next.table);
      this.configTable = configured;
      this.discovery?.sync();
      this.staleNames = known.filled;
      this.nameRetry.sync(this.staleNames);
      this.setDraining(next.draining);
      this.logStateApplied('reload', next.applied, next.skipped);
    } catch (err) {
      const error = (err as Error).message;
      this.log.log('error', 'reload-failed', { code: Code.RELOAD_FAILED, file: this.configFile, error, generation: this.pool.generation, detail: 'the running configuration is unchanged' });
      return { ok: false, diagnostics: [], error };
    }
    if (result.table.global.workers !== this.table.global.workers) {
      this.log.log('warn', 'workers', { detail: 'a changed [global] workers takes effect at the next restart', workers: this.workers });
    }
    const restarted = report.restarted.length > 0 ? report.restarted.join(',') : undefined;
    this.log.log('info', 'reloaded', { file: this.configFile, listeners: this.table.listeners.length, generation: this.pool.generation, restarted_workers: restarted });
    return { ok: true, diagnostics: result.warnings, restarted: report.restarted };
  }

  /** Open connections over every worker. */
  private openConnections(): number {
    let n = 0;
    for (const l of this.listeners.values()) n += l.state.cur;
    return n;
  }

  /**
   * Graceful stop: stop accepting everywhere, let open connections finish for up to the drain timeout,
   * then close what is left. Idempotent: a second signal waits for the same stop.
   */
  shutdown(drainMs = this.table.global.drainTimeoutMs): Promise<void> {
    this.stopping ??= (async () => {
      await this.chain; // a table change in progress finishes first
      this.health.stop();
      this.nameRetry.stop();
      if (this.rateTimer) clearInterval(this.rateTimer);
      const open = await this.pool.stopAccepting().catch(() => this.openConnections());
      if (open > 0 && drainMs > 0) {
        this.log.log('info', 'draining', { connections: open, timeout_ms: drainMs });
        let timer: NodeJS.Timeout | undefined;
        const timedOut = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, drainMs);
        });
        await Promise.race([this.pool.idle().catch(() => undefined), timedOut]);
        clearTimeout(timer);
      }
      const left = this.openConnections();
      if (left > 0 && drainMs > 0) this.log.log('warn', 'drain-timeout', { closing: left });
      await this.pool.closeAll().catch(() => undefined);
      await this.pool.terminate();
      await this.control?.close();
      await this.http?.close();
    })();
    return this.stopping;
  }

  /**
   * Test builds only (LB_TEST_HOOKS=1): makes a worker die (now, or at the next commit before it
   * confirms), to test its replacement; `restartFails`: its replacement's start fails too.
   */
  crashWorker(region: number, at: 'now' | 'commit' = 'now', restartFails = false): Promise<void> {
    return this.pool.crash(region, at, restartFails);
  }

  /** Where each listener is actually bound ("host:port"), for the start-up line and tests. */
  boundAddresses(): { name: string; address: string; port: number }[] {
    return [...this.listeners.values()].map((l) => ({ name: l.entry.name, address: formatHostPort(l.bound.address, l.bound.port), port: l.bound.port }));
  }

  port(listener: string): number {
    return this.listeners.get(listener)?.bound.port ?? 0;
  }
}

function portsOf(bound: ReadonlyMap<string, { port: number }>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, b] of bound) out[name] = b.port;
  return out;
}

/** Whether two name → address records say the same. */
function sameRecord(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}
