// SignalGate: signals during start-up are held; on open, a held stop wins over held reloads, and any
// number of held reloads are one.

import { describe, expect, it } from 'vitest';
import { SignalGate } from '../../src/cli/signals.ts';

function recorder(): { calls: string[]; actions: { stop(s: string): void; reload(): void } } {
  const calls: string[] = [];
  return { calls, actions: { stop: (s) => calls.push(`stop ${s}`), reload: () => calls.push('reload') } };
}

describe('SignalGate', () => {
  it('holds nothing: open acts on nothing, then signals act at once', () => {
    const g = new SignalGate();
    const r = recorder();
    g.open(r.actions);
    expect(r.calls).toEqual([]);
    g.signal('SIGHUP');
    g.signal('SIGHUP');
    g.signal('SIGTERM');
    expect(r.calls).toEqual(['reload', 'reload', 'stop SIGTERM']);
  });

  it('several HUPs during start-up are one reload after it', () => {
    const g = new SignalGate();
    const r = recorder();
    for (let i = 0; i < 5; i++) g.signal('SIGHUP');
    expect(r.calls).toEqual([]);
    g.open(r.actions);
    expect(r.calls).toEqual(['reload']);
  });

  it('a TERM or INT during start-up wins over held HUPs, whatever the order; the first stop signal is the one reported', () => {
    for (const order of [['SIGHUP', 'SIGTERM', 'SIGHUP'], ['SIGTERM', 'SIGHUP'], ['SIGINT', 'SIGTERM']] as const) {
      const g = new SignalGate();
      const r = recorder();
      for (const s of order) g.signal(s);
      g.open(r.actions);
      expect(r.calls).toEqual([`stop ${order.find((s) => s !== 'SIGHUP')}`]);
    }
  });
});
