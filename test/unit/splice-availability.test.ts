// The splice relay's switch and its refusals, without any connection: LB_SPLICE=off turns it off (the
// caller then runs the JS relay), and a socket that is not connected is never handed over.

import net from 'node:net';
import { describe, expect, it } from 'vitest';

describe('splice availability', () => {
  it('LB_SPLICE=off: unavailable with the reason, no stats, and spliceRelay refuses with LB_SPLICE_UNAVAILABLE', async () => {
    const saved = process.env['LB_SPLICE'];
    process.env['LB_SPLICE'] = 'off';
    try {
      // Imported after the switch is set: the module decides once, on first use.
      const { spliceAvailable, spliceRelay, spliceStats } = await import('../../src/proxy/splice.ts');
      expect(spliceAvailable()).toEqual({ ok: false, reason: 'turned off (LB_SPLICE=off)' });
      expect(spliceStats()).toBeNull();
      const a = new net.Socket();
      const b = new net.Socket();
      expect(() => spliceRelay(a, b, { idleTimeoutMs: 0 }, () => undefined)).toThrow(
        expect.objectContaining({ code: 'LB_SPLICE_UNAVAILABLE', message: expect.stringContaining('LB_SPLICE=off') }),
      );
      expect(a.destroyed).toBe(false); // untouched: the caller falls back to the JS relay with them
    } finally {
      if (saved === undefined) delete process.env['LB_SPLICE'];
      else process.env['LB_SPLICE'] = saved;
    }
  });

  it('a socket that is not connected is refused for hand-over', async () => {
    const { handOverRefusal } = await import('../../src/proxy/splice.ts');
    expect(handOverRefusal(new net.Socket())).toBe('not connected');
  });
});
