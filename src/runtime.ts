// The running balancer: the current routing table, its listeners and their state.
//
// The table is swapped, never edited: `apply` binds what a new table adds, stops what it removes,
// points the kept listeners at their new entries, and assigns the new table in one step. Connections
// that are running keep the entry they started with.

import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { BackendState } from './balance/state.ts';
import type { BackendRef } from './config/edit.ts';
import { loadConfigFile } from './config/pipeline.ts';
import { saveTable } from './config/save.ts';
import type { Diagnostic } from './config/diagnostics.ts';
import type { ListenerEntry, RoutingTable } from './config/table.ts';
import { formatHostPort } from './config/values.ts';
import { Code } from './errors.ts';
import { createLogger, type Logger } from './log.ts';
import { ListenerRuntime } from './proxy/listener.ts';
import type { ControlTarget } from './control/commands.ts';
import { ControlServer } from './control/server.ts';
import { HealthMonitor } from './health/monitor.ts';
import { takeSnapshot, type Snapshot } from './stats/snapshot.ts';
import { VERSION } from './version.ts';

export interface RuntimeOptions {
  /** The file SIGHUP and `reload` re-read; null when started from balance's command line. */
  configFile?: string | null;
  log?: Logger;
}

export class Runtime implements ControlTarget {
  table: RoutingTable;
  readonly version = VERSION;
  control: ControlServer | null = null;
  /** Set by whoever owns the process (the CLI): the `kill` command asks it to stop. */
  onStopRequest: ((reason: string) => void) | null = null;
  readonly configFile: string | null;
  readonly log: Logger;
  readonly startedAt = Date.now();
  readonly listeners = new Map<string, ListenerRuntime>();
  private stopping: Promise<void> | null = null;
  private readonly health: HealthMonitor;

  constructor(table: RoutingTable, opts: RuntimeOptions = {}) {
    this.table = table;
    this.configFile = opts.configFile ?? null;
    this.log = opts.log ?? createLogger(table.global.logFormat);
    this.health = new HealthMonitor(this.log, () => this.serveQueues());
  }

  /** Slots may have freed (health, an edit): queued clients get them. */
  serveQueues(): void {
    for (const l of this.listeners.values()) l.serveQueue();
  }

  private syncHealth(): void {
    this.health.sync([...this.listeners.values()].map((l) => ({ entry: l.entry, groups: l.state.groups })));
  }

  /** Binds every listener; if one fails, closes those already bound and rejects (nothing half-started). */
  async start(): Promise<void> {
    try {
      for (const entry of this.table.listeners) {
        const lr = new ListenerRuntime(entry, this.log, this.table.global.accessLog);
        this.listeners.set(entry.name, lr);
        await lr.listen();
      }
      if (this.table.control) {
        this.control = new ControlServer(this.table.control, this, this.log);
        await this.control.start();
      }
      this.syncHealth();
    } catch (err) {
      await Promise.all([...this.listeners.values()].map((l) => l.dispose()));
      this.listeners.clear();
      this.control = null;
      throw err;
    }
  }

  /** Swaps in a new table. On a bind failure the listeners bound so far are undone and it rejects. */
  async apply(table: RoutingTable): Promise<void> {
    this.log.format = table.global.logFormat;
    const added: ListenerRuntime[] = [];
    try {
      for (const entry of table.listeners) {
        const lr = this.listeners.get(entry.name);
        if (!lr) {
          const fresh = new ListenerRuntime(entry, this.log, table.global.accessLog);
          await fresh.listen();
          added.push(fresh);
        } else if (!sameEndpoint(lr.entry, entry)) {
          await lr.rebind(entry, table.global.accessLog);
        }
      }
    } catch (err) {
      await Promise.all(added.map((l) => l.dispose()));
      throw err;
    }
    const wanted = new Set(table.listeners.map((l) => l.name));
    for (const [name, lr] of this.listeners) {
      if (!wanted.has(name)) {
        await lr.dispose(); // stops accepting; its open connections run to their end
        this.listeners.delete(name);
      }
    }
    for (const fresh of added) this.listeners.set(fresh.entry.name, fresh);
    for (const entry of table.listeners) {
      const lr = this.listeners.get(entry.name)!;
      if (lr.entry !== entry) lr.update(entry, table.global.accessLog);
    }
    const oldControl = this.table.control;
    this.table = table;
    this.syncHealth();
    this.serveQueues();
    await this.applyControl(oldControl, table.control);
  }

