// Runtime edits of the routing table: each returns a new, deeply frozen table and leaves the old one as
// it was, so the control port can swap tables atomically (connections keep the entry they started with).

import { backendKey } from './compile.ts';
import { deepFreeze, type BackendEntry, type GroupEntry, type Policy, type RoutingTable } from './table.ts';

export interface BackendRef {
  listener: string;
  group: number;
  index: number;
}

function mapGroup(
  table: RoutingTable,
  listener: string,
  group: number,
  fn: (g: GroupEntry) => GroupEntry,
): RoutingTable {
  return deepFreeze({
    ...table,
    listeners: table.listeners.map((l) =>
      l.name !== listener ? l : { ...l, groups: l.groups.map((g, gi) => (gi === group ? fn(g) : g)) },
    ),
  });
}

export type BackendPatch = Partial<Pick<BackendEntry, 'enabled' | 'maxc' | 'weight' | 'host' | 'port' | 'address'>>;

export function patchBackend(table: RoutingTable, ref: BackendRef, patch: BackendPatch): RoutingTable {
  return mapGroup(table, ref.listener, ref.group, (g) => ({
    ...g,
    backends: g.backends.map((b, i) => {
      if (i !== ref.index) return b;
      const next = { ...b, ...patch };
      const key = backendKey(next.host, next.port);
      // An unnamed backend is called by its address, so its name follows an `assign`; a configured one stays.
      return { ...next, key, name: b.name === b.key ? key : b.name };
    }),
  }));
}

export function addBackend(
  table: RoutingTable,
  listener: string,
  group: number,
  backend: Omit<BackendEntry, 'key' | 'name'> & { name?: string },
): RoutingTable {
  const key = backendKey(backend.host, backend.port);
  const entry: BackendEntry = { ...backend, key, name: backend.name ?? key };
  return mapGroup(table, listener, group, (g) => ({ ...g, backends: [...g.backends, entry] }));
}

export function removeBackend(table: RoutingTable, ref: BackendRef): RoutingTable {
  return mapGroup(table, ref.listener, ref.group, (g) => ({
    ...g,
    backends: g.backends.filter((_, i) => i !== ref.index),
  }));
}

export function setPolicy(table: RoutingTable, listener: string, group: number, policy: Policy): RoutingTable {
  return mapGroup(table, listener, group, (g) => ({ ...g, policy }));
}
