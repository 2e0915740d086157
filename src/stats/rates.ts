// Per-second rates of counters that only grow (HAProxy's `rate` and `rate_max` in `show stat`): the
// supervisor samples every total once a second; the rate is the increase over the last second.

export class RateMeter {
  private readonly last = new Map<string, { total: number; at: number; rate: number; max: number }>();

  /** Records `total` for `key` at `now` (ms); a counter that went down (a `reset`) restarts from there. */
  sample(key: string, total: number, now: number): void {
    const s = this.last.get(key);
    if (!s) {
      this.begin(key, total, now);
      return;
    }
    const dt = (now - s.at) / 1000;
    const rate = dt > 0 && total >= s.total ? Math.round((total - s.total) / dt) : 0;
    s.total = total;
    s.at = now;
    s.rate = rate;
    if (rate > s.max) s.max = rate;
  }

  /**
   * The baseline of a counter that starts now (lb's start, a listener or backend a reload adds), unless
   * it is known: what it counts from here on falls into its first second, instead of being taken as
   * the baseline by the first sample.
   */
  begin(key: string, total: number, now: number): void {
    if (!this.last.has(key)) this.last.set(key, { total, at: now, rate: 0, max: 0 });
  }

  rate(key: string): number {
    return this.last.get(key)?.rate ?? 0;
  }

  max(key: string): number {
    return this.last.get(key)?.max ?? 0;
  }

  /** Forgets keys not in `keep` (removed listeners and backends). */
  retain(keep: ReadonlySet<string>): void {
    for (const k of this.last.keys()) if (!keep.has(k)) this.last.delete(k);
  }
}

/** The last failures (connects and checks), newest last, for `show errors`. */
export interface FailureRecord {
  readonly at: number;
  readonly listener: string;
  readonly group: number;
  readonly backend: string;
  readonly by: 'traffic' | 'check';
  readonly reason: string;
}

export class FailureLog {
  private readonly items: FailureRecord[] = [];
  private readonly limit: number;
  constructor(limit = 100) {
    this.limit = limit;
  }
  add(r: FailureRecord): void {
    this.items.push(r);
    if (this.items.length > this.limit) this.items.splice(0, this.items.length - this.limit);
  }
  list(): readonly FailureRecord[] {
    return this.items;
  }
}