  /** The control port follows the table: rebound when its addresses change, else updated in place. */
  private async applyControl(before: RoutingTable['control'], after: RoutingTable['control']): Promise<void> {
    const sameAddress =
      before && after && before.socket === after.socket &&
      before.listen?.host === after.listen?.host && before.listen?.port === after.listen?.port;
    if (this.control && after && sameAddress) {
      this.control.update(after);
      return;
    }
    if (this.control) await this.control.close();
    this.control = null;
    if (after) {
      const control = new ControlServer(after, this, this.log);
      try {
        await control.start();
        this.control = control;
      } catch (err) {
        this.log.log('error', 'control-error', { error: (err as Error).message });
      }
    }
  }

  // --- ControlTarget: what the control port reads and changes -------------------------------------

  listenerViews() {
    return [...this.listeners.values()].map((l) => {
      const a = l.address();
      return { entry: l.entry, state: l.state, address: a ? formatHostPort(a.host, a.port) : '-' };
    });
  }

  snapshot(): Snapshot {
    return takeSnapshot(this, this.version);
  }

  backendState(ref: BackendRef): BackendState | undefined {
    return this.listeners.get(ref.listener)?.state.groups[ref.group]?.backends[ref.index];
  }

  async applyEdit(table: RoutingTable, carry?: { ref: BackendRef; state: BackendState }): Promise<void> {
    await this.apply(table);
    const group = carry && this.listeners.get(carry.ref.listener)?.state.groups[carry.ref.group];
    if (carry && group) {
      group.backends[carry.ref.index] = carry.state;
      this.syncHealth();
    }
  }

  async resolveHost(host: string): Promise<string> {
    return isIP(host) ? host : (await lookup(host)).address;
  }

  save(file: string | undefined): string {
    const target = file ?? this.configFile;
    if (!target) throw new Error('started from the command line: name a FILE to save to');
    saveTable(this.table, target, this.version);
    this.log.log('info', 'saved', { file: target });
    return target;
  }

  requestStop(reason: string): void {
    this.onStopRequest?.(reason);
  }

  /** SIGHUP: re-read the file; on any error keep running the old table and report why. */
  async reload(): Promise<{ ok: boolean; diagnostics: Diagnostic[]; error?: string }> {
    if (!this.configFile) {
      const error = 'started from the command line: there is no file to reload';
      this.log.log('warn', 'reload-failed', { code: Code.RELOAD_FAILED, error });
      return { ok: false, diagnostics: [], error };
    }
    const result = await loadConfigFile(this.configFile, { resolve: 'error' });
    if (!result.ok) {
      this.log.log('error', 'reload-failed', {
        code: Code.RELOAD_FAILED,
        file: this.configFile,
        errors: result.diagnostics.length,
        detail: 'the running configuration is unchanged',
      });
      return { ok: false, diagnostics: result.diagnostics };
    }
    try {
      await this.apply(result.table);
    } catch (err) {
      this.log.log('error', 'reload-failed', { code: Code.RELOAD_FAILED, file: this.configFile, error: (err as Error).message });
      return { ok: false, diagnostics: [], error: (err as Error).message };
    }
    this.log.log('info', 'reloaded', { file: this.configFile, listeners: this.table.listeners.length });
    return { ok: true, diagnostics: result.warnings };
  }

  /**
   * Graceful stop: stop accepting everywhere, let open connections finish for up to the drain timeout,
   * then close what is left. Idempotent: a second signal waits for the same stop.
   */
  shutdown(drainMs = this.table.global.drainTimeoutMs): Promise<void> {
    this.stopping ??= (async () => {
      this.health.stop();
      const all = [...this.listeners.values()];
      await Promise.all(all.map((l) => l.stopAccepting()));
      const open = all.reduce((n, l) => n + l.connections, 0);
      if (open > 0) {
        this.log.log('info', 'draining', { connections: open, timeout_ms: drainMs });
        let timer: NodeJS.Timeout | undefined;
        const timedOut = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, drainMs);
        });
        await Promise.race([Promise.all(all.map((l) => l.idle())), timedOut]);
        clearTimeout(timer);
        const left = all.reduce((n, l) => n + l.connections, 0);
        if (left > 0) {
          this.log.log('warn', 'drain-timeout', { closing: left });
          for (const l of all) l.closeAll();
          await Promise.all(all.map((l) => l.idle()));
        }
      }
      await Promise.all(all.map((l) => l.dispose()));
      await this.control?.close();
    })();
    return this.stopping;
  }

  /** Where each listener is actually bound ("host:port"), for the start-up line and tests. */
  boundAddresses(): { name: string; address: string; port: number }[] {
    return [...this.listeners.values()].map((l) => {
      const a = l.address();
      return { name: l.entry.name, address: a ? formatHostPort(a.host, a.port) : '-', port: a?.port ?? 0 };
    });
  }

  port(listener: string): number {
    return this.listeners.get(listener)?.address()?.port ?? 0;
  }
}

function sameEndpoint(a: ListenerEntry, b: ListenerEntry): boolean {
  return a.listen.host === b.listen.host && a.listen.port === b.listen.port;
}
