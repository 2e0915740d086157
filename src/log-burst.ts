// One log line per burst: a condition that can repeat thousands of times a second (descriptors running
// out, a flood of broken control sessions) is logged at its first occurrence, then at most once per
// window, each line saying how many occurrences it stands for. So a flood writes a few lines, not
// thousands, and none of it is lost from the count.

/** Occurrences per line: the first at once, then at most one line per `windowMs`. */
export class LogBurst {
  private readonly windowMs: number;
  private lastAt = Number.NEGATIVE_INFINITY;
  private count = 0;

  constructor(windowMs: number) {
    this.windowMs = windowMs;
  }

  /**
   * Counts one occurrence at `now` (ms). Returns how many occurrences a line logged now stands for (this
   * one and those held back since the last line), or 0 when this one is held back.
   */
  hit(now: number = Date.now()): number {
    this.count++;
    if (now - this.lastAt < this.windowMs) return 0;
    this.lastAt = now;
    const n = this.count;
    this.count = 0;
    return n;
  }
}
