// The compiled routing table: what the data path, the control port and the stats read.
//
// It is a plain object graph, deeply frozen once built. Nothing mutates it: a runtime change (reload,
// `enable`, `maxc`, ...) builds a new table and swaps it in one assignment, so a connection being set up
// always sees one consistent table, never half of an edit.

import type { Level } from '../control/access.ts';

export const POLICIES = ['rr', 'hash', 'leastconn', 'random', 'weighted', 'first'] as const;
export type Policy = (typeof POLICIES)[number];

export type PacketDump = 'off' | 'hex' | 'balance';
/** PROXY protocol versions (src/proxy/proxy-protocol.ts). */
export type ProxyVersion = 'v1' | 'v2';
export type LogFormat = 'text' | 'json';
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Endpoint {
  /** Host as written (name or literal); `null` for "all addresses". */
  readonly host: string | null;
  readonly port: number;
}

export interface HealthEntry {
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly rise: number;
  readonly fall: number;
  /** Bytes to send after connecting (TOML escapes already applied), or null. */
  readonly send: string | null;
  /** What the first bytes returned must contain: a substring, or a regular expression. */
  readonly expect: { readonly text: string } | { readonly regex: string; readonly flags: string } | null;
  /** Port to check, when not the traffic port. */
  readonly port: number | null;
}

export interface QueueEntry {
  readonly max: number;
  readonly timeoutMs: number;
}

export interface BackendEntry {
  /**
   * What operators call it (`show`, CSV `svname`, MRTG titles, the state file): the configured `name`,
   * else the same text as `key`. Unique within its group when configured.
   */
  readonly name: string;
  /** Host as configured: a name or an IP literal (IPv6 without brackets). */
  readonly host: string;
  readonly port: number;
  /** The IP that connections go to: resolved at start and on reload, so connects never wait for DNS. */
  readonly address: string;
  readonly maxc: number;
  readonly weight: number;
  /** Operator state: false = disabled by an operator (DIS). Health and ejection live in runtime state. */
  readonly enabled: boolean;
  /** Stable identity ("host:port", IPv6 in brackets): the rendezvous-hash input and the stats key. */
  readonly key: string;
  /** Active checks for this backend (the group's, with its own overrides), or null. */
  readonly health: HealthEntry | null;
  /**
   * Without `[global.dns]`: `host` is a name that had no address when the table was made (start, reload),
   * and why (`ENOTFOUND`...). The backend takes no traffic and is not checked (it shows as down) while lb
   * retries resolving it (src/discovery/name-retry.ts); `address` is ''.
   */
  readonly resolveError?: string;
  /** Own `send_proxy` ("off" overrides the group's); absent: the group's (see sendProxyOf). */
  readonly sendProxy?: ProxyVersion | 'off';
  /** Own `check_send_proxy`; absent: the group's, else the default (see checkSendProxyOf). */
  readonly checkSendProxy?: boolean;
  /**
   * Set on the backends DNS discovery made of one configured backend (one per address): that backend's
   * configured name and key, so that `show config`, `save` and a re-expansion see the configured form.
   */
  readonly discovered?: { readonly name: string; readonly key: string; /** Made from an srv backend. */ readonly srv?: boolean };
  /** An SRV name to follow (`host` is that name, `port` 0): never connected to, only expanded (src/discovery/). */
  readonly srv?: boolean;
}

export interface GroupEntry {
  readonly policy: Policy;
  /** The group's checks as configured (what its backends inherit, and what `create` gives a new one). */
  readonly health: HealthEntry | null;
  readonly backends: readonly BackendEntry[];
  /** PROXY header written to every backend of the group before client bytes; absent/null: none. */
  readonly sendProxy?: ProxyVersion | null;
  /** `check_send_proxy` as configured; absent/null: the default (on with send_proxy and no check port). */
  readonly checkSendProxy?: boolean | null;
  /**
   * DNS discovery: configured backends whose name has no address now (`at`: their index among the
   * configured backends). They take no traffic and have no slot; `show config` and `save` keep them.
   */
  readonly unresolved?: readonly { readonly at: number; readonly backend: BackendEntry }[];
  /** A failover group DNS discovery added after the last one for an SRV priority level (not configured). */
  readonly srvLevel?: number;
}

