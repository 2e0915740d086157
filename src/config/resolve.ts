// Stage 4 of the config pipeline: host names to addresses, once, at start and on reload.
//
// Connects then go to an IP and never wait for DNS on the data path (tcpbalance and txLoadBalancer
// resolved on every connect). An unresolvable name is a warning for `lb --check` (CI's DNS is not
// production's) and an error for `lb run`, except a backend's: lb starts without it (down, no traffic)
// and retries it, as HAProxy's `init-addr last,libc,none` (with `[global.dns]` discovery follows it;
// without, src/discovery/name-retry.ts), so that one name missing from the DNS at boot is not an outage.

import { lookup, Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import { Code } from '../errors.ts';
import { diagnostic, type Diagnostic } from './diagnostics.ts';
import type { PathSegment } from './locate.ts';
import type { GroupEntry, RoutingTable } from './table.ts';

const LOOKUP_TIMEOUT_MS = 5000;

/** What happens to a backend whose name does not resolve, with and without `[global.dns]`. */
const BACKEND_RETRY = {
  dns: 'DNS discovery retries it, and it takes no traffic until it resolves',
  retry: 'lb starts with this backend down and retries resolving it',
} as const;

export async function lookupOne(host: string): Promise<string | Error> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Error>((resolve) => {
    timer = setTimeout(() => resolve(new Error(`lookup timed out after ${LOOKUP_TIMEOUT_MS} ms`)), LOOKUP_TIMEOUT_MS);
  });
  try {
    return await Promise.race([lookup(host).then((r) => r.address), timeout]);
  } catch (err) {
    return err as Error;
  } finally {
    clearTimeout(timer);
  }
}

/** Every address of a source name: the one used must be of the family its backends are. */
async function lookupAll(host: string): Promise<{ address: string; family: number }[] | Error> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Error>((resolve) => {
    timer = setTimeout(() => resolve(new Error(`lookup timed out after ${LOOKUP_TIMEOUT_MS} ms`)), LOOKUP_TIMEOUT_MS);
  });
  try {
    return await Promise.race([lookup(host, { all: true }), timeout]);
  } catch (err) {
    return err as Error;
  } finally {
    clearTimeout(timer);
  }
}

export async function resolveTable(
  table: RoutingTable,
  severity: 'error' | 'warning',
): Promise<{ table: RoutingTable; diagnostics: Diagnostic[] }> {
  const names = new Set<string>();
  const want = (host: string | null): void => {
    if (host !== null && isIP(host) === 0) names.add(host);
  };
  const sourceNames = new Set<string>();
  for (const l of table.listeners) {
    want(l.listen.host);
    if (l.sourceHost !== null && isIP(l.sourceHost) === 0) sourceNames.add(l.sourceHost);
    for (const g of l.groups) for (const b of g.backends) want(b.host);
  }
  want(table.control?.listen?.host ?? null);

  const results = new Map<string, string | Error>();
  const sourceResults = new Map<string, { address: string; family: number }[] | Error>();
  await Promise.all([
    ...[...names].map(async (n) => results.set(n, await lookupOne(n))),
    ...[...sourceNames].map(async (n) => sourceResults.set(n, await lookupAll(n))),
  ]);

  const diagnostics: Diagnostic[] = [];
  const check = (host: string | null, path: PathSegment[], backend: 'dns' | 'retry' | null = null): void => {
    const r = host === null ? undefined : results.get(host);
    if (r instanceof Error) {
      const msg = `cannot resolve host "${host}": ${(r as NodeJS.ErrnoException).code ?? r.message}`;
      // A backend name that does not resolve yet takes no traffic and is retried: lb starts anyway.
      if (backend === null) diagnostics.push(diagnostic(Code.CONFIG_RESOLVE, path, msg, severity));
      else diagnostics.push(diagnostic(Code.CONFIG_RESOLVE, path, `${msg}; ${BACKEND_RETRY[backend]}`, 'warning'));
    }
  };
  check(table.control?.listen?.host ?? null, ['control', 'listen']);
  const listeners = table.listeners.map((l) => {
    check(l.listen.host, ['listeners', l.name, 'listen']);
    const groups = l.groups.map((g, gi) => ({
      ...g,
      backends: g.backends.map((b, bi) => {
        check(b.host, ['listeners', l.name, 'groups', gi, 'backends', bi], table.global.dns != null ? 'dns' : 'retry');
        const r = results.get(b.host);
        if (typeof r === 'string') return { ...b, address: r };
        if (r instanceof Error && table.global.dns == null) return { ...b, address: '', resolveError: (r as NodeJS.ErrnoException).code ?? r.message };
        return b;
      }),
    }));
    const source = l.sourceHost === null ? undefined : sourceResults.get(l.sourceHost);
    if (source === undefined) return { ...l, groups };
    const path: PathSegment[] = ['listeners', l.name, 'source'];
    if (source instanceof Error) {
      const msg = `cannot resolve source "${l.sourceHost}": ${(source as NodeJS.ErrnoException).code ?? source.message}`;
      diagnostics.push(diagnostic(Code.CONFIG_RESOLVE, path, msg, severity));
      return { ...l, groups };
    }
    const chosen = pickSource(l.sourceHost!, source, groups, path, severity, diagnostics, l.name);
    return { ...l, source: chosen ?? l.source, groups };
  });
  await checkSrvNames(table, diagnostics);
  return { table: { ...table, listeners }, diagnostics };
}

