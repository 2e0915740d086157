// Stage 4 of the config pipeline: host names to addresses, once, at start and on reload.
//
// Connects then go to an IP and never wait for DNS on the data path (tcpbalance and txLoadBalancer
// resolved on every connect). An unresolvable name is a warning for `lb --check` (CI's DNS is not
// production's) and an error for `lb run`.

import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { Code } from '../errors.ts';
import { diagnostic, type Diagnostic } from './diagnostics.ts';
import type { PathSegment } from './locate.ts';
import type { RoutingTable } from './table.ts';

const LOOKUP_TIMEOUT_MS = 5000;

async function lookupOne(host: string): Promise<string | Error> {
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

export async function resolveTable(
  table: RoutingTable,
  severity: 'error' | 'warning',
): Promise<{ table: RoutingTable; diagnostics: Diagnostic[] }> {
  const names = new Set<string>();
  const want = (host: string | null): void => {
    if (host !== null && isIP(host) === 0) names.add(host);
  };
  for (const l of table.listeners) {
    want(l.listen.host);
    want(l.source);
    for (const g of l.groups) for (const b of g.backends) want(b.host);
  }
  want(table.control?.listen?.host ?? null);

  const results = new Map<string, string | Error>();
  await Promise.all([...names].map(async (n) => results.set(n, await lookupOne(n))));

  const diagnostics: Diagnostic[] = [];
  const check = (host: string | null, path: PathSegment[]): void => {
    const r = host === null ? undefined : results.get(host);
    if (r instanceof Error) {
      const msg = `cannot resolve host "${host}": ${(r as NodeJS.ErrnoException).code ?? r.message}`;
      diagnostics.push(diagnostic(Code.CONFIG_RESOLVE, path, msg, severity));
    }
  };
  check(table.control?.listen?.host ?? null, ['control', 'listen']);
  const listeners = table.listeners.map((l) => {
    check(l.listen.host, ['listeners', l.name, 'listen']);
    check(l.source, ['listeners', l.name, 'source']);
    return {
      ...l,
      groups: l.groups.map((g, gi) => ({
        ...g,
        backends: g.backends.map((b, bi) => {
          check(b.host, ['listeners', l.name, 'groups', gi, 'backends', bi]);
          const r = results.get(b.host);
          return typeof r === 'string' ? { ...b, address: r } : b;
        }),
      })),
    };
  });
  return { table: { ...table, listeners }, diagnostics };
}
