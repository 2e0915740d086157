// DNS discovery, the pure part: a routing table whose backends are given by host name, expanded into
// one backend per address the name currently resolves to.
//
// A discovered backend keeps the configured backend's host, port, maxc, weight, checks and PROXY
// settings; its key (the slot identity and rendezvous-hash input) is its own "address:port", so a
// backend whose address stays keeps its slot and counters across re-resolutions, reloads and edits,
// and hashing moves only the clients of addresses that come or go. It is named "host:port@address"
// (or "NAME@address" when the configured backend is named). `discovered` records what it was made of,
// so `collapse` (and `show config`, `save`) give back the configured table.

import { isIP } from 'node:net';
import { deepFreeze, type BackendEntry, type RoutingTable } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';

/** The addresses each name resolves to now; a name absent from the map has not been looked up yet. */
export type Answers = ReadonlyMap<string, readonly string[]>;

/** Backend names are at most 64 characters (src/config/compile.ts). */
const NAME_MAX = 64;

/** The names discovery follows in `table`: every backend host that is not an IP literal (none without `[global.dns]`). */
export function discoveryNames(table: RoutingTable): string[] {
  if (!table.global.dns) return [];
  const names = new Set<string>();
  for (const l of table.listeners) for (const g of l.groups) for (const b of g.backends) if (isIP(b.host) === 0) names.add(b.host);
  return [...names].sort();
}

/**
 * The table as configured: each run of backends discovered from one configured backend becomes that
 * backend again, and backends whose name had no address are put back in their place.
 */
export function collapse(table: RoutingTable): RoutingTable {
  let changed = false;
  const listeners = table.listeners.map((l) => ({
    ...l,
    groups: l.groups.map((g) => {
      const { unresolved, ...group } = g;
      if (unresolved !== undefined) changed = true;
      const out: BackendEntry[] = [];
      const seen = new Set<string>();
      for (const b of g.backends) {
        if (!b.discovered) {
          out.push(b);
          continue;
        }
        changed = true;
        const id = `${b.discovered.name}\n${b.discovered.key}`;
        if (seen.has(id)) continue;
        seen.add(id);
        const { discovered, ...rest } = b;
        out.push({ ...rest, name: discovered.name, key: discovered.key, address: b.host });
      }
      for (const u of [...(unresolved ?? [])].sort((x, y) => x.at - y.at)) out.splice(Math.min(u.at, out.length), 0, u.backend);
      return { ...group, backends: out };
    }),
  }));
  return changed ? deepFreeze({ ...table, listeners }) : table;
}

/** IPv4 before IPv6, each in numeric order: the order backends appear in (and `first` uses). */
export function sortAddresses(addrs: readonly string[]): string[] {
  const key = (a: string): string =>
    isIP(a) === 4
      ? `4${a.split('.').map((o) => o.padStart(3, '0')).join('.')}`
      : `6${new URL(`http://[${a}]/`).hostname}`;
  return [...new Set(addrs)].sort((x, y) => (key(x) < key(y) ? -1 : key(x) > key(y) ? 1 : 0));
}

function discoveredName(b: BackendEntry, address: string): string {
  const base = b.name !== b.key ? b.name : formatHostPort(b.host, b.port);
  const name = `${base}@${address}`;
  return name.length <= NAME_MAX ? name : formatHostPort(address, b.port);
}

/**
 * Every backend given by name becomes one backend per address in `answers` (none while the name has
 * no address: it takes no traffic until it has one). Names not looked up yet stay as they are.
 */
export function expandTable(table: RoutingTable, answers: Answers): RoutingTable {
  const base = collapse(table);
  if (!base.global.dns) return base;
  const listeners = base.listeners.map((l) => ({
    ...l,
    groups: l.groups.map((g) => {
      const unresolved: { at: number; backend: BackendEntry }[] = [];
      const backends = g.backends.flatMap((b, at): BackendEntry[] => {
        if (isIP(b.host) !== 0) return [b];
        const addrs = answers.get(b.host);
        if (addrs === undefined) return [b];
        if (addrs.length === 0) {
          unresolved.push({ at, backend: b });
          return [];
        }
        return sortAddresses(addrs).map((address) => ({
          ...b,
          address,
          key: formatHostPort(address, b.port),
          name: discoveredName(b, address),
          discovered: { name: b.name, key: b.key },
        }));
      });
      return unresolved.length > 0 ? { ...g, backends, unresolved } : { ...g, backends };
    }),
  }));
  return deepFreeze({ ...base, listeners });
}

/** The addresses of each discovered name in a table, to see whether an expansion changes anything. */
export function addressesOf(table: RoutingTable): string {
  const parts: string[] = [];
  for (const l of table.listeners) {
    l.groups.forEach((g, gi) => {
      for (const b of g.backends) parts.push(`${l.name}/${gi}/${b.name}/${b.address}`);
    });
  }
  return parts.join('\n');
}
