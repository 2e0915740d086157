// The data plane of one worker thread: its listeners (every configured listener, bound with
// SO_REUSEPORT beside the other workers'), their relays, and the table they route by. It holds no
// state of its own that another thread needs: slots, health and counters are in the shared memory.

import type { Choice } from '../balance/select.ts';
import type { ListenerEntry, RoutingTable } from '../config/table.ts';
import type { CheckResult } from '../health/state.ts';
import type { Logger } from '../log.ts';
import { LogBurst } from '../log-burst.ts';
import { ListenerRuntime, type ListenerContext } from '../proxy/listener.ts';
import type { SlotMap } from '../shared/slots.ts';
import type { SharedState } from '../shared/state.ts';
import { acceptsNatively } from '../proxy/path.ts';
import { nativeAcceptAvailable, spliceAttachLimit, spliceAvailable, spliceFlush } from '../proxy/splice.ts';
import { wakeLimited } from '../proxy/conn-limit.ts';
import { Code } from '../errors.ts';

/** How often open connections' bytes are published to the shared counters. */
export const PUBLISH_MS = 200;

/** Local resource errors are logged once per burst: at most once per this many ms. */
const LOCAL_ERROR_LOG_MS = 5000;

export interface DataPlaneHooks {
  /** The reason text of a backend's last failure (numbers are shared, text is not). */
  failure(slot: number, reason: string): void;
  /** A health transition caused by traffic. */
  healthChanged(): void;
}

interface Staging {
  table: RoutingTable;
  slots: SlotMap;
  fresh: Map<string, ListenerRuntime>;
  moved: Set<string>;
}

export class DataPlane implements ListenerContext {
  readonly shared: SharedState;
  readonly region: number;
  readonly log: Logger;
  private readonly regions: number;
  private readonly reusePort: boolean;
  private readonly hooks: DataPlaneHooks;
  table: RoutingTable;
  readonly listeners = new Map<string, ListenerRuntime>();
  private staging: Staging | null = null;
  private publishTimer: NodeJS.Timeout | null = null;
  private readonly localErrors = new LogBurst(LOCAL_ERROR_LOG_MS);
  private readonly maxconnRefusals = new LogBurst(LOCAL_ERROR_LOG_MS);
  /** Whether this worker relays with splice(2): `[global] splice` and whether the addon loads here. */
  splice = false;

  constructor(opts: { shared: SharedState; region: number; regions: number; reusePort: boolean; log: Logger; table: RoutingTable; hooks: DataPlaneHooks }) {
    this.shared = opts.shared;
    this.region = opts.region;
    this.regions = opts.regions;
    this.reusePort = opts.reusePort;
    this.log = opts.log;
    this.table = opts.table;
    this.hooks = opts.hooks;
    // The addon's accepts count against maxconn (and pause at it) from its first listener on.
    if (nativeAcceptAvailable().ok) spliceAttachLimit(this.shared.conns, this.region);
  }

  /** A client Node accepted takes a place under maxconn; false: lb is at it, and the client is closed. */
  admitClient(listener: ListenerEntry): boolean {
    if (this.shared.admitConn(this.region)) return true;
    const count = this.maxconnRefusals.hit();
    if (count > 0) {
      this.log.log('warn', 'maxconn', {
        code: Code.MAXCONN,
        listener: listener.name,
        maxconn: this.shared.connFigures().max,
        count,
        detail: 'clients closed at once: this listener is accepted by Node, which cannot stop accepting (see show info Path)',
      });
    }
    return false;
  }

  /** A client admitClient() let in has ended: its place is free (workers paused at maxconn take it). */
  clientReleased(): void {
    if (this.shared.releaseConn(this.region)) wakeLimited(this.shared);
  }

  /** Unique across workers and their replacements: ids interleave by region (n × workers + region + 1). */
  nextId(): number {
    return (this.shared.nextConnSeq(this.region) - 1) * this.regions + this.region + 1;
  }

  trafficCheck(listener: ListenerEntry, choice: Choice, result: CheckResult): void {
    this.hooks.failure(choice.state.slot, result.detail);
    const h = choice.entry.health;
    if (!h) return;
    const change = this.shared.recordCheck(choice.state.slot, result, h.rise, h.fall, Date.now());
    if (!change) return;
    this.log.log(change.to === 'UP' ? 'info' : 'warn', 'health', {
      listener: listener.name,
      group: choice.group,
      backend: choice.entry.key,
      from: change.from,
      to: change.to,
      status: result.status,
      reason: result.detail || undefined,
      check_ms: Math.round(result.durationMs),
      by: 'traffic',
    });
    this.hooks.healthChanged();
  }

