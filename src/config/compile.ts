// Stage 3 of the config pipeline: semantic checks and the routing table.
//
// Pure and synchronous: the validated document in, a table (not yet frozen, host names not yet resolved)
// and every problem found out. Name resolution is a separate, asynchronous stage (resolve.ts).

import { isIP } from 'node:net';
import { Code } from '../errors.ts';
import { diagnostic, type Diagnostic } from './diagnostics.ts';
import { tableLimitProblem } from './limits.ts';
import type { BackendDoc, ConfigDoc, DurationValue, GroupDoc, HealthDoc, ListenerDoc } from './doc.ts';
import type { PathSegment } from './locate.ts';
import type {
  BackendEntry,
  ControlEntry,
  Endpoint,
  GroupEntry,
  HealthEntry,
  ListenerEntry,
  LogFormat,
  LogLevel,
  PacketDump,
  Policy,
  ProxyVersion,
  RoutingTable,
} from './table.ts';
import { defaultStateFile } from './operator-state.ts';
import { jsAcceptReason, NAME_REASON } from '../proxy/path.ts';
import type { Level } from '../control/access.ts';
import { formatHostPort, parseBackendString, parseDuration, parseListenAddress, parsePort } from './values.ts';

export interface CompileResult {
  table: RoutingTable | null;
  diagnostics: Diagnostic[];
}

/** `show`'s own words (control port): a listener may not be named like one of them. */
export const SHOW_SUBCOMMANDS: readonly string[] = ['stat', 'config', 'info', 'json', 'errors'];

export function compileConfig(doc: ConfigDoc): CompileResult {
  return new Compiler().compile(doc);
}

/** The identity of a backend: stable across reloads and instances, and the rendezvous-hash input. */
export function backendKey(host: string, port: number): string {
  return formatHostPort(host, port);
}

class Compiler {
  private readonly diags: Diagnostic[] = [];
  /** `[global.dns]` is set: SRV backends are allowed. */
  private dnsOn = false;

  compile(doc: ConfigDoc): CompileResult {
    this.dnsOn = doc.global?.dns !== undefined;
    const defaults = {
      connectTimeoutMs: this.duration(doc.defaults?.connect_timeout ?? '5s', ['defaults', 'connect_timeout']),
      idleTimeoutMs: this.duration(doc.defaults?.idle_timeout ?? '0', ['defaults', 'idle_timeout']),
    };
    const global = {
      drainTimeoutMs: this.duration(doc.global?.drain_timeout ?? '30s', ['global', 'drain_timeout']),
      logFormat: (doc.global?.log_format ?? 'text') as LogFormat,
      logLevel: (doc.global?.log_level ?? 'info') as LogLevel,
      accessLog: doc.global?.access_log ?? true,
      workers: doc.global?.workers ?? 'auto',
      maxconn: doc.global?.maxconn ?? null,
      splice: (doc.global?.splice ?? 'auto') as 'auto' | 'off',
      // "" turns the state file off even where systemd gives a state directory.
      stateFile: doc.global?.state_file === undefined ? defaultStateFile(process.env) : doc.global.state_file || null,
      dns: doc.global?.dns ? this.dns(doc.global.dns) : null,
    };
    const control = doc.control ? this.control(doc.control) : null;
    const listeners = Object.entries(doc.listeners).map(([name, l]) => this.listener(name, l, defaults));
    this.checkAddressClashes(listeners, control);
    const over = tableLimitProblem(listeners);
    if (over) this.error(over.path, over.message, Code.TABLE_LIMIT);
    if (global.maxconn !== null) this.checkMaxconnPaths(listeners, global.splice);
    const table: RoutingTable = { global, control, defaults, listeners };
    const failed = this.diags.some((d) => d.severity === 'error');
    return { table: failed ? null : table, diagnostics: this.diags };
  }

