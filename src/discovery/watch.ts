// DNS discovery, the clock of one name: when to ask again, and which addresses stand meanwhile. Pure
// (times are passed in), so every rule is tested without a DNS server:
// - an answer with addresses stands until its TTL runs out (clamped to min_ttl..max_ttl);
// - "no such name" / "no address" (NXDOMAIN, NODATA) is believed at once: the name has no backend;
// - a failure (timeout, SERVFAIL, refused) keeps the last good addresses for `hold_valid` after they
//   were last confirmed, then gives them up; failures are retried with back-off (1 s doubling to max_ttl).

import type { DnsEntry } from '../config/table.ts';

export type Outcome =
  | { readonly kind: 'answer'; readonly addresses: readonly string[]; /** Smallest TTL of the records, seconds. */ readonly ttlSec: number }
  | { readonly kind: 'none'; readonly why: string }
  | { readonly kind: 'failed'; readonly why: string };

export const RETRY_START_MS = 1000;

export interface Step {
  /** The addresses now (null: none known yet, the name was never answered). */
  readonly addresses: readonly string[] | null;
  /** True when `addresses` differ from before this outcome. */
  readonly changed: boolean;
  /** When to ask again (ms since epoch). */
  readonly nextAt: number;
  /** What to log, once per change of state (null: nothing new to say). */
  readonly note: { level: 'info' | 'warn'; event: string; detail: string } | null;
}

export class NameWatch {
  readonly name: string;
  addresses: readonly string[] | null = null;
  private lastGoodAt = 0;
  private retryMs = 0;
  /** The last state logged ("ok", "none", "failed-held", "failed-expired"): logs say changes, not lookups. */
  private said = '';

  constructor(name: string) {
    this.name = name;
  }

  step(outcome: Outcome, now: number, dns: DnsEntry): Step {
    const before = this.addresses;
    let note: Step['note'] = null;
    let nextAt: number;
    const say = (state: string, level: 'info' | 'warn', event: string, detail: string): void => {
      if (this.said !== state || (state === 'ok' && !same(before, this.addresses))) note = { level, event, detail };
      this.said = state;
    };
    if (outcome.kind === 'answer') {
      this.addresses = [...outcome.addresses].sort();
      this.lastGoodAt = now;
      this.retryMs = 0;
      nextAt = now + clamp(outcome.ttlSec * 1000, dns.minTtlMs, dns.maxTtlMs);
      say('ok', 'info', 'dns-resolved', `${this.addresses.join(',')} (ttl ${outcome.ttlSec}s)`);
    } else {
      this.retryMs = this.retryMs === 0 ? RETRY_START_MS : Math.min(this.retryMs * 2, Math.max(dns.maxTtlMs, RETRY_START_MS));
      nextAt = now + this.retryMs;
      if (outcome.kind === 'none') {
        this.addresses = [];
        say('none', 'warn', 'dns-no-address', `${outcome.why}: no backend for this name until it resolves`);
      } else if (this.addresses !== null && this.addresses.length > 0 && now - this.lastGoodAt < dns.holdValidMs) {
        const left = Math.ceil((this.lastGoodAt + dns.holdValidMs - now) / 1000);
        say('failed-held', 'warn', 'dns-failed', `${outcome.why}: keeping ${this.addresses.join(',')} for up to ${left}s (hold_valid)`);
      } else if (this.addresses === null) {
        // Never answered: what start-up resolved (the system's resolver) stands, as HAProxy's init-addr libc.
        say('failed-expired', 'warn', 'dns-failed', `${outcome.why}: no answer yet, retrying (the address resolved at start, if any, stands)`);
      } else {
        const had = this.addresses.length > 0;
        this.addresses = [];
        say('failed-expired', 'warn', 'dns-failed', had ? `${outcome.why}: hold_valid ran out, the name's backends are removed` : `${outcome.why}: still no answer, retrying`);
      }
    }
    return { addresses: this.addresses, changed: !same(before, this.addresses), nextAt, note };
  }
}

function clamp(v: number, lo: number, hi: number): number {
  return Math.min(Math.max(v, lo), hi);
}

function same(a: readonly string[] | null, b: readonly string[] | null): boolean {
  if (a === null || b === null) return a === b;
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
