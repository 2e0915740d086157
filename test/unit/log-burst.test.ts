// LogBurst: the first occurrence is logged at once, then at most one line per window, each line counting
// the occurrences held back since the previous one.

import { describe, expect, it } from 'vitest';
import { LogBurst } from '../../src/log-burst.ts';

describe('LogBurst', () => {
  it('logs the first occurrence, holds back the rest of the window, and counts them in the next line', () => {
    const b = new LogBurst(5000);
    expect(b.hit(1000)).toBe(1);
    for (let t = 1001; t < 6000; t += 10) expect(b.hit(t)).toBe(0); // 500 held back
    expect(b.hit(6000)).toBe(501);
    expect(b.hit(6001)).toBe(0);
    expect(b.hit(20_000)).toBe(2);
  });

  it('a flood of 100,000 occurrences over 20 s writes 4 lines that together count every one', () => {
    const b = new LogBurst(5000);
    const lines: number[] = [];
    for (let i = 0; i < 100_000; i++) {
      const n = b.hit(i / 5); // 0 .. 20,000 ms
      if (n > 0) lines.push(n);
    }
    expect(lines).toHaveLength(4);
    expect(lines.reduce((a, n) => a + n, 0)).toBeLessThanOrEqual(100_000);
    // What the last line has not yet reported is still counted for the next one.
    expect(lines.reduce((a, n) => a + n, 0) + b.hit(1e9) - 1).toBe(100_000);
  });

  it('a clock that starts at 0 still logs the first occurrence', () => {
    expect(new LogBurst(5000).hit(0)).toBe(1);
  });
});
