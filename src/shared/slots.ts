// Slot numbers for the shared state: which part of the shared memory belongs to which listener, group
// and backend of a routing table. Only the main thread assigns them; workers get the map with the table.
//
// A backend keeps its slot (so its counters, connection count and health) while its identity survives a
// reload or an edit: the same listener, group index and host:port (the n-th of equal ones). A slot that
// is given up is reused only once no connection holds it, so a late release can never land on a new
// backend's count.

import type { RoutingTable } from '../config/table.ts';
import { Code } from '../errors.ts';
import type { SharedState, SlotCounts } from './state.ts';

export interface GroupSlots {
  readonly slot: number;
  readonly backends: readonly number[];
}

export interface ListenerSlots {
  readonly slot: number;
  readonly groups: readonly GroupSlots[];
}

/** Parallel to `table.listeners`: the slots of each listener, its groups and their backends. */
export interface SlotMap {
  readonly listeners: readonly ListenerSlots[];
}

export class SlotCapacityError extends Error {
  readonly code = Code.TABLE_LIMIT;
}

class Pool {
  private next = 0;
  private readonly free: number[] = [];
  /** Given up but maybe still held by a connection: reusable once `busy` says no. */
  private retired: number[] = [];
  private readonly kind: keyof SlotCounts;
  private readonly shared: SharedState;
  constructor(shared: SharedState, kind: keyof SlotCounts) {
    this.shared = shared;
    this.kind = kind;
  }
  /** Once a plan: retired slots no connection holds any more become free (one pass, not one a take). */
  sweep(busy: (slot: number) => boolean): void {
    if (this.retired.length === 0) return;
    const still: number[] = [];
    for (const s of this.retired) (busy(s) ? still : this.free).push(s);
    this.retired = still;
  }
  take(): number {
    const s = this.free.pop();
    if (s !== undefined) return s;
    // A new slot: the shared memory grows for it (in place) up to its limit.
    if (!this.shared.reserve(this.kind, this.next + 1)) {
      throw new SlotCapacityError(
        `no free ${this.kind} slot: all ${this.shared.limits[this.kind]} are used by the new table or still held by open connections of earlier tables (retry once they close)`,
      );
    }
    return this.next++;
  }
  retire(slot: number): void {
    this.retired.push(slot);
  }
}

function backendId(listener: string, group: number, key: string, ordinal: number): string {
  return `${listener}\u0000${group}\u0000${key}\u0000${ordinal}`;
}

export class SlotAllocator {
  private readonly shared: SharedState;
  private readonly listenerPool: Pool;
  private readonly groupPool: Pool;
  private readonly backendPool: Pool;
  private listenerIds = new Map<string, number>();
  private groupIds = new Map<string, number>();
  private backendIds = new Map<string, number>();

  constructor(shared: SharedState) {
    this.shared = shared;
    this.listenerPool = new Pool(shared, 'listeners');
    this.groupPool = new Pool(shared, 'groups');
    this.backendPool = new Pool(shared, 'backends');
  }

  /**
   * The slots of a new table: kept identities keep theirs, new ones get fresh (cleared) slots, and
   * identities the table dropped give theirs up once the plan is committed (a rolled-back plan gives
   * its fresh slots back and changes nothing else). `renamed` maps a backend's new identity to its old
   * one (an `assign` keeps the counters of the re-pointed channel). Throws SlotCapacityError, changing
   * nothing, when the table needs more slots than the shared memory has.
   */
  plan(table: RoutingTable, renamed?: ReadonlyMap<string, string>, now = Date.now()): SlotPlan {
    const listenerIds = new Map<string, number>();
    const groupIds = new Map<string, number>();
    const backendIds = new Map<string, number>();
    const fresh: { kind: 'l' | 'g' | 'b'; slot: number }[] = [];
    const take = (pool: Pool, kind: 'l' | 'g' | 'b'): number => {
      const slot = pool.take();
      fresh.push({ kind, slot });
      return slot;
    };
    this.listenerPool.sweep((s) => this.shared.listenerCur(s) > 0);
    this.groupPool.sweep(() => false);
    this.backendPool.sweep((s) => this.shared.cur(s) > 0);
    let map: SlotMap;
    try {
      map = {
        listeners: table.listeners.map((l) => {
          const ls = this.listenerIds.get(l.name) ?? take(this.listenerPool, 'l');
          listenerIds.set(l.name, ls);
          return {
            slot: ls,
            groups: l.groups.map((g, gi) => {
              const gid = `${l.name}\u0000${gi}`;
              const gs = this.groupIds.get(gid) ?? take(this.groupPool, 'g');
              groupIds.set(gid, gs);
              const seen = new Map<string, number>();
              return {
                slot: gs,
                backends: g.backends.map((b) => {
                  const n = seen.get(b.key) ?? 0;
                  seen.set(b.key, n + 1);
                  const id = backendId(l.name, gi, b.key, n);
                  const old = renamed?.get(id);
                  const bs = this.backendIds.get(id) ?? (old !== undefined ? this.backendIds.get(old) : undefined) ?? take(this.backendPool, 'b');
                  if (backendIds.has(id)) throw new Error(`duplicate backend identity ${id}`);
                  backendIds.set(id, bs);
                  return bs;
                }),
              };
            }),
          };
        }),
      };
    } catch (err) {
      // Nothing was handed out: give the fresh slots back.
      for (const f of fresh) (f.kind === 'l' ? this.listenerPool : f.kind === 'g' ? this.groupPool : this.backendPool).retire(f.slot);
      throw err;
    }
    for (const f of fresh) {
      if (f.kind === 'l') this.shared.clearListener(f.slot);
      else if (f.kind === 'g') this.shared.clearGroup(f.slot);
      else this.shared.clearBackend(f.slot, now);
    }
    return {
      map,
      commit: () => {
        const keptB = new Set(backendIds.values());
        for (const [, s] of this.backendIds) if (!keptB.has(s)) this.backendPool.retire(s);
        const keptG = new Set(groupIds.values());
        for (const [, s] of this.groupIds) if (!keptG.has(s)) this.groupPool.retire(s);
        const keptL = new Set(listenerIds.values());
        for (const [, s] of this.listenerIds) if (!keptL.has(s)) this.listenerPool.retire(s);
        this.listenerIds = listenerIds;
        this.groupIds = groupIds;
        this.backendIds = backendIds;
      },
      rollback: () => {
        for (const f of fresh) (f.kind === 'l' ? this.listenerPool : f.kind === 'g' ? this.groupPool : this.backendPool).retire(f.slot);
      },
    };
  }
}

/**
 * The slots the shared memory starts with for a first table: twice what it uses (an edit, a reload or
 * discovery adding some grows nothing), at least a small floor. Later tables grow it as they need.
 */
export function slotsFor(table: RoutingTable): SlotCounts {
  let groups = 0;
  let backends = 0;
  for (const l of table.listeners) {
    groups += l.groups.length;
    for (const g of l.groups) backends += g.backends.length;
  }
  return { listeners: Math.max(16, 2 * table.listeners.length), groups: Math.max(64, 2 * groups), backends: Math.max(256, 2 * backends) };
}

/** A table's slots, not yet in force: commit when the table runs, roll back when it does not. */
export interface SlotPlan {
  readonly map: SlotMap;
  commit(): void;
  rollback(): void;
}

export { backendId };
