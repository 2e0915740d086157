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
import { deepFreeze, type BackendEntry, type GroupEntry, type RoutingTable } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';

/** The addresses each name resolves to now; a name absent from the map has not been looked up yet. */
export type Answers = ReadonlyMap<string, readonly string[]>;

export interface SrvRecord {
  readonly priority: number;
  readonly weight: number;
  readonly port: number;
  readonly target: string;
}

/** The records of each SRV name now; absent: not looked up yet. */
export type SrvAnswers = ReadonlyMap<string, readonly SrvRecord[]>;

/** Backend names are at most 64 characters (src/config/compile.ts). */
const NAME_MAX = 64;

/** The names discovery follows in `table`: every configured backend host that is not an IP literal (none without `[global.dns]`). */
export function discoveryNames(table: RoutingTable): string[] {
  if (!table.global.dns) return [];
  const names = new Set<string>();
  for (const b of configuredBackends(table)) if (!b.srv && isIP(b.host) === 0) names.add(b.host);
  return [...names].sort();
}

/** The SRV names of `table`'s srv backends. */
export function srvNames(table: RoutingTable): string[] {
  if (!table.global.dns) return [];
  return [...new Set(configuredBackends(table).filter((b) => b.srv).map((b) => b.host))].sort();
}

function configuredBackends(table: RoutingTable): BackendEntry[] {
  return collapse(table).listeners.flatMap((l) => l.groups.flatMap((g) => g.backends));
}

/**
 * The table as configured: each run of backends discovered from one configured backend becomes that
 * backend again, and backends whose name had no address are put back in their place.
 */
export function collapse(table: RoutingTable): RoutingTable {
  let changed = false;
  const listeners = table.listeners.map((l) => {
    // Groups made for SRV priorities go; their backends come back as the srv backend of the last group.
    const configured = l.groups.filter((g) => g.srvLevel === undefined);
    if (configured.length !== l.groups.length) changed = true;
    const seen = new Set<string>();
    return {
    ...l,
    groups: configured.map((g) => {
      const { unresolved, ...group } = g;
      if (unresolved !== undefined) changed = true;
      const out: BackendEntry[] = [];
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
        out.push(
          discovered.srv
            ? { ...rest, name: discovered.name, key: discovered.key, host: discovered.key, port: 0, address: '', weight: 1, srv: true }
            : { ...rest, name: discovered.name, key: discovered.key, address: b.host },
        );
      }
      for (const u of [...(unresolved ?? [])].sort((x, y) => x.at - y.at)) out.splice(Math.min(u.at, out.length), 0, u.backend);
      return { ...group, backends: out };
    }),
    };
  });
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
 * no address: it takes no traffic until it has one). Names not looked up yet stay as they are. An srv
 * backend becomes its records' targets (each address of each target): the lowest priority in its
 * place, each higher priority a failover group added after the listener's last group.
 */
export function expandTable(table: RoutingTable, answers: Answers, srv: SrvAnswers = new Map()): RoutingTable {
  const base = collapse(table);
  if (!base.global.dns) return base;
  const listeners = base.listeners.map((l) => {
    const levels: BackendEntry[][] = [];
    const groups: GroupEntry[] = l.groups.map((g) => {
      const unresolved: { at: number; backend: BackendEntry }[] = [];
      const backends = g.backends.flatMap((b, at): BackendEntry[] => {
        if (b.srv) {
          const byLevel = srvLevels(b, srv.get(b.host), answers);
          if (byLevel.length === 0) {
            unresolved.push({ at, backend: b });
            return [];
          }
          byLevel.slice(1).forEach((entries, i) => (levels[i] ??= []).push(...entries));
          return byLevel[0]!;
        }
        if (isIP(b.host) !== 0) return [b];
        const addrs = answers.get(b.host);
        if (addrs === undefined) return [b];
        if (addrs.length === 0) {
          unresolved.push({ at, backend: b });
          return [];
        }
        return sortAddresses(addrs).map((address) => discoveredEntry(b, b.host, b.port, address, b.weight));
      });
      return unresolved.length > 0 ? { ...g, backends, unresolved } : { ...g, backends };
    });
    const last = groups[groups.length - 1]!;
    const extra = levels.map((backends, i): GroupEntry => {
      const { unresolved: _none, ...like } = last;
      return { ...like, backends, srvLevel: i + 1 };
    });
    return { ...l, groups: [...groups, ...extra] };
  });
  return deepFreeze({ ...base, listeners });
}

function discoveredEntry(b: BackendEntry, host: string, port: number, address: string, weight: number): BackendEntry {
  const { srv: isSrv, ...rest } = b;
  const named = b.name !== b.key;
  const base = named ? b.name : formatHostPort(host, port);
  const name = `${base}@${address}`;
  return {
    ...rest,
    host,
    port,
    address,
    weight,
    key: formatHostPort(address, port),
    name: name.length <= NAME_MAX ? name : formatHostPort(address, port),
    discovered: { name: b.name, key: b.key, ...(isSrv ? { srv: true } : {}) },
  };
}

/** An srv backend's entries by priority level (lowest first), records in (priority, target, port) order; empty when none has an address. */
function srvLevels(b: BackendEntry, records: readonly SrvRecord[] | undefined, answers: Answers): BackendEntry[][] {
  if (!records) return [];
  const byPriority = new Map<number, BackendEntry[]>();
  const sorted = [...records].sort((x, y) => x.priority - y.priority || (x.target < y.target ? -1 : x.target > y.target ? 1 : 0) || x.port - y.port);
  for (const r of sorted) {
    const addrs = answers.get(r.target) ?? (isIP(r.target) !== 0 ? [r.target] : []);
    // SRV weight 0 means "rarely", not "never": the least weight lb has that still takes clients.
    const entries = sortAddresses(addrs).map((address) => discoveredEntry(b, r.target, r.port, address, Math.max(1, r.weight)));
    if (entries.length === 0) continue;
    const list = byPriority.get(r.priority) ?? [];
    list.push(...entries);
    byPriority.set(r.priority, list);
  }
  return [...byPriority.keys()].sort((x, y) => x - y).map((p) => byPriority.get(p)!);
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