export interface ListenerEntry {
  readonly name: string;
  readonly listen: Endpoint;
  /**
   * The local address connections to backends (and health checks) bind to: an IP literal, resolved at
   * start and on reload like a backend's `address` (net.connect's localAddress takes no host name).
   */
  readonly source: string | null;
  /** `source` as configured (a name or an IP literal): what --print, --print-toml and `show config` show. */
  readonly sourceHost: string | null;
  readonly hashFailover: boolean;
  readonly autodisable: boolean;
  readonly packetDump: PacketDump;
  readonly packetDumpFile: string | null;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /** listen(2)'s backlog: clients the kernel holds, connected, until lb accepts them. */
  readonly backlog: number;
  readonly queue: QueueEntry | null;
  readonly groups: readonly GroupEntry[];
  /** Clients start with a PROXY header, read within `timeoutMs`; absent/null: they do not. */
  readonly acceptProxy?: { readonly timeoutMs: number } | null;
}

export interface ControlEntry {
  readonly listen: Endpoint | null;
  readonly socket: string | null;
  /** What a TCP session reaches with `auth TOKEN` (it starts at read); above read needs `tokenFile`. */
  readonly level: Level;
  /** What a Unix-socket session has from the start. */
  readonly socketLevel: Level;
  readonly tokenFile: string | null;
  readonly allow: readonly string[];
  readonly idleTimeoutMs: number;
  /** The HTTP face (status page, /metrics, /stats.json): loopback when no host was given; null: off. */
  readonly http: Endpoint | null;
  /** What an HTTP client that passed `allow` (and gave the token, when tokenFile is set) may do. */
  readonly httpLevel: Level;
}

export interface GlobalEntry {
  readonly drainTimeoutMs: number;
  readonly logFormat: LogFormat;
  /** Least severe event level written (the access log follows `accessLog` alone). */
  readonly logLevel: LogLevel;
  readonly accessLog: boolean;
  /** Data-plane worker threads: "auto" (one per CPU) or a number. */
  readonly workers: number | 'auto';
  /** "auto": the splice(2) relay where the addon loads; "off": the JS relay always. */
  readonly splice: 'auto' | 'off';
  /** Connections lb holds at most (all workers); null: derived from the descriptor limit at start (src/proxy/conn-limit.ts). */
  readonly maxconn: number | null;
  /** Where operator state (disable, maxc, drain, create, ...) is kept across reloads and restarts; null: nowhere. */
  readonly stateFile: string | null;
  /** DNS discovery (`[global.dns]`): backends given by name follow their records; null: resolved once. */
  readonly dns?: DnsEntry | null;
}

export interface DnsEntry {
  /** "host" or "host:port"; empty: the system's resolvers. */
  readonly servers: readonly string[];
  readonly timeoutMs: number;
  readonly holdValidMs: number;
  readonly minTtlMs: number;
  readonly maxTtlMs: number;
}

export interface RoutingTable {
  readonly global: GlobalEntry;
  readonly control: ControlEntry | null;
  readonly defaults: { readonly connectTimeoutMs: number; readonly idleTimeoutMs: number };
  readonly listeners: readonly ListenerEntry[];
}

/** The PROXY header version a connection to `b` starts with, or null. */
export function sendProxyOf(g: GroupEntry, b: BackendEntry): ProxyVersion | null {
  const own = b.sendProxy;
  if (own !== undefined) return own === 'off' ? null : own;
  return g.sendProxy ?? null;
}

/**
 * The PROXY header version `b`'s health checks start with, or null. Default (HAProxy's): checks carry one
 * when traffic does and goes to the same port; check_send_proxy without send_proxy means v1.
 */
export function checkSendProxyOf(g: GroupEntry, b: BackendEntry): ProxyVersion | null {
  const traffic = sendProxyOf(g, b);
  const on = b.checkSendProxy ?? g.checkSendProxy ?? (traffic !== null && (b.health?.port ?? null) === null);
  return on ? (traffic ?? 'v1') : null;
}

/** Recursively freezes a plain object graph; returns it typed as read-only. */
export function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const key of Object.keys(value)) deepFreeze((value as Record<string, unknown>)[key]);
  }
  return value;
}

export function tableSummary(table: RoutingTable): { listeners: number; groups: number; backends: number } {
  let groups = 0;
  let backends = 0;
  for (const l of table.listeners) {
    for (const g of l.groups) {
      if (g.srvLevel === undefined) groups++; // a group DNS discovery added for an SRV priority is not configured
      backends += g.backends.length + (g.unresolved?.length ?? 0);
    }
  }
  return { listeners: table.listeners.length, groups, backends };
}