  localError(code: string): void {
    const count = this.localErrors.hit();
    if (count === 0) return;
    this.log.log('error', 'local-resource-error', {
      code,
      count,
      detail: 'out of file descriptors or memory on this host: the backend is not marked down; raise LimitNOFILE (ulimit -n)',
    });
  }

  /** Binds what a new table adds or moves, without routing by it yet. */
  async stage(table: RoutingTable, slots: SlotMap, ports: Readonly<Record<string, number>>): Promise<void> {
    await this.abort();
    this.shared.remap(); // the main thread grew the shared memory for this table's new slots, if it needed any
    const st: Staging = { table, slots, fresh: new Map(), moved: new Set() };
    this.staging = st;
    try {
      for (const [i, entry] of table.listeners.entries()) {
        const port = ports[entry.name] ?? entry.listen.port;
        const have = this.listeners.get(entry.name);
        // A listener whose clients move between Node and the addon (a packet dump turned on, a send_proxy
        // group removed...) gets a new socket; every other kept address keeps its socket and its backlog.
        const native = acceptsNatively(entry, table.global.splice, nativeAcceptAvailable());
        if (have && sameEndpoint(have.entry, entry) && have.nativeAsked === native) continue;
        const lr = have ?? new ListenerRuntime(entry, slots.listeners[i]!, this, table.global.accessLog);
        await lr.stage(entry, port, this.reusePort, native);
        if (have) st.moved.add(entry.name);
        else st.fresh.set(entry.name, lr);
      }
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  /** Routes by the staged table: new listeners accept, moved ones switch sockets, removed ones stop. */
  async commit(): Promise<void> {
    const st = this.staging;
    if (!st) return;
    this.staging = null;
    const { table, slots } = st;
    this.splice = table.global.splice === 'auto' && spliceAvailable().ok;
    const wanted = new Set(table.listeners.map((l) => l.name));
    for (const [name, lr] of this.listeners) {
      if (!wanted.has(name)) {
        this.listeners.delete(name);
        void lr.dispose(); // stops accepting; its open connections run to their end
      }
    }
    for (const [i, entry] of table.listeners.entries()) {
      const fresh = st.fresh.get(entry.name);
      if (fresh) {
        await fresh.commitStaged();
        this.listeners.set(entry.name, fresh);
        fresh.update(entry, slots.listeners[i]!, table.global.accessLog);
        continue;
      }
      const lr = this.listeners.get(entry.name)!;
      if (st.moved.has(entry.name)) await lr.commitStaged();
      lr.update(entry, slots.listeners[i]!, table.global.accessLog);
    }
    this.table = table;
    this.log.format = table.global.logFormat;
    this.log.level = table.global.logLevel;
    this.startPublishing();
  }

  async abort(): Promise<void> {
    const st = this.staging;
    this.staging = null;
    if (!st) return;
    for (const lr of st.fresh.values()) await lr.dispose();
    for (const name of st.moved) await this.listeners.get(name)?.unstage();
  }

  private startPublishing(): void {
    if (this.publishTimer) return;
    this.publishTimer = setInterval(() => this.publish(), PUBLISH_MS);
    this.publishTimer.unref();
  }

  /** Bytes of open connections to the shared counters, so every reader sees transfers while they run. */
  publish(): void {
    spliceFlush(); // connections the addon connected count from their first byte
    for (const lr of this.listeners.values()) lr.state.publishLive();
  }

  async stopAccepting(): Promise<void> {
    await this.abort();
    await Promise.all([...this.listeners.values()].map((l) => l.stopAccepting()));
  }

  get connections(): number {
    let n = 0;
    for (const l of this.listeners.values()) n += l.connections;
    return n;
  }

  idle(): Promise<void> {
    return Promise.all([...this.listeners.values()].map((l) => l.idle())).then(() => undefined);
  }

  /**
   * Closes every open connection; those whose sockets do not report their close within `graceMs`
   * are ended anyway, so a shutdown always ends.
   */
  async closeAll(graceMs: number): Promise<void> {
    for (const l of this.listeners.values()) l.closeAll();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, graceMs);
    });
    await Promise.race([this.idle(), late]);
    clearTimeout(timer);
    for (const l of this.listeners.values()) l.endAll();
  }

  async dispose(): Promise<void> {
    if (this.publishTimer) clearInterval(this.publishTimer);
    this.publishTimer = null;
    this.publish();
    await Promise.all([...this.listeners.values()].map((l) => l.dispose()));
  }
}

/** The same configured address (a kept `port = 0` listener keeps the port it got). */
export function sameEndpoint(a: ListenerEntry, b: ListenerEntry): boolean {
  return a.listen.host === b.listen.host && a.listen.port === b.listen.port;
}