  /**
   * At maxconn, only the addon can stop accepting; a listener Node accepts for closes the clients beyond
   * it instead. Said for what the config itself decides (a backend name's resolution, or an addon missing
   * on this machine, is the running lb's to say: `show info`).
   */
  private checkMaxconnPaths(listeners: readonly ListenerEntry[], splice: 'auto' | 'off'): void {
    for (const l of listeners) {
      const why = splice === 'off' ? 'splice = "off"' : jsAcceptReason(l);
      if (why === null || why === NAME_REASON) continue;
      this.warn(
        ['global', 'maxconn'],
        `listener "${l.name}" is accepted by Node (${why}), which cannot stop accepting: at maxconn its new clients are closed at once (counted) instead of waiting in the backlog`,
        Code.MAXCONN,
      );
    }
  }

  private dns(doc: NonNullable<NonNullable<ConfigDoc['global']>['dns']>): NonNullable<RoutingTable['global']['dns']> {
    const at = (k: string): PathSegment[] => ['global', 'dns', k];
    const servers = doc.servers ?? [];
    servers.forEach((s, i) => {
      const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]+)(?::(\d+))?$/.exec(s);
      const host = m ? m[1]! : s;
      const port = m?.[2] === undefined ? 53 : Number(m[2]);
      if (isIP(host) === 0 || port < 1 || port > 65535) {
        this.error(['global', 'dns', 'servers', i], `invalid name server "${s}": an IP address with an optional port ("127.0.0.1:8600", "[::1]:53")`);
      }
    });
    const dns = {
      servers: [...servers],
      timeoutMs: this.duration(doc.timeout ?? '2s', at('timeout')),
      holdValidMs: this.duration(doc.hold_valid ?? '10m', at('hold_valid')),
      minTtlMs: this.duration(doc.min_ttl ?? '1s', at('min_ttl')),
      maxTtlMs: this.duration(doc.max_ttl ?? '5m', at('max_ttl')),
    };
    if (dns.timeoutMs === 0) this.error(at('timeout'), 'timeout must be more than 0');
    if (dns.minTtlMs === 0) this.error(at('min_ttl'), 'min_ttl must be more than 0: a TTL of 0 would ask the server in a loop');
    if (dns.maxTtlMs < dns.minTtlMs) this.error(at('max_ttl'), `max_ttl (${doc.max_ttl}) is shorter than min_ttl (${doc.min_ttl ?? '1s'})`);
    return dns;
  }

  private error(path: PathSegment[], message: string, code: Diagnostic['code'] = Code.CONFIG_VALUE): void {
    this.diags.push(diagnostic(code, path, message));
  }

  private warn(path: PathSegment[], message: string, code: Diagnostic['code'] = Code.CONFIG_VALUE): void {
    this.diags.push(diagnostic(code, path, message, 'warning'));
  }

  private duration(value: DurationValue, path: PathSegment[]): number {
    const parsed = parseDuration(value);
    if (parsed.ok) return parsed.value;
    this.error(path, parsed.error);
    return 0;
  }

  /** The parsed address, or null (reported) when it does not parse. */
  private endpoint(value: string | number, path: PathSegment[]): Endpoint | null {
    const parsed = parseListenAddress(value);
    if (parsed.ok) return parsed.value;
    this.error(path, parsed.error);
    return null;
  }

  private control(doc: NonNullable<ConfigDoc['control']>): ControlEntry {
    const allow = doc.allow ?? ['127.0.0.0/8', '::1/128'];
    allow.forEach((cidr, i) => {
      if (!isCidr(cidr)) this.error(['control', 'allow', i], `invalid CIDR block "${cidr}" (e.g. "10.0.0.0/8", "::1/128")`);
    });
    if (doc.listen === undefined && doc.socket === undefined && doc.http === undefined) {
      this.warn(['control'], 'neither listen nor socket is set: the control port is off');
    }
    const tokenFile = doc.token_file ?? null;
    // `admin` was one flag for both endpoints and no authentication: true now means admin on the socket
    // and, only with a token, on TCP; false means read-only on both. level/socket_level win when given.
    const legacy: Level | undefined = doc.admin === undefined ? undefined : doc.admin ? 'admin' : 'read';
    if (doc.admin !== undefined) {
      this.warn(
        ['control', 'admin'],
        doc.admin
          ? `admin is deprecated: use socket_level = "admin" and, for TCP, level = "admin" with token_file (admin = true gives admin on the socket${tokenFile === null ? ' only: without token_file TCP stays read' : ' and, after auth, on TCP'})`
          : 'admin is deprecated: use level = "read" and socket_level = "read" (which is what admin = false means)',
      );
    }
    const level = (doc.level as Level | undefined) ?? (legacy === 'admin' && tokenFile === null ? 'read' : legacy) ?? 'read';
    const socketLevel = (doc.socket_level as Level | undefined) ?? legacy ?? 'admin';
    if (level !== 'read' && tokenFile === null) {
      this.error(
        ['control', 'level'],
        `level = "${level}" needs token_file: a TCP session above read must present a token with "auth TOKEN"`,
      );
    }
    if (tokenFile !== null && level === 'read') {
      this.warn(['control', 'token_file'], 'token_file is set but level is "read": "auth" raises no session');
    }
    return {
      listen: doc.listen === undefined ? null : this.endpoint(doc.listen, ['control', 'listen']),
      socket: doc.socket ?? null,
      level,
      socketLevel,
      tokenFile,
      allow: [...allow], // the table is frozen; the caller's document must not be
      idleTimeoutMs: this.duration(doc.idle_timeout ?? '5m', ['control', 'idle_timeout']),
      ...this.controlHttp(doc, tokenFile),
    };
  }

  /** The HTTP face: off unless `http` is set; with no host it listens on loopback only. */
  private controlHttp(doc: NonNullable<ConfigDoc['control']>, tokenFile: string | null): Pick<ControlEntry, 'http' | 'httpLevel'> {
    const httpLevel = (doc.http_level ?? 'read') as Level;
    if (doc.http === undefined) return { http: null, httpLevel };
    const ep = this.endpoint(doc.http, ['control', 'http']);
    if (httpLevel !== 'read' && tokenFile === null) {
      this.warn(['control', 'http_level'], `http_level = "${httpLevel}" without token_file: every client the allow list admits may use the buttons`);
    }
    return { http: ep && { host: ep.host ?? '127.0.0.1', port: ep.port }, httpLevel };
  }

  /** `show NAME` must mean the listener: a name that is a `show` subcommand, or holds spaces, could not. */
  private checkListenerName(name: string, path: PathSegment[]): void {
    if (SHOW_SUBCOMMANDS.includes(name)) {
      this.error(path, `listener name "${name}" clashes with the control command "show ${name}": choose another name`);
    } else if (name === '' || /[\s\x00-\x1f\x7f]/.test(name)) {
      this.error(path, `listener name ${JSON.stringify(name)} must be one word (no spaces or control characters), as control commands take it as one`);
    }
  }

  private listener(
    name: string,
    doc: ListenerDoc,
    defaults: { connectTimeoutMs: number; idleTimeoutMs: number },
  ): ListenerEntry {
    const at = (...rest: PathSegment[]): PathSegment[] => ['listeners', name, ...rest];
    this.checkListenerName(name, at());
    const parsedListen = this.endpoint(doc.listen, at('listen'));
    const listen = parsedListen ?? { host: null, port: 0 };
    const packetDump = (doc.packet_dump ?? 'off') as PacketDump;
    if (doc.packet_dump_file !== undefined && packetDump === 'off') {
      this.warn(at('packet_dump_file'), 'packet_dump_file is set but packet_dump is "off": nothing is dumped');
    }
    if (doc.source !== undefined && isIP(doc.source) === 0 && !/^[A-Za-z0-9.-]+$/.test(doc.source)) {
      this.error(at('source'), `invalid source address "${doc.source}"`);
    }
    return {
      name,
      listen,
      source: doc.source ?? null,
      sourceHost: doc.source ?? null,
      hashFailover: doc.hash_failover ?? false,
      autodisable: doc.autodisable ?? false,
      packetDump,
      packetDumpFile: doc.packet_dump_file ?? null,
      connectTimeoutMs:
        doc.connect_timeout === undefined ? defaults.connectTimeoutMs : this.duration(doc.connect_timeout, at('connect_timeout')),
      idleTimeoutMs:
        doc.idle_timeout === undefined ? defaults.idleTimeoutMs : this.duration(doc.idle_timeout, at('idle_timeout')),
      backlog: doc.backlog ?? DEFAULT_BACKLOG,
      queue: doc.queue
        ? { max: doc.queue.max ?? 100, timeoutMs: this.duration(doc.queue.timeout ?? '10s', at('queue', 'timeout')) }
        : null,
      acceptProxy: doc.accept_proxy ? { timeoutMs: this.acceptProxyTimeout(doc, at('accept_proxy_timeout')) } : null,
      // With an unparseable listen address there is no default backend port to check against (null).
      groups: this.srvLast(doc, doc.groups.map((g, i) => this.group(g, parsedListen ? listen.port : null, at('groups', i), doc.source)), at),
    };
  }

  /** SRV priorities become failover groups after the srv backend's group: it must be the last group. */
  private srvLast(doc: ListenerDoc, groups: GroupEntry[], at: (...rest: PathSegment[]) => PathSegment[]): GroupEntry[] {
    groups.forEach((g, gi) => {
      if (gi === groups.length - 1) return;
      for (const u of g.unresolved ?? []) {
        if (u.backend.srv) this.error(at('groups', gi, 'backends', u.at, 'srv'), `an srv backend belongs in the listener's last group: its higher SRV priorities become the failover groups after it (this is group ${gi} of ${doc.groups.length})`);
      }
    });
    return groups;
  }

  private acceptProxyTimeout(doc: ListenerDoc, path: PathSegment[]): number {
    const ms = this.duration(doc.accept_proxy_timeout ?? '3s', path);
    if (ms === 0) this.error(path, 'accept_proxy_timeout must be more than 0: a client that never sends its header would hold a connection for ever');
    return ms;
  }

  /**
   * The group's checks merged with a backend's overrides; null when checks are off. For an override only
   * its own keys are reported: the group's values were checked (and reported) at the group.
   */
  private health(group: HealthDoc | undefined, own: HealthDoc | undefined, path: PathSegment[]): HealthEntry | null {
    if (!group && !own) return null;
    const h: HealthDoc = { ...group, ...own };
    const report = (key: keyof HealthDoc, message: string): void => {
      if (!own || key in own) this.error([...path, key], message);
    };
    const dur = (key: 'interval' | 'timeout', fallback: string): number => {
      const parsed = parseDuration(h[key] ?? fallback);
      if (parsed.ok) return parsed.value;
      report(key, parsed.error);
      return 1;
    };
    if (h.enabled === false) return null;
    let expect: HealthEntry['expect'] = null;
    if (h.expect !== undefined) {
      const m = /^\/(.*)\/([a-z]*)$/s.exec(h.expect);
      if (m) {
        try {
          new RegExp(m[1]!, m[2]);
          expect = { regex: m[1]!, flags: m[2]! };
        } catch (err) {
          report('expect', `invalid regular expression ${h.expect}: ${(err as Error).message}`);
        }
      } else {
        expect = { text: h.expect };
      }
    }
    let port: number | null = null;
    if (h.port !== undefined) {
      const p = parsePort(h.port);
      if (p.ok) port = p.value;
      else report('port', p.error);
    }
    const timeoutMs = dur('timeout', '1s');
    const intervalMs = dur('interval', '2s');
    if (intervalMs === 0) report('interval', 'interval must be more than 0');
    if (timeoutMs === 0) report('timeout', 'timeout must be more than 0');
    return { intervalMs, timeoutMs, rise: h.rise ?? 2, fall: h.fall ?? 3, send: h.send ?? null, expect, port };
  }

  private group(doc: GroupDoc, listenPort: number | null, path: PathSegment[], source: string | undefined): GroupEntry {
    const policy = (doc.policy ?? 'rr') as Policy;
    if (doc.backends.length === 0) {
      const why =
        policy === 'hash'
          ? 'a hash group needs at least one backend (balance crashed with SIGFPE on this)'
          : 'group has no backends';
      this.error([...path, 'backends'], why, Code.CONFIG_EMPTY_GROUP);
    }
    const health = this.health(doc.health, undefined, [...path, 'health']);
    const backends = doc.backends.map((b, i) => this.backend(b, listenPort, [...path, 'backends', i], doc.health, health, source));
    this.checkNames(doc, backends, path);
    // SRV backends are only expanded (by DNS discovery): until then they are kept aside, never connected to.
    const unresolved = backends.flatMap((backend, at) => (backend.srv ? [{ at, backend }] : []));
    return {
      policy,
      health,
      backends: unresolved.length > 0 ? backends.filter((b) => !b.srv) : backends,
      ...(unresolved.length > 0 ? { unresolved } : {}),
      sendProxy: (doc.send_proxy as ProxyVersion | undefined) ?? null,
      checkSendProxy: doc.check_send_proxy ?? null,
    };
  }

  /**
   * A configured name must say which backend it is: unique within the group, and not the default name
   * ("host:port") of another one. Unnamed backends may repeat (balance allowed a channel twice).
   */
  private checkNames(doc: GroupDoc, backends: BackendEntry[], path: PathSegment[]): void {
    const explicit = (i: number): boolean => typeof doc.backends[i] === 'object' && (doc.backends[i] as BackendDoc).name !== undefined;
    backends.forEach((b, i) => {
      if (!explicit(i)) return;
      const at = [...path, 'backends', i, 'name'];
      if (!NAME.test(b.name)) {
        this.error(at, `invalid backend name ${JSON.stringify(b.name)}: use letters, digits and _ . : @ - [ ], at most 64`);
        return;
      }
      const other = backends.findIndex((o, j) => j !== i && o.name === b.name && (j < i || !explicit(j)));
      if (other >= 0) this.error(at, `backend name "${b.name}" is already used by backends[${other}] of this group`);
    });
  }

  private backend(
    doc: string | BackendDoc,
    listenPort: number | null,
    path: PathSegment[],
    groupHealth: HealthDoc | undefined,
    groupEntry: HealthEntry | null,
    source: string | undefined,
  ): BackendEntry {
    let host: string;
    let port: number | null = null;
    let maxc = 0;
    let weight = 1;
    let enabled = true;
    if (typeof doc === 'string') {
      const parsed = parseBackendString(doc);
      if (!parsed.ok) {
        this.error(path, parsed.error);
        return { name: doc, host: doc, port: 1, address: doc, maxc: 0, weight: 1, enabled: false, key: doc, health: null };
      }
      host = parsed.value.host;
      port = parsed.value.port;
      maxc = parsed.value.maxc ?? 0;
    } else if (doc.srv !== undefined) {
      if (doc.host !== undefined || doc.port !== undefined) this.error(path, 'a backend has either srv, or host (and port): the SRV records give hosts and ports');
      return this.srvBackend(doc, path, groupHealth, groupEntry);
    } else if (doc.host === undefined) {
      this.error(path, 'a backend table needs host (or srv, with [global.dns])');
      return { name: '?', host: '?', port: 1, address: '?', maxc: 0, weight: 1, enabled: false, key: '?', health: null };
    } else {
      const h = doc.host ?? '';
      host = h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
      if (doc.port !== undefined) {
        const p = parsePort(doc.port);
        if (p.ok) port = p.value;
        else this.error([...path, 'port'], p.error);
      }
      maxc = doc.maxc ?? 0;
      weight = doc.weight ?? 1;
      enabled = doc.enabled ?? true;
      if (weight < 0) this.error([...path, 'weight'], `weight must be >= 0, not ${weight}`);
    }
    if (port === null) {
      if (listenPort === 0 && !(typeof doc === 'object' && doc.port !== undefined)) {
        this.error(path, 'backend port missing, and the listener port is 0 so it cannot be the default');
      }
      port = listenPort || 1;
    }
    if (source !== undefined && isIP(source) !== 0 && isIP(host) !== 0 && isIP(source) !== isIP(host)) {
      this.error(path, `backend ${host} is IPv${isIP(host)} but the listener's source address ${source} is IPv${isIP(source)}`);
    }
    const own = typeof doc === 'object' ? doc.health : undefined;
    // Without overrides a backend shares its group's entry (so a problem in it is reported once).
    const health = own ? this.health(groupHealth, own, [...path, 'health']) : groupEntry;
    const key = backendKey(host, port);
    const name = typeof doc === 'object' && doc.name !== undefined ? doc.name : key;
    const entry: BackendEntry = { name, host, port, address: host, maxc, weight, enabled, key, health };
    if (typeof doc === 'object' && (doc.send_proxy !== undefined || doc.check_send_proxy !== undefined)) {
      return {
        ...entry,
        ...(doc.send_proxy !== undefined ? { sendProxy: doc.send_proxy as ProxyVersion | 'off' } : {}),
        ...(doc.check_send_proxy !== undefined ? { checkSendProxy: doc.check_send_proxy } : {}),
      };
    }
    return entry;
  }

  private srvBackend(doc: BackendDoc, path: PathSegment[], groupHealth: HealthDoc | undefined, groupEntry: HealthEntry | null): BackendEntry {
    const srv = doc.srv!;
    if (!this.dnsOn) this.error([...path, 'srv'], 'an srv backend needs [global.dns]: SRV records are followed by DNS discovery');
    if (!/^_[A-Za-z0-9-]+\._(tcp|udp)\.[A-Za-z0-9.-]+$/.test(srv)) {
      this.error([...path, 'srv'], `"${srv}" is not an SRV name: "_service._tcp.domain" (e.g. "_imap._tcp.mail.example")`);
    }
    const health = doc.health ? this.health(groupHealth, doc.health, [...path, 'health']) : groupEntry;
    const entry: BackendEntry = {
      name: doc.name ?? srv, host: srv, port: 0, address: '', maxc: doc.maxc ?? 0, weight: 1, enabled: doc.enabled ?? true, key: srv, health, srv: true,
    };
    return {
      ...entry,
      ...(doc.send_proxy !== undefined ? { sendProxy: doc.send_proxy as ProxyVersion | 'off' } : {}),
      ...(doc.check_send_proxy !== undefined ? { checkSendProxy: doc.check_send_proxy } : {}),
    };
  }

  private checkAddressClashes(listeners: ListenerEntry[], control: ControlEntry | null): void {
    const seen: { ep: Endpoint; path: PathSegment[] }[] = [];
    const check = (ep: Endpoint, path: PathSegment[]): void => {
      if (ep.port === 0) return; // every port-0 listener gets its own free port
      const clash = seen.find(
        (s) => s.ep.port === ep.port && (isWildcard(s.ep.host) || isWildcard(ep.host) || s.ep.host === ep.host),
      );
      if (clash) {
        const what = formatHostPort(ep.host, ep.port);
        this.error(path, `address ${what} is already used by ${clash.path.slice(0, -1).join('.')}`, Code.CONFIG_DUPLICATE_LISTEN);
      }
      seen.push({ ep, path });
    };
    if (control?.listen) check(control.listen, ['control', 'listen']);
    if (control?.http) check(control.http, ['control', 'http']);
    for (const l of listeners) check(l.listen, ['listeners', l.name, 'listen']);
  }
}

/**
 * listen(2)'s backlog when a listener sets none: what lb always used (Node's own default), kept so
 * that an upgrade changes nothing; the kernel caps it at net.core.somaxconn.
 */
const DEFAULT_BACKLOG = 511;

/** Backend names appear bare in text logs and CSV: no spaces, commas or quotes. */
const NAME = /^[A-Za-z0-9_.:@\[\]-]{1,64}$/;

/** A listener on the wildcard address conflicts with every other listener on the same port. */
function isWildcard(host: string | null): boolean {
  return host === null || host === '0.0.0.0' || host === '::';
}

export function isCidr(text: string): boolean {
  const m = /^(.+)\/(\d{1,3})$/.exec(text);
  const family = isIP(m ? m[1]! : text);
  if (family === 0) return false;
  if (!m) return true;
  return Number(m[2]) <= (family === 4 ? 32 : 128);
}
