// DNS discovery, the network part: asks the configured name servers for the A and AAAA records of
// every backend host name, each again when its TTL runs out, and swaps in a re-expanded table when a
// name's addresses change (through the Runtime's `applyDiscovered`, one table change at a time with
// reloads and edits). Node's own resolver (c-ares) gives the TTLs; nothing runs on the data path.

import { lookup, Resolver } from 'node:dns/promises';
import type { DnsEntry, RoutingTable } from '../config/table.ts';
import { Code } from '../errors.ts';
import type { Logger } from '../log.ts';
import { isIP } from 'node:net';
import { addressesOf, discoveryNames, expandTable, srvNames, type SrvRecord } from './expand.ts';
import { NameWatch, type Outcome } from './watch.ts';

/** What discovery drives: the Runtime. */
export interface DiscoveryTarget {
  /** The running table (its `[global.dns]`, and the names it has). */
  readonly table: RoutingTable;
  /** Swaps in `expand(config table)`, serialized with reloads and edits. */
  applyDiscovered(expand: (configured: RoutingTable) => RoutingTable): Promise<void>;
}

/** Answers that say the name has no address (believed at once), as opposed to a failure to get an answer. */
const NO_ADDRESS = new Set(['ENOTFOUND', 'ENODATA']);

/** Watches of SRV names are keyed "srv:NAME" (a host name has no colon). */
const SRV_PREFIX = 'srv:';

/**
 * One lookup of an SRV name; never rejects. Its records are carried as text ("priority weight port
 * target", as a zone file writes them) so that NameWatch compares and holds them like addresses.
 * Node's resolver gives no TTL for SRV: the name is asked again every min_ttl (ttlSec 0, clamped).
 */
export async function lookupSrv(resolver: Resolver, name: string): Promise<Outcome> {
  try {
    const records = await resolver.resolveSrv(name);
    if (records.length === 0) return { kind: 'none', why: 'no SRV record' };
    return { kind: 'answer', addresses: records.map((r) => `${r.priority} ${r.weight} ${r.port} ${r.name}`), ttlSec: 0 };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    if (NO_ADDRESS.has(code)) return { kind: 'none', why: code === 'ENOTFOUND' ? 'NXDOMAIN' : 'no SRV record' };
    return { kind: 'failed', why: code };
  }
}

function decodeSrv(text: string): SrvRecord {
  const [priority, weight, port, target] = text.split(' ');
  return { priority: Number(priority), weight: Number(weight), port: Number(port), target: target! };
}

/**
 * One lookup of A and AAAA; never rejects. With the system's name servers (`servers` unset), a name the
 * DNS does not answer for is also looked up as the C library does (/etc/hosts, search domains), whose
 * answers carry no TTL: `fallbackTtlSec` stands for it.
 */
export async function lookupName(resolver: Resolver, name: string, system: boolean, fallbackTtlSec: number, timeoutMs: number): Promise<Outcome> {
  const dns = await lookupDns(resolver, name);
  if (!system || dns.kind === 'answer') return dns;
  let timer: NodeJS.Timeout | undefined;
  try {
    // getaddrinfo cannot be cancelled: past the timeout its answer is not waited for.
    const late = new Promise<null>((resolve) => (timer = setTimeout(resolve, timeoutMs, null)));
    const all = await Promise.race([lookup(name, { all: true }), late]);
    if (all !== null && all.length > 0) return { kind: 'answer', addresses: all.map((a) => a.address), ttlSec: fallbackTtlSec };
  } catch {
    // the DNS outcome stands
  } finally {
    clearTimeout(timer);
  }
  return dns;
}

