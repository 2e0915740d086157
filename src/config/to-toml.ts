// The routing table written back as TOML that `lb --check` accepts: used by `lb --print-toml`
// (balance's command line → config), `show config` and `save` on the control port.

import type { BackendDoc, ConfigDoc, HealthDoc, ListenerDoc } from './doc.ts';
import type { BackendEntry, HealthEntry, RoutingTable } from './table.ts';
import { defaultStateFile } from './operator-state.ts';
import { collapse } from '../discovery/expand.ts';
import { formatDuration, formatHostPort } from './values.ts';

/** The document that compiles back to `table` (addresses re-resolve from the host names). */
export function tableToDoc(running: RoutingTable): ConfigDoc {
  // DNS discovery's backends are written as the configured backends they were made of.
  const table = collapse(running);
  const doc: ConfigDoc = {
    global: {
      drain_timeout: formatDuration(table.global.drainTimeoutMs),
      log_format: table.global.logFormat,
      log_level: table.global.logLevel,
      access_log: table.global.accessLog,
      workers: table.global.workers,
      ...(table.global.maxconn !== null ? { maxconn: table.global.maxconn } : {}),
      splice: table.global.splice,
      // Written only when it is not what this environment would default to, so a saved file stays portable.
      ...(table.global.stateFile !== defaultStateFile(process.env) ? { state_file: table.global.stateFile ?? '' } : {}),
      ...(table.global.dns
        ? {
            dns: {
              servers: [...table.global.dns.servers],
              timeout: formatDuration(table.global.dns.timeoutMs),
              hold_valid: formatDuration(table.global.dns.holdValidMs),
              min_ttl: formatDuration(table.global.dns.minTtlMs),
              max_ttl: formatDuration(table.global.dns.maxTtlMs),
            },
          }
        : {}),
    },
    defaults: {
      connect_timeout: formatDuration(table.defaults.connectTimeoutMs),
      idle_timeout: formatDuration(table.defaults.idleTimeoutMs),
    },
    listeners: {},
  };
  if (table.control) {
    const c = table.control;
    doc.control = {
      ...(c.listen ? { listen: formatHostPort(c.listen.host, c.listen.port) } : {}),
      ...(c.socket ? { socket: c.socket } : {}),
      level: c.level,
      socket_level: c.socketLevel,
      ...(c.tokenFile ? { token_file: c.tokenFile } : {}),
      allow: [...c.allow],
      idle_timeout: formatDuration(c.idleTimeoutMs),
      ...(c.http ? { http: formatHostPort(c.http.host, c.http.port), http_level: c.httpLevel } : {}),
    };
  }
  for (const l of table.listeners) {
    const ld: ListenerDoc = {
      listen: l.listen.host === null ? l.listen.port : formatHostPort(l.listen.host, l.listen.port),
      groups: l.groups.map((g) => ({
        policy: g.policy,
        ...(g.health ? { health: healthDoc(g.health) } : {}),
        ...(g.sendProxy ? { send_proxy: g.sendProxy } : {}),
        ...(typeof g.checkSendProxy === 'boolean' ? { check_send_proxy: g.checkSendProxy } : {}),
        backends: g.backends.map((b) => backendDoc(b, g.health)),
      })),
    };
    if (l.queue) ld.queue = { max: l.queue.max, timeout: formatDuration(l.queue.timeoutMs) };
    if (l.sourceHost) ld.source = l.sourceHost;
    if (l.hashFailover) ld.hash_failover = true;
    if (l.autodisable) ld.autodisable = true;
    if (l.packetDump !== 'off') ld.packet_dump = l.packetDump;
    if (l.packetDumpFile) ld.packet_dump_file = l.packetDumpFile;
    if (l.connectTimeoutMs !== table.defaults.connectTimeoutMs) ld.connect_timeout = formatDuration(l.connectTimeoutMs);
    if (l.idleTimeoutMs !== table.defaults.idleTimeoutMs) ld.idle_timeout = formatDuration(l.idleTimeoutMs);
    if (l.acceptProxy) {
      ld.accept_proxy = true;
      ld.accept_proxy_timeout = formatDuration(l.acceptProxy.timeoutMs);
    }
    doc.listeners[l.name] = ld;
  }
  return doc;
}

