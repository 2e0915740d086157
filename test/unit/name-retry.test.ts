// The retries of backend names that had no address (src/discovery/name-retry.ts), with fake timers and
// a lookup the test answers: the back-off, one log line per change, the table made again when the name
// resolves, names dropped when a reload resolves or removes them.

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { NameRetry, RETRY_FIRST_MS, RETRY_MAX_MS, resolvedNames, unresolvedNames, withAddress, withKnownAddresses } from '../../src/discovery/name-retry.ts';
import type { RoutingTable } from '../../src/config/table.ts';
import { createLogger } from '../../src/log.ts';
import { tableFrom, webDoc } from '../helpers/lb.ts';

async function table(): Promise<RoutingTable> {
  const t = await tableFrom(webDoc([{ backends: ['127.0.0.1:1', { host: 'a.invalid', port: 2 }, { host: 'b.example', port: 3 }] }]));
  // As resolve.ts leaves them: a.invalid had no address, b.example resolved.
  return unresolve(withAddress(t, 'b.example', '192.0.2.3'));
}

function unresolve(t: RoutingTable): RoutingTable {
  return {
    ...t,
    listeners: t.listeners.map((l) => ({ ...l, groups: l.groups.map((g) => ({ ...g, backends: g.backends.map((b) => (b.host === 'a.invalid' ? { ...b, address: '', resolveError: 'ENOTFOUND' } : b)) })) })),
  };
}

describe('the table functions', () => {
  it('find unresolved and resolved names, fill an address, and fill known ones', async () => {
    const t = await table();
    expect([...unresolvedNames(t)]).toEqual([['a.invalid', 'ENOTFOUND']]);
    expect([...resolvedNames(t)]).toEqual([['b.example', '192.0.2.3']]);
    const filled = withAddress(t, 'a.invalid', '192.0.2.1');
    const b = filled.listeners[0]!.groups[0]!.backends[1]!;
    expect(b.address).toBe('192.0.2.1');
    expect(b.resolveError).toBeUndefined();
    expect(b.key).toBe(t.listeners[0]!.groups[0]!.backends[1]!.key); // same identity: same slot
    expect(withAddress(filled, 'a.invalid', '192.0.2.1')).toBe(filled);
    const known = withKnownAddresses(t, new Map([['a.invalid', '192.0.2.9'], ['other', '192.0.2.8']]));
    expect([...known.filled]).toEqual([['a.invalid', 'ENOTFOUND']]);
    expect(known.table.listeners[0]!.groups[0]!.backends[1]!.address).toBe('192.0.2.9');
  });
});

describe('NameRetry', () => {
  beforeEach(() => void vi.useFakeTimers());
  afterEach(() => void vi.useRealTimers());

  async function setup(answers: (string | Error)[]) {
    let current = await table();
    const lines: string[] = [];
    const applied: RoutingTable[] = [];
    const resolved: string[] = [];
    const asked: number[] = [];
    const target = {
      get table() {
        return current;
      },
      async applyDiscovered(fill: (t: RoutingTable) => RoutingTable) {
        current = fill(current);
        applied.push(current);
      },
      resolved: (name: string) => void resolved.push(name),
    };
    const retry = new NameRetry(target, createLogger('text', (l) => lines.push(l)), async () => {
      asked.push(Date.now());
      return answers.shift() ?? Object.assign(new Error('x'), { code: 'ENOTFOUND' });
    });
    return { retry, lines, applied, resolved, asked, get table() { return current; } };
  }

  const err = (code: string): Error => Object.assign(new Error(code), { code });

  it('backs off 1 s doubling to 60 s, logs only a change of failure, and swaps in the address once it resolves', async () => {
    const s = await setup([err('ENOTFOUND'), err('EAI_AGAIN'), err('EAI_AGAIN'), ...Array.from({ length: 6 }, () => err('EAI_AGAIN')), '192.0.2.1']);
    const t0 = Date.now();
    s.retry.sync();
    expect(s.retry.names()).toEqual(['a.invalid']);
    for (let i = 0; i < 10; i++) await vi.advanceTimersByTimeAsync(RETRY_MAX_MS);
    const gaps = s.asked.map((t, i) => t - (i === 0 ? t0 : s.asked[i - 1]!));
    expect(gaps.slice(0, 7)).toEqual([1000, 2000, 4000, 8000, 16000, 32000, 60000]);
    expect(RETRY_FIRST_MS).toBe(1000);
    // ENOTFOUND was said at start (the config warning): only the change to EAI_AGAIN is logged, once.
    expect(s.lines.filter((l) => l.includes('resolve-failed'))).toHaveLength(1);
    expect(s.lines.find((l) => l.includes('resolve-failed'))).toMatch(/error=EAI_AGAIN/);
    expect(s.lines.filter((l) => l.includes(' resolved '))).toHaveLength(1);
    expect(s.resolved).toEqual(['a.invalid']);
    expect(s.table.listeners[0]!.groups[0]!.backends[1]!.address).toBe('192.0.2.1');
    expect(s.retry.names()).toEqual([]);
    const asked = s.asked.length;
    await vi.advanceTimersByTimeAsync(5 * RETRY_MAX_MS);
    expect(s.asked).toHaveLength(asked); // resolved: no more lookups
  });

  it('drops a name a reload resolved or removed; retries a stale one (running on its last address) until it resolves', async () => {
    const s = await setup([]);
    s.retry.sync(new Map([['b.example', 'ENOTFOUND']]));
    expect(s.retry.names()).toEqual(['a.invalid', 'b.example']);
    s.retry.sync(); // a reload: b.example resolved then, a.invalid still not
    expect(s.retry.names()).toEqual(['a.invalid']);
    s.retry.stop();
    expect(s.retry.names()).toEqual([]);
  });
});