/**
 * The address of a source name to bind to: of the family the listener's backends are (a name such as
 * "localhost" may have both). Backends of the other family are reported, as compile does for literals.
 */
function pickSource(
  name: string,
  addresses: readonly { address: string; family: number }[],
  groups: readonly GroupEntry[],
  path: PathSegment[],
  severity: 'error' | 'warning',
  diagnostics: Diagnostic[],
  listener: string,
): string | null {
  const families = new Set<number>();
  for (const g of groups) for (const b of g.backends) if (isIP(b.address) !== 0) families.add(isIP(b.address));
  const wanted = families.size === 1 ? [...families][0]! : null;
  const chosen = addresses.find((a) => wanted === null || a.family === wanted) ?? null;
  if (!chosen) {
    const all = addresses.map((a) => a.address).join(', ') || 'no address';
    diagnostics.push(diagnostic(Code.CONFIG_RESOLVE, path, `source "${name}" resolves to ${all}: no IPv${wanted} address for its IPv${wanted} backends`, severity));
    return null;
  }
  groups.forEach((g, gi) =>
    g.backends.forEach((b, bi) => {
      const family = isIP(b.address);
      if (family !== 0 && family !== chosen.family) {
        const msg = `backend ${b.host} is IPv${family} but the listener's source address ${name} (${chosen.address}) is IPv${chosen.family}`;
        diagnostics.push(diagnostic(Code.CONFIG_VALUE, ['listeners', listener, 'groups', gi, 'backends', bi], msg, severity));
      }
    }),
  );
  return chosen.address;
}

/**
 * SRV backends are followed by DNS discovery, not resolved here: a name that has no SRV record now (a
 * typo, or a service not registered yet) is a warning, as an unresolvable host name is for --check.
 */
async function checkSrvNames(table: RoutingTable, diagnostics: Diagnostic[]): Promise<void> {
  const dns = table.global.dns;
  const srv: { name: string; path: PathSegment[] }[] = [];
  for (const l of table.listeners) {
    l.groups.forEach((g, gi) => {
      for (const u of g.unresolved ?? []) if (u.backend.srv) srv.push({ name: u.backend.host, path: ['listeners', l.name, 'groups', gi, 'backends', u.at, 'srv'] });
    });
  }
  if (!dns || srv.length === 0) return;
  const resolver = new Resolver({ timeout: Math.min(dns.timeoutMs, LOOKUP_TIMEOUT_MS), tries: 1 });
  if (dns.servers.length > 0) resolver.setServers([...dns.servers]);
  await Promise.all(
    srv.map(async ({ name, path }) => {
      // Only an answer that the name has no record says something about the config (a typo); a server
      // that cannot be reached here (CI, a laptop without the Consul agent) says nothing about it.
      try {
        if ((await resolver.resolveSrv(name)).length > 0) return;
        diagnostics.push(diagnostic(Code.CONFIG_RESOLVE, path, `SRV name "${name}" has no record now; DNS discovery keeps asking`, 'warning'));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
        if (code !== 'ENOTFOUND' && code !== 'ENODATA') return;
        diagnostics.push(diagnostic(Code.CONFIG_RESOLVE, path, `cannot resolve SRV name "${name}": ${code}; DNS discovery keeps asking`, 'warning'));
      }
    }),
  );
}
