// The status page's rate history: per-second rates from consecutive snapshots, a fixed ring, resets.

import { describe, expect, it } from 'vitest';
import { backendSeries, History, listenerSeries } from '../../src/stats/history.ts';
import type { Snapshot } from '../../src/stats/snapshot.ts';

/** A snapshot with one listener "web" and one backend whose counters are given. */
function snap(now: number, c: { total: number; sent: number; rcvd: number }, backends = ['10.0.0.1:80']): Snapshot {
  return {
    version: 't', pid: 1, now, uptimeSec: 0,
    listeners: [{
      name: 'web', address: '127.0.0.1:80', noBackend: 0, queue: null, cur: 0, max: 0, ...c,
      groups: [{
        index: 0, policy: 'rr', up: 1, cur: 0, max: 0, ...c,
        backends: backends.map((key, index) => ({
          index, entry: { key } as never, status: 'ENA', attempts: c.total, failures: 0, lastChangeSec: 0, downReason: '', check: null,
          cur: 0, max: 0, ...c,
        })),
      }],
    }],
  } as unknown as Snapshot;
}

const L = listenerSeries('web');
const B = backendSeries('web', 0, '10.0.0.1:80');

describe('History', () => {
  it('primes on the first snapshot and records rates per second from the second on', () => {
    const h = new History(10);
    h.record(snap(1000, { total: 5, sent: 100, rcvd: 10 }));
    expect(h.length).toBe(0);
    expect(h.newest()).toBeNull();
    h.record(snap(3000, { total: 9, sent: 300, rcvd: 50 })); // 2 s later
    expect(h.length).toBe(1);
    expect(h.latest(L)).toEqual({ conns: 2, sent: 100, rcvd: 20 });
    expect(h.latest(B)).toEqual({ conns: 2, sent: 100, rcvd: 20 });
    expect(h.toJSON()).toEqual({ t: [3000], series: { [L]: [[2], [100], [20]], [B]: [[2], [100], [20]] } });
  });

  it('keeps the newest `capacity` samples, oldest first, and answers "since"', () => {
    const h = new History(3);
    for (let i = 0; i <= 5; i++) h.record(snap(i * 1000, { total: i * i, sent: 0, rcvd: 0 }));
    expect(h.length).toBe(3);
    const j = h.toJSON();
    expect(j.t).toEqual([3000, 4000, 5000]);
    expect(j.series[L]![0]).toEqual([5, 7, 9]); // 9-4, 16-9, 25-16
    expect(h.toJSON(4000).t).toEqual([5000]);
    expect(h.newest()).toEqual({ t: 5000, series: { [L]: [9, 0, 0], [B]: [9, 0, 0] } });
  });

  it('counts a counter that went down (reset) as the increase since the reset, never a negative rate', () => {
    const h = new History(5);
    h.record(snap(0, { total: 100, sent: 1000, rcvd: 0 }));
    h.record(snap(1000, { total: 3, sent: 40, rcvd: 0 }));
    expect(h.latest(L)).toEqual({ conns: 3, sent: 40, rcvd: 0 });
  });

  it('gives a new backend nulls before its first rate, and drops a removed one', () => {
    const h = new History(5);
    h.record(snap(0, { total: 0, sent: 0, rcvd: 0 }));
    h.record(snap(1000, { total: 1, sent: 0, rcvd: 0 }));
    const two = ['10.0.0.1:80', '10.0.0.2:80'];
    h.record(snap(2000, { total: 2, sent: 0, rcvd: 0 }, two));
    h.record(snap(3000, { total: 4, sent: 0, rcvd: 0 }, two));
    const B2 = backendSeries('web', 0, '10.0.0.2:80');
    expect(h.toJSON().series[B2]![0]).toEqual([null, null, 2]);
    h.record(snap(4000, { total: 4, sent: 0, rcvd: 0 }));
    expect(h.toJSON().series[B2]).toBeUndefined();
    expect(h.latest(B2)).toBeNull();
  });

  it('primes again instead of dividing by zero when the clock does not move forward', () => {
    const h = new History(5);
    h.record(snap(1000, { total: 0, sent: 0, rcvd: 0 }));
    h.record(snap(1000, { total: 7, sent: 0, rcvd: 0 }));
    expect(h.length).toBe(0);
    h.record(snap(2000, { total: 8, sent: 0, rcvd: 0 }));
    expect(h.latest(L)).toEqual({ conns: 1, sent: 0, rcvd: 0 });
  });

  it('refuses a capacity that cannot hold a rate', () => {
    expect(() => new History(1)).toThrow(RangeError);
  });
});
