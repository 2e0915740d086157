// The health state machine of one backend: pure, no sockets, no timers.
//
// Hysteresis: an up backend goes down after `fall` failed checks in a row, a down one comes up after
// `rise` passed ones (every seed system flipped on a single result). Health is separate from the
// operator's state: checks move a backend between ENA and dis, never out of DIS.

/** HAProxy's check_status vocabulary, so `show stat` readers know it. */
export type CheckStatus = 'INI' | 'L4OK' | 'L4TOUT' | 'L4CON' | 'L7OK' | 'L7TOUT' | 'L7RSP' | 'SOCKERR';

export interface CheckResult {
  readonly ok: boolean;
  readonly status: CheckStatus;
  readonly durationMs: number;
  /** Why it failed (error code, "timeout", "reply did not match"), or "" when it passed. */
  readonly detail: string;
}

export interface Transition {
  readonly from: 'UP' | 'DOWN';
  readonly to: 'UP' | 'DOWN';
}

/** The fields the rise/fall machine reads and writes: a plain object, or a backend's shared slot. */
export interface HealthFields {
  up: boolean;
  /** Consecutive passes (while down) or failures (while up) toward the next transition. */
  streak: number;
  /** Failed checks in total (HAProxy `chkfail`). */
  failedChecks: number;
  /** UP→DOWN transitions (HAProxy `chkdown`). */
  downTransitions: number;
  lastStatus: CheckStatus;
  lastDurationMs: number;
}

/** Records one result; returns the transition it caused, if any. */
export function recordCheck(f: HealthFields, result: CheckResult, rise: number, fall: number): Transition | null {
  f.lastStatus = result.status;
  f.lastDurationMs = result.durationMs;
  if (!result.ok) f.failedChecks++;
  if (f.up === result.ok) {
    f.streak = 0; // the streak toward the other state is broken
    return null;
  }
  f.streak++;
  if (f.streak < (f.up ? fall : rise)) return null;
  f.streak = 0;
  f.up = !f.up;
  if (!f.up) f.downTransitions++;
  return f.up ? { from: 'DOWN', to: 'UP' } : { from: 'UP', to: 'DOWN' };
}

/** One backend's health as a plain object (tests, and anything that needs no sharing). */
export class HealthTracker implements HealthFields {
  up = true;
  streak = 0;
  failedChecks = 0;
  downTransitions = 0;
  lastStatus: CheckStatus = 'INI';
  lastDurationMs = 0;
  lastDetail = '';

  /**
   * Checks were removed from this backend: nothing can bring it back up any more, so it counts as up
   * (as HAProxy treats a server without checks). Counters are history and stay.
   */
  forget(): void {
    this.up = true;
    this.streak = 0;
    this.lastStatus = 'INI';
    this.lastDetail = '';
  }

  record(result: CheckResult, rise: number, fall: number): Transition | null {
    this.lastDetail = result.detail;
    return recordCheck(this, result, rise, fall);
  }
}
