// The shared memory's size (src/shared/state.ts) and the slots that use it (src/shared/slots.ts), without
// sockets: it starts at what the first table needs, grows in place for later ones (counters stay where
// every thread reads them), and stops at its limit with LB_TABLE_LIMIT, changing nothing.

import { describe, expect, it } from 'vitest';
import { compileConfig } from '../../src/config/compile.ts';
import type { ConfigDoc } from '../../src/config/doc.ts';
import type { RoutingTable } from '../../src/config/table.ts';
import { SlotAllocator, SlotCapacityError, slotsFor } from '../../src/shared/slots.ts';
import { SharedState, WB_TOTAL, WL_TOTAL } from '../../src/shared/state.ts';

/** A table of one listener and one group of `n` backends, ports from `first` on. */
function table(n: number, first = 20000): RoutingTable {
  const backends = Array.from({ length: n }, (_, i) => ({ host: '127.0.0.1', port: first + i }));
  const doc = { listeners: { web: { listen: '127.0.0.1:0', groups: [{ backends }] } } };
  const r = compileConfig(doc as unknown as ConfigDoc);
  if (!r.table) throw new Error(JSON.stringify(r.diagnostics));
  return r.table;
}

const small = { listeners: 2, groups: 2, backends: 4, regions: 3 };

describe('shared memory sized from the table', () => {
  it('starts at twice what the first table uses (a floor for small ones)', () => {
    expect(slotsFor(table(3))).toEqual({ listeners: 16, groups: 64, backends: 256 });
    expect(slotsFor(table(10_000))).toEqual({ listeners: 16, groups: 64, backends: 20_000 });
  });

  it('grows in place: counters written before stay, new slots read zero, another thread sees both after remap', () => {
    const main = new SharedState(undefined, small, { listeners: 8, groups: 8, backends: 64 });
    const worker = new SharedState(main.init()); // as a worker maps it (structured clone keeps the same memory)
    main.addBackend(2, 3, WB_TOTAL, 7);
    main.addListener(1, 1, WL_TOTAL, 5);
    main.takeTurn(1);
    expect(main.reserve('backends', 10)).toBe(true);
    expect(main.capacity.backends).toBe(10);
    expect(main.reserve('listeners', 3)).toBe(true);
    expect(main.capacity.listeners).toBe(4); // twice what it had
    expect(main.reserve('groups', 5)).toBe(true);
    expect(main.backendSum(3, 'total')).toBe(7);
    expect(main.listenerSum(1, 'total')).toBe(5);
    expect(main.cursor(1)).toBe(1);
    expect(main.backendSum(9, 'total')).toBe(0);
    expect(main.oldestTicketOf(3)).toBe(0x7fffffff); // a grown listener slot has no waiter

    expect(worker.capacity.backends).toBe(4); // its views are fixed-length until it remaps
    worker.remap();
    expect(worker.capacity).toEqual({ listeners: 4, groups: 5, backends: 10, regions: 3 });
    worker.addBackend(0, 9, WB_TOTAL, 2);
    expect(main.backendSum(9, 'total')).toBe(2);
    expect(worker.backendSum(3, 'total')).toBe(7);
    expect(worker.claim(9, 1, 0)).toBe(true);
    expect(main.claim(9, 1, 1)).toBe(false); // maxc 1 holds across both views
  });

  it('stops at its limit: reserve says no and changes nothing', () => {
    const s = new SharedState(undefined, small, { listeners: 2, groups: 2, backends: 6 });
    expect(s.reserve('backends', 7)).toBe(false);
    expect(s.capacity.backends).toBe(4);
    expect(s.reserve('backends', 5)).toBe(true);
    expect(s.capacity.backends).toBe(6); // twice 4 capped at the limit
    expect(s.limits).toEqual({ listeners: 2, groups: 2, backends: 6 });
  });
});

describe('slots across tables', () => {
  it('a larger table grows the memory; kept backends keep their slot and counts', () => {
    const s = new SharedState(undefined, { listeners: 2, groups: 2, backends: 4, regions: 1 }, { listeners: 4, groups: 4, backends: 100 });
    const slots = new SlotAllocator(s);
    const a = slots.plan(table(3));
    a.commit();
    const b0 = a.map.listeners[0]!.groups[0]!.backends[0]!;
    s.addBackend(0, b0, WB_TOTAL, 4);
    const b = slots.plan(table(50));
    b.commit();
    expect(s.capacity.backends).toBe(64); // doubled as slots were taken: 4, 8, ... 64
    expect(b.map.listeners[0]!.groups[0]!.backends[0]).toBe(b0);
    expect(new Set(b.map.listeners[0]!.groups[0]!.backends).size).toBe(50);
    expect(s.backendSum(b0, 'total')).toBe(4);
  });

  it('past the limit: LB_TABLE_LIMIT, nothing handed out; slots held by open connections count until released', () => {
    const s = new SharedState(undefined, { listeners: 2, groups: 2, backends: 2, regions: 1 }, { listeners: 4, groups: 4, backends: 4 });
    const slots = new SlotAllocator(s);
    expect(() => slots.plan(table(5))).toThrow(SlotCapacityError);
    try {
      slots.plan(table(5));
    } catch (err) {
      expect((err as SlotCapacityError).code).toBe('LB_TABLE_LIMIT');
      expect((err as Error).message).toMatch(/no free backends slot: all 4 are used/);
    }
    const first = slots.plan(table(2, 30000));
    first.commit();
    for (const b of first.map.listeners[0]!.groups[0]!.backends) expect(s.claim(b, 0, 0)).toBe(true); // open connections
    const second = slots.plan(table(2, 31000)); // other backends: two new slots, the old two retired but held
    second.commit();
    expect(() => slots.plan(table(2, 32000))).toThrow(SlotCapacityError);
    for (const b of first.map.listeners[0]!.groups[0]!.backends) s.release(b, 0);
    const third = slots.plan(table(2, 32000)); // the released slots are reused
    expect(third.map.listeners[0]!.groups[0]!.backends.toSorted()).toEqual(first.map.listeners[0]!.groups[0]!.backends.toSorted());
    third.commit();
  });
});
