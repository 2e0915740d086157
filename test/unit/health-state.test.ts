// The health state machine alone (src/health/state.ts): rise/fall hysteresis, the counters `show stat`
// reports (chkfail, chkdown, check_status), and the transitions `record` returns.

import { describe, expect, it } from 'vitest';
import { HealthTracker, type CheckResult, type CheckStatus } from '../../src/health/state.ts';

const pass = (status: CheckStatus = 'L4OK', durationMs = 1): CheckResult => ({ ok: true, status, durationMs, detail: '' });
const fail = (status: CheckStatus = 'L4CON', detail = 'ECONNREFUSED', durationMs = 2): CheckResult => ({
  ok: false,
  status,
  durationMs,
  detail,
});

/** Feeds a sequence ("+" pass, "-" fail) and returns what each record() returned, as "UP>DOWN" or ".". */
function feed(t: HealthTracker, seq: string, rise: number, fall: number): string[] {
  return [...seq].map((c) => {
    const tr = t.record(c === '+' ? pass() : fail(), rise, fall);
    return tr ? `${tr.from}>${tr.to}` : '.';
  });
}

describe('HealthTracker', () => {
  it('starts up, with status INI and zero counters', () => {
    const t = new HealthTracker();
    expect(t.up).toBe(true);
    expect(t.lastStatus).toBe('INI');
    expect([t.streak, t.failedChecks, t.downTransitions]).toEqual([0, 0, 0]);
  });

  it('fall=3: two failures do not flip it, the third does (and returns UP→DOWN once)', () => {
    const t = new HealthTracker();
    expect(t.record(fail(), 2, 3)).toBeNull();
    expect(t.up).toBe(true);
    expect(t.record(fail(), 2, 3)).toBeNull();
    expect(t.up).toBe(true);
    expect(t.record(fail(), 2, 3)).toEqual({ from: 'UP', to: 'DOWN' });
    expect(t.up).toBe(false);
    expect(t.failedChecks).toBe(3);
    expect(t.downTransitions).toBe(1);
    // Further failures while down change nothing but chkfail.
    expect(t.record(fail(), 2, 3)).toBeNull();
    expect(t.failedChecks).toBe(4);
    expect(t.downTransitions).toBe(1);
  });

  it('a pass between failures resets the streak toward down', () => {
    const t = new HealthTracker();
    expect(feed(t, '--+--', 2, 3)).toEqual(['.', '.', '.', '.', '.']);
    expect(t.up).toBe(true);
    expect(t.failedChecks).toBe(4); // every failure counts, even those that did not bring it down
    expect(t.downTransitions).toBe(0);
    expect(feed(t, '-', 2, 3)).toEqual(['UP>DOWN']);
  });

  it('rise=2: one pass does not bring it back, the second does; a failure in between resets the streak', () => {
    const t = new HealthTracker();
    feed(t, '---', 2, 3);
    expect(t.up).toBe(false);
    expect(feed(t, '+-+', 2, 3)).toEqual(['.', '.', '.']);
    expect(t.up).toBe(false);
    expect(feed(t, '+', 2, 3)).toEqual(['DOWN>UP']);
    expect(t.up).toBe(true);
    expect(t.streak).toBe(0);
  });

  it('counts every down transition and every failed check over several cycles', () => {
    const t = new HealthTracker();
    const out = feed(t, '---++---++-', 2, 3);
    expect(out).toEqual(['.', '.', 'UP>DOWN', '.', 'DOWN>UP', '.', '.', 'UP>DOWN', '.', 'DOWN>UP', '.']);
    expect(t.downTransitions).toBe(2);
    expect(t.failedChecks).toBe(7);
    expect(t.up).toBe(true);
    expect(t.streak).toBe(1);
  });

  it('fall=1 / rise=1 flip on a single result', () => {
    const t = new HealthTracker();
    expect(feed(t, '-+-+', 1, 1)).toEqual(['UP>DOWN', 'DOWN>UP', 'UP>DOWN', 'DOWN>UP']);
    expect(t.downTransitions).toBe(2);
  });

  it('keeps the last status, duration and detail of every check (pass or fail, transition or not)', () => {
    const t = new HealthTracker();
    t.record(fail('L7RSP', 'reply did not match', 12.5), 2, 3);
    expect([t.lastStatus, t.lastDurationMs, t.lastDetail]).toEqual(['L7RSP', 12.5, 'reply did not match']);
    t.record(fail('L4TOUT', 'timeout', 80), 2, 3);
    expect([t.lastStatus, t.lastDurationMs, t.lastDetail]).toEqual(['L4TOUT', 80, 'timeout']);
    t.record(pass('L7OK', 3), 2, 3);
    expect([t.lastStatus, t.lastDurationMs, t.lastDetail]).toEqual(['L7OK', 3, '']);
  });

  it('uses the rise/fall passed on each call (a reload may change them)', () => {
    const t = new HealthTracker();
    expect(feed(t, '--', 2, 5)).toEqual(['.', '.']);
    // fall lowered to 2 with a streak of 2 already: the next failure (streak 3 >= 2) takes it down.
    expect(t.record(fail(), 2, 2)).toEqual({ from: 'UP', to: 'DOWN' });
  });
});
