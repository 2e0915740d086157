// Rates over the last minutes, for the status page's charts: one sample a second, kept in fixed rings.
//
// Counters (connections, bytes each way) are recorded per listener and per backend; a sample is the
// per-second rate between two consecutive snapshots. The rings are preallocated (capacity samples of
// Float64 each), so ten minutes of history costs the same memory on day one and on day ninety and the
// sampler allocates nothing per tick but the snapshot it is handed.

import type { Snapshot } from './snapshot.ts';

/** Ten minutes of one-second samples. */
export const HISTORY_SAMPLES = 600;

/** What one series counts. */
interface Counts {
  total: number;
  sent: number;
  rcvd: number;
}

class Series {
  /** Rates per second, parallel to the timestamps ring: connections, bytes client→backend, backend→client. */
  readonly conns: Float64Array;
  readonly sent: Float64Array;
  readonly rcvd: Float64Array;
  last: Counts;
  seen = 0;

  constructor(capacity: number, counts: Counts) {
    this.conns = new Float64Array(capacity).fill(NaN);
    this.sent = new Float64Array(capacity).fill(NaN);
    this.rcvd = new Float64Array(capacity).fill(NaN);
    this.last = counts;
  }
}

/** One series as sent to the page: three arrays of rates, oldest first, null where there was no sample. */
export type SeriesJson = [conns: (number | null)[], sent: (number | null)[], rcvd: (number | null)[]];

export interface HistoryJson {
  /** Sample times (ms since the epoch), oldest first. */
  t: number[];
  series: Record<string, SeriesJson>;
}

/** The id of a listener's series. */
export const listenerSeries = (listener: string): string => `L ${listener}`;
/** The id of a backend's series: by key (host:port), so it survives another backend's removal. */
export const backendSeries = (listener: string, group: number, key: string): string => `B ${listener} ${group} ${key}`;

/**
 * A counter that went down was reset (`reset`, a reassigned slot): like Prometheus's rate(), count the
 * new value as the increase since the reset instead of a negative rate.
 */
function increase(now: number, before: number): number {
  return now >= before ? now - before : now;
}

const round = (v: number): number => Math.round(v * 1000) / 1000;

export class History {
  readonly capacity: number;
  private readonly times: Float64Array;
  /** Index of the next slot to write. */
  private head = 0;
  private count = 0;
  private lastNow = NaN;
  private readonly series = new Map<string, Series>();

  constructor(capacity = HISTORY_SAMPLES) {
    if (!Number.isInteger(capacity) || capacity < 2) throw new RangeError(`history capacity must be an integer >= 2, not ${capacity}`);
    this.capacity = capacity;
    this.times = new Float64Array(capacity);
  }

  /** Samples held (at most `capacity`). */
  get length(): number {
    return this.count;
  }

  /**
   * Adds the rates since the previous snapshot. The first snapshot only primes the counters; one taken
   * at or before the previous one (a clock step backwards) primes again instead of dividing by zero.
   */
  record(snap: Snapshot): void {
    const dtSec = (snap.now - this.lastNow) / 1000;
    const primed = Number.isFinite(dtSec) && dtSec > 0;
    const slot = this.head;
    const seen = new Set<string>();
    const put = (id: string, c: Counts): void => {
      seen.add(id);
      let s = this.series.get(id);
      if (!s) {
        s = new Series(this.capacity, c);
        this.series.set(id, s);
      }
      if (primed) {
        s.conns[slot] = s.seen > 0 ? round(increase(c.total, s.last.total) / dtSec) : NaN;
        s.sent[slot] = s.seen > 0 ? round(increase(c.sent, s.last.sent) / dtSec) : NaN;
        s.rcvd[slot] = s.seen > 0 ? round(increase(c.rcvd, s.last.rcvd) / dtSec) : NaN;
      }
      s.last = { total: c.total, sent: c.sent, rcvd: c.rcvd };
      s.seen++;
    };
    for (const l of snap.listeners) {
      put(listenerSeries(l.name), l);
      for (const g of l.groups) for (const b of g.backends) put(backendSeries(l.name, g.index, b.entry.key), b);
    }
    // A backend or listener that is gone has no row to draw its chart in.
    for (const id of [...this.series.keys()]) if (!seen.has(id)) this.series.delete(id);
    this.lastNow = snap.now;
    if (!primed) return;
    this.times[slot] = snap.now;
    this.head = (slot + 1) % this.capacity;
    this.count = Math.min(this.count + 1, this.capacity);
  }

  /** Ring positions of the samples newer than `since` (ms), oldest first. */
  private slots(since: number): number[] {
    const out: number[] = [];
    for (let i = this.count; i > 0; i--) {
      const slot = (this.head - i + this.capacity) % this.capacity;
      if (this.times[slot]! > since) out.push(slot);
    }
    return out;
  }

  /** The samples newer than `since` (default: all), ready for JSON.stringify. */
  toJSON(since = -Infinity): HistoryJson {
    const slots = this.slots(since);
    const pick = (a: Float64Array): (number | null)[] => slots.map((i) => (Number.isNaN(a[i]!) ? null : a[i]!));
    const series: Record<string, SeriesJson> = {};
    for (const [id, s] of this.series) series[id] = [pick(s.conns), pick(s.sent), pick(s.rcvd)];
    return { t: slots.map((i) => this.times[i]!), series };
  }

  /** The newest sample of every series (what a live page appends each second), or null before two snapshots. */
  newest(): { t: number; series: Record<string, [number | null, number | null, number | null]> } | null {
    if (this.count === 0) return null;
    const slot = (this.head - 1 + this.capacity) % this.capacity;
    const v = (a: Float64Array): number | null => (Number.isNaN(a[slot]!) ? null : a[slot]!);
    const series: Record<string, [number | null, number | null, number | null]> = {};
    for (const [id, s] of this.series) series[id] = [v(s.conns), v(s.sent), v(s.rcvd)];
    return { t: this.times[slot]!, series };
  }

  /** The newest rates of one series, or null (for the numbers beside a chart and for tests). */
  latest(id: string): { conns: number; sent: number; rcvd: number } | null {
    const s = this.series.get(id);
    if (!s || this.count === 0) return null;
    const slot = (this.head - 1 + this.capacity) % this.capacity;
    if (Number.isNaN(s.conns[slot]!)) return null;
    return { conns: s.conns[slot]!, sent: s.sent[slot]!, rcvd: s.rcvd[slot]! };
  }
}