function healthDoc(h: HealthEntry): HealthDoc {
  return {
    interval: formatDuration(h.intervalMs),
    timeout: formatDuration(h.timeoutMs),
    rise: h.rise,
    fall: h.fall,
    ...(h.send !== null ? { send: h.send } : {}),
    ...(h.expect ? { expect: 'text' in h.expect ? h.expect.text : `/${h.expect.regex}/${h.expect.flags}` } : {}),
    ...(h.port !== null ? { port: h.port } : {}),
  };
}

function backendDoc(b: BackendEntry, groupHealth: HealthEntry | null): string | BackendDoc {
  const ownHealth = b.health !== groupHealth;
  const named = b.name !== b.key;
  const ownProxy = b.sendProxy !== undefined || b.checkSendProxy !== undefined;
  if (b.srv) {
    const doc: BackendDoc = { ...(named ? { name: b.name } : {}), srv: b.host, maxc: b.maxc, enabled: b.enabled };
    if (ownHealth) doc.health = b.health ? healthDoc(b.health) : { enabled: false };
    if (b.sendProxy !== undefined) doc.send_proxy = b.sendProxy;
    if (b.checkSendProxy !== undefined) doc.check_send_proxy = b.checkSendProxy;
    return doc;
  }
  if (b.weight === 1 && b.enabled && !ownHealth && !named && !ownProxy) return `${formatHostPort(b.host, b.port)}${b.maxc ? `:${b.maxc}` : ''}`;
  const doc: BackendDoc = {
    ...(named ? { name: b.name } : {}),
    host: b.host, port: b.port, maxc: b.maxc, weight: b.weight, enabled: b.enabled,
  };
  if (ownHealth) doc.health = b.health ? healthDoc(b.health) : { enabled: false };
  if (b.sendProxy !== undefined) doc.send_proxy = b.sendProxy;
  if (b.checkSendProxy !== undefined) doc.check_send_proxy = b.checkSendProxy;
  return doc;
}

const BARE = /^[A-Za-z0-9_-]+$/;
const key = (k: string): string => (BARE.test(k) ? k : JSON.stringify(k));

function value(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `[${v.map(value).join(', ')}]`;
  const entries = Object.entries(v as object).filter(([, x]) => x !== undefined);
  return `{ ${entries.map(([k, x]) => `${key(k)} = ${value(x)}`).join(', ')} }`;
}

function section(name: string, body: object | undefined): string {
  if (!body) return '';
  const lines = Object.entries(body)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${key(k)} = ${value(v)}`);
  return `[${name}]\n${lines.join('\n')}\n\n`;
}

export function docToToml(doc: ConfigDoc, header = ''): string {
  let out = header;
  out += section('global', doc.global);
  out += section('control', doc.control);
  out += section('defaults', doc.defaults);
  for (const [name, l] of Object.entries(doc.listeners)) {
    const { groups, queue, ...rest } = l;
    out += section(`listeners.${key(name)}`, { ...rest, ...(queue ? { queue } : {}) });
    for (const g of groups) {
      out += `[[listeners.${key(name)}.groups]]\n`;
      if (g.policy) out += `policy = ${value(g.policy)}\n`;
      if (g.health) out += `health = ${value(g.health)}\n`;
      if (g.send_proxy) out += `send_proxy = ${value(g.send_proxy)}\n`;
      if (g.check_send_proxy !== undefined) out += `check_send_proxy = ${value(g.check_send_proxy)}\n`;
      out += `backends = [\n${g.backends.map((b) => `  ${value(b)},\n`).join('')}]\n\n`;
    }
  }
  return out.trimEnd() + '\n';
}