async function lookupDns(resolver: Resolver, name: string): Promise<Outcome> {
  const [a, aaaa] = await Promise.allSettled([resolver.resolve4(name, { ttl: true }), resolver.resolve6(name, { ttl: true })]);
  const records = [...(a.status === 'fulfilled' ? a.value : []), ...(aaaa.status === 'fulfilled' ? aaaa.value : [])];
  if (records.length > 0) {
    return { kind: 'answer', addresses: records.map((r) => r.address), ttlSec: Math.min(...records.map((r) => r.ttl)) };
  }
  const codes = [a, aaaa].map((r) => (r.status === 'rejected' ? ((r.reason as NodeJS.ErrnoException).code ?? 'error') : 'ENODATA'));
  if (codes.every((c) => NO_ADDRESS.has(c))) return { kind: 'none', why: codes.includes('ENOTFOUND') ? 'NXDOMAIN' : 'no A or AAAA record' };
  return { kind: 'failed', why: [...new Set(codes.filter((c) => !NO_ADDRESS.has(c)))].join(',') };
}

export class DnsDiscovery {
  private readonly target: DiscoveryTarget;
  private readonly log: Logger;
  private readonly watches = new Map<string, NameWatch>();
  private readonly due = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  private cycle: Promise<void> | null = null;
  private stopped = false;
  private resolver: Resolver | null = null;
  private resolverFor = '';
  /** A swap failed: the next cycle swaps even if no name changed again. */
  private pendingApply = false;
  /** The last apply's error while it fails (logged when it changes). */
  private applyError: string | null = null;

  constructor(target: DiscoveryTarget, log: Logger) {
    this.target = target;
    this.log = log;
  }

  /** Looks every name up once (bounded by the query timeout), swaps in the expansion, then follows the TTLs. */
  async start(): Promise<void> {
    this.sync();
    await this.runDue(true);
  }

  /**
   * After a reload (the new file's table runs with its names resolved once): follows its names (new
   * ones looked up at once, gone ones dropped) and swaps the expansion in again without waiting for a TTL.
   */
  sync(): void {
    this.pendingApply = true;
    this.refreshWatches();
    if (this.stopped) return;
    if (this.cycle === null && this.due.size > 0) void this.runDue(false);
    else this.arm();
  }

  stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    return this.cycle ?? Promise.resolve();
  }

  /**
   * A freshly loaded table expanded with the answers known now (a reload or a restart of the state): so
   * that between loading the file and the next answer, no connect goes to an unexpanded name.
   */
  expandNow(table: RoutingTable): RoutingTable {
    return expandTable(table, this.answers(), this.srvAnswers());
  }

  /** The addresses each name has now (for show and tests). */
  answers(): Map<string, readonly string[]> {
    const out = new Map<string, readonly string[]>();
    for (const [n, w] of this.watches) if (w.addresses !== null && !n.startsWith(SRV_PREFIX)) out.set(n, w.addresses);
    return out;
  }

  /** The records each SRV name has now. */
  srvAnswers(): Map<string, SrvRecord[]> {
    const out = new Map<string, SrvRecord[]>();
    for (const [n, w] of this.watches) if (w.addresses !== null && n.startsWith(SRV_PREFIX)) out.set(n.slice(SRV_PREFIX.length), w.addresses.map(decodeSrv));
    return out;
  }

  /**
   * Watches what the running table needs: its names, its SRV names, and the targets those SRV names
   * have now. New ones are due at once; returns how many were added.
   */
  private refreshWatches(): number {
    const t = this.target.table;
    const wanted = new Set([...discoveryNames(t), ...srvNames(t).map((n) => SRV_PREFIX + n)]);
    for (const recs of this.srvAnswers().values()) for (const r of recs) if (isIP(r.target) === 0) wanted.add(r.target);
    for (const n of [...this.watches.keys()]) {
      if (!wanted.has(n)) {
        this.watches.delete(n);
        this.due.delete(n);
      }
    }
    let added = 0;
    for (const n of wanted) {
      if (this.watches.has(n)) continue;
      this.watches.set(n, new NameWatch(n));
      this.due.set(n, 0);
      added++;
    }
    return added;
  }

  private dns(): DnsEntry | null {
    return this.target.table.global.dns ?? null;
  }

  private resolverOf(dns: DnsEntry): Resolver {
    const id = `${dns.timeoutMs}|${dns.servers.join(',')}`;
    if (this.resolver === null || this.resolverFor !== id) {
      const r = new Resolver({ timeout: dns.timeoutMs, tries: 1 });
      if (dns.servers.length > 0) r.setServers([...dns.servers]);
      this.resolver = r;
      this.resolverFor = id;
    }
    return this.resolver;
  }

  private arm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped || this.cycle !== null || this.due.size === 0) return;
    const next = Math.min(...this.due.values());
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.runDue(false);
    }, Math.max(0, next - Date.now()));
    this.timer.unref();
  }

  /** Looks up every name that is due, then swaps in a new expansion if any name's addresses changed. */
  private async runDue(all: boolean): Promise<void> {
    if (this.cycle !== null) return this.cycle;
    const dns = this.dns();
    if (dns === null || this.stopped) return;
    const run = (async () => {
      const now = Date.now();
      let names = [...this.due].filter(([, at]) => all || at <= now).map(([n]) => n);
      const resolver = this.resolverOf(dns);
      const system = dns.servers.length === 0;
      let changed = this.pendingApply;
      // SRV answers may name new targets: those are looked up before the swap (a few passes at most).
      for (let pass = 0; pass < 3 && names.length > 0; pass++) {
        const outcomes = await Promise.all(
          names.map(async (n) => [n, n.startsWith(SRV_PREFIX) ? await lookupSrv(resolver, n.slice(SRV_PREFIX.length)) : await lookupName(resolver, n, system, dns.minTtlMs / 1000, dns.timeoutMs)] as const),
        );
        const at = Date.now();
        for (const [name, outcome] of outcomes) {
          const w = this.watches.get(name);
          if (!w) continue; // dropped by a reload meanwhile
          const step = w.step(outcome, at, dns);
          this.due.set(name, step.nextAt);
          if (step.note) this.log.log(step.note.level, step.note.event, { name, detail: step.note.detail });
          changed ||= step.changed;
        }
        if (this.refreshWatches() === 0) break;
        names = [...this.due].filter(([, due]) => due === 0).map(([n]) => n);
      }
      if (changed && !this.stopped) {
        const answers = this.answers();
        const srv = this.srvAnswers();
        try {
          // The same table back (same object) when nothing changes: the Runtime then swaps nothing.
          let swapped: RoutingTable | null = null;
          await this.target.applyDiscovered((configured) => {
            const next = expandTable(configured, answers, srv);
            if (addressesOf(next) === addressesOf(configured)) return configured;
            return (swapped = next);
          });
          this.pendingApply = false;
          this.applyError = null;
          if (swapped !== null) {
            let n = 0;
            for (const l of (swapped as RoutingTable).listeners) for (const g of l.groups) n += g.backends.filter((b) => b.discovered).length;
            this.log.log('info', 'dns-applied', { discovered: n, names: answers.size });
          }
        } catch (err) {
          this.pendingApply = true;
          if (this.stopped) return; // lb is stopping: nothing to swap any more
          // Said once while it fails the same way: a set past the table limit fails at every answer.
          const error = (err as Error).message;
          if (error !== this.applyError) {
            const limit = (err as { code?: unknown }).code === Code.TABLE_LIMIT;
            this.log.log(limit ? 'warn' : 'error', 'dns-apply-failed', {
              ...(limit ? { code: Code.TABLE_LIMIT } : {}),
              error,
              detail: 'the running backends are unchanged; retried at the next answer',
            });
          }
          this.applyError = error;
          for (const n of this.watches.keys()) this.due.set(n, Math.min(this.due.get(n) ?? Infinity, Date.now() + dns.minTtlMs));
        }
      }
    })();
    this.cycle = run;
    try {
      await run;
    } finally {
      this.cycle = null;
      this.arm();
    }
  }
}
