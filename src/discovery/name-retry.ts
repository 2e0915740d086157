// Backend names that had no address when the running table was made (start, reload), without
// `[global.dns]`: such a backend runs down, with no traffic (BackendEntry.resolveError), instead of
// stopping lb from starting. Each name is looked up again as at start (the system's resolver: /etc/hosts,
// then DNS) with back-off, 1 s doubling to 60 s, until it resolves; then the table is made again with the
// address and swapped in like a reload (the backend keeps its slot and counters: its key is the configured
// `host:port`). The log says each change: a different failure, then the address. HAProxy's
// `init-addr last,libc,none` is the model; with `[global.dns]`, discovery follows every name instead.
//
// A name that started on the address the state file kept for it (its `last` address: the name did not
// resolve at start) is retried the same way, so that a moved backend is found again.

import { lookupOne } from '../config/resolve.ts';
import { deepFreeze, type RoutingTable } from '../config/table.ts';
import type { Logger } from '../log.ts';

export const RETRY_FIRST_MS = 1000;
export const RETRY_MAX_MS = 60_000;

/** What the retries drive: the Runtime. */
export interface NameRetryTarget {
  readonly table: RoutingTable;
  /** Swaps in `fill(config table)`, serialized with reloads and edits (as DNS discovery's answers). */
  applyDiscovered(fill: (configured: RoutingTable) => RoutingTable): Promise<void>;
  /** A name resolved: its address is kept for the next start (the state file). */
  resolved(name: string): void;
}

/** The names of `table`'s backends that have no address now, with why. */
export function unresolvedNames(table: RoutingTable): Map<string, string> {
  const out = new Map<string, string>();
  for (const l of table.listeners) for (const g of l.groups) for (const b of g.backends) if (b.resolveError !== undefined) out.set(b.host, b.resolveError);
  return out;
}

/** Every resolved backend name of `table` and its address (what the state file keeps as `last`). */
export function resolvedNames(table: RoutingTable): Map<string, string> {
  const out = new Map<string, string>();
  for (const l of table.listeners) {
    for (const g of l.groups) for (const b of g.backends) if (b.resolveError === undefined && b.address !== '' && b.address !== b.host && !b.discovered) out.set(b.host, b.address);
  }
  return out;
}

/**
 * `table` with the backends of name `host` given `address` (no longer unresolved); the same table when
 * none of them changes.
 */
export function withAddress(table: RoutingTable, host: string, address: string): RoutingTable {
  let changed = false;
  const listeners = table.listeners.map((l) => ({
    ...l,
    groups: l.groups.map((g) => ({
      ...g,
      backends: g.backends.map((b) => {
        if (b.host !== host || (b.address === address && b.resolveError === undefined)) return b;
        changed = true;
        const { resolveError: _was, ...rest } = b;
        return { ...rest, address };
      }),
    })),
  }));
  return changed ? deepFreeze({ ...table, listeners }) : table;
}

/**
 * `table` with each unresolved backend whose name `known` has an address given it (a reload: the address
 * the running table had; a start: the state file's). Returns the table and the names so filled.
 */
export function withKnownAddresses(table: RoutingTable, known: ReadonlyMap<string, string>): { table: RoutingTable; filled: Map<string, string> } {
  const filled = new Map<string, string>();
  let out = table;
  for (const [name, why] of unresolvedNames(table)) {
    const address = known.get(name);
    if (address === undefined) continue;
    out = withAddress(out, name, address);
    filled.set(name, why);
  }
  return { table: out, filled };
}

interface Pending {
  delayMs: number;
  timer: NodeJS.Timeout | null;
  /** The last failure said (the start's diagnostic, or a retry's), so that a change of it is logged once. */
  said: string;
  /** Looked up again although it has an address (a `last` one): resolving it ends the retries. */
  stale: boolean;
}

export class NameRetry {
  private readonly target: NameRetryTarget;
  private readonly log: Logger;
  private readonly lookup: (name: string) => Promise<string | Error>;
  private readonly pending = new Map<string, Pending>();
  private stopped = false;

  constructor(target: NameRetryTarget, log: Logger, lookup: (name: string) => Promise<string | Error> = lookupOne) {
    this.target = target;
    this.log = log;
    this.lookup = lookup;
  }

  /**
   * Follows the running table: its unresolved names are retried (new ones after RETRY_FIRST_MS), names no
   * longer unresolved (a reload resolved or removed them) are dropped. `stale`: names running on a
   * known address that did not resolve when the table was made, with why.
   */
  sync(stale: ReadonlyMap<string, string> = new Map()): void {
    if (this.stopped) return;
    const want = unresolvedNames(this.target.table);
    for (const name of [...this.pending.keys()]) if (!want.has(name) && !stale.has(name)) this.drop(name);
    for (const [name, why] of [...want, ...stale]) {
      if (this.pending.has(name)) continue;
      const p: Pending = { delayMs: RETRY_FIRST_MS, timer: null, said: why, stale: !want.has(name) };
      this.pending.set(name, p);
      this.schedule(name, p);
    }
  }

  /** Names being retried (for tests and `show`). */
  names(): string[] {
    return [...this.pending.keys()].sort();
  }

  stop(): void {
    this.stopped = true;
    for (const name of [...this.pending.keys()]) this.drop(name);
  }

  private drop(name: string): void {
    const p = this.pending.get(name);
    if (p?.timer) clearTimeout(p.timer);
    this.pending.delete(name);
  }

  private schedule(name: string, p: Pending): void {
    p.timer = setTimeout(() => void this.attempt(name, p), p.delayMs);
    p.timer.unref();
  }

  private async attempt(name: string, p: Pending): Promise<void> {
    p.timer = null;
    const r = await this.lookup(name);
    if (this.stopped || this.pending.get(name) !== p) return; // stopped, or a reload dropped it meanwhile
    if (typeof r === 'string') {
      try {
        await this.target.applyDiscovered((configured) => withAddress(configured, name, r));
      } catch (err) {
        this.log.log('error', 'resolve-apply-failed', { name, address: r, error: (err as Error).message, detail: 'retried' });
        this.retry(name, p);
        return;
      }
      this.pending.delete(name);
      this.log.log('info', 'resolved', { name, address: r, detail: 'its backends take traffic now' });
      this.target.resolved(name);
      return;
    }
    const why = (r as NodeJS.ErrnoException).code ?? r.message;
    if (why !== p.said) {
      p.said = why;
      this.log.log('warn', 'resolve-failed', { name, error: why, detail: `its backends stay ${p.stale ? 'on their last address' : 'down'}; retrying` });
    }
    this.retry(name, p);
  }

  private retry(name: string, p: Pending): void {
    p.delayMs = Math.min(p.delayMs * 2, RETRY_MAX_MS);
    this.schedule(name, p);
  }
}
