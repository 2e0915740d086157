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

export class HealthTracker {
  up = true;
  /** Consecutive passes (while down) or failures (while up) toward the next transition. */
  streak = 0;
  /** Failed checks in total (HAProxy `chkfail`). */
  failedChecks = 0;
  /** UP→DOWN transitions (HAProxy `chkdown`). */
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

  /** Records one result; returns the transition it caused, if any. */
  record(result: CheckResult, rise: number, fall: number): Transition | null {
    this.lastStatus = result.status;
    this.lastDurationMs = result.durationMs;
    this.lastDetail = result.detail;
    if (!result.ok) this.failedChecks++;
    if (this.up === result.ok) {
      this.streak = 0; // the streak toward the other state is broken
      return null;
    }
    this.streak++;
    if (this.streak < (this.up ? fall : rise)) return null;
    this.streak = 0;
    this.up = !this.up;
    if (!this.up) this.downTransitions++;
    return this.up ? { from: 'DOWN', to: 'UP' } : { from: 'UP', to: 'DOWN' };
  }
}
