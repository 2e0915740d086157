// Choosing a backend, without sockets: src/balance/select.ts and the ejection state in src/balance/state.ts.

import { describe, expect, it } from 'vitest';
import { chooseBackend, hashOrder, hashScore, normaliseClientIp, unusable, type Choice } from '../../src/balance/select.ts';
import { BACKOFF_MAX_MS, BACKOFF_START_MS, BackendState, ListenerState } from '../../src/balance/state.ts';
import { SlotAllocator } from '../../src/shared/slots.ts';
import { DEFAULT_CAPACITY, SharedState } from '../../src/shared/state.ts';
import { compileConfig } from '../../src/config/compile.ts';
import type { ConfigDoc } from '../../src/config/doc.ts';
import type { BackendEntry, ListenerEntry, Policy } from '../../src/config/table.ts';

// ---------------------------------------------------------------------------------------------------
// Fixtures: routing-table entries compiled by the real config compiler (so new table fields are filled in)

type B = string | { addr: string; maxc?: number; weight?: number; enabled?: boolean };

function backendDoc(b: B): Record<string, unknown> {
  const spec = typeof b === 'string' ? { addr: b } : b;
  const [host, port] = spec.addr.split(':') as [string, string];
  return {
    host,
    port: Number(port),
    ...(spec.maxc !== undefined ? { maxc: spec.maxc } : {}),
    ...(spec.weight !== undefined ? { weight: spec.weight } : {}),
    ...(spec.enabled !== undefined ? { enabled: spec.enabled } : {}),
  };
}

function listener(groups: { policy: Policy; backends: B[] }[], opts: { hashFailover?: boolean } = {}): ListenerEntry {
  const doc = {
    listeners: {
      web: {
        listen: '127.0.0.1:0',
        hash_failover: opts.hashFailover ?? false,
        groups: groups.map((g) => ({ policy: g.policy, backends: g.backends.map(backendDoc) })),
      },
    },
  };
  const { table, diagnostics } = compileConfig(doc as unknown as ConfigDoc);
  if (!table) throw new Error(`fixture rejected: ${JSON.stringify(diagnostics)}`);
  return table.listeners[0]!;
}

/** A single backend entry (for hashOrder and unusable). */
function backend(b: B): BackendEntry {
  return listener([{ policy: 'rr', backends: [b] }]).groups[0]!.backends[0]!;
}

/** One backend's state in shared memory of its own (for the ejection tests). */
function newBackend(): BackendState {
  return new BackendState(new SharedState(undefined, { ...DEFAULT_CAPACITY, regions: 1 }), 0, 0);
}

/** Sets a backend's open-connection count by claiming or releasing slots, as relays would. */
function setCur(b: BackendState, n: number): void {
  while (b.cur < n) b.claim(0);
  while (b.cur > n) b.release();
}

/** A listener and its state, with an `open` that does what a relay does with a choice (picked; the slot is taken by the choice). */
function setup(groups: { policy: Policy; backends: B[] }[], opts: { hashFailover?: boolean; random?: () => number } = {}) {
  const entry = listener(groups, opts);
  const shared = new SharedState(undefined, { ...DEFAULT_CAPACITY, regions: 1 });
  const slots = new SlotAllocator(shared).plan({ listeners: [entry] } as never).map;
  const state = new ListenerState(shared, slots.listeners[0]!, 0, null);
  const st = (g: number, i: number): BackendState => state.groups[g]!.backends[i]!;
  const choose = (now = 1_000_000, ip = '10.0.0.9', tried: BackendState[] | null = null): Choice | null =>
    chooseBackend(entry, state, ip, now, tried?.map((b) => b.slot) ?? null, opts.random ?? Math.random);
  /** Chooses and, like the relay, counts the connection as open on that backend. */
  const open = (now = 1_000_000, ip = '10.0.0.9'): string => {
    const c = choose(now, ip);
    if (!c) return '-';
    c.state.picked();
    return c.entry.key;
  };
  const key = (c: Choice | null): string => (c ? c.entry.key : '-');
  return { entry, state, st, choose, open, key };
}

const A = '10.0.0.1:80';
const Bk = '10.0.0.2:80';
const C = '10.0.0.3:80';
const D = '10.0.0.4:80';
const E = '10.0.0.5:80';

function seq(n: number, f: () => string): string[] {
  return Array.from({ length: n }, f);
}

// ---------------------------------------------------------------------------------------------------

describe('rr', () => {
  it('distributes evenly over 3 backends in list order', () => {
    const { choose, key } = setup([{ policy: 'rr', backends: [A, Bk, C] }]);
    const picks = seq(9, () => key(choose()));
    expect(picks).toEqual([A, Bk, C, A, Bk, C, A, Bk, C]);
  });

  it('continues after the backend last chosen, whether or not its connect succeeded', () => {
    const { choose, key } = setup([{ policy: 'rr', backends: [A, Bk, C] }]);
    expect(key(choose())).toBe(A); // success
    expect(key(choose())).toBe(Bk); // never reported back (e.g. the client left while connecting)
    // balance continued after the last *successful* one (A), making B the next first try again.
    expect(key(choose())).toBe(C);
  });

  it('a backend that just failed is not the next client\'s first try (balance §5.6)', () => {
    const { choose, key, st } = setup([{ policy: 'rr', backends: [A, Bk] }]);
    const now = 5_000_000;
    // Client 1: A is tried first and refuses; it fails over to B.
    const first = choose(now)!;
    expect(first.entry.key).toBe(A);
    first.state.picked();
    first.state.connectFailed(now, 'ECONNREFUSED', false);
    expect(key(choose(now, '10.0.0.9', [first.state]))).toBe(Bk);
    // Clients 2..4 within the back-off: B first, every time (balance tried the dead A first every time).
    for (let i = 0; i < 3; i++) expect(key(choose(now + 10 + i))).toBe(Bk);
    expect(st(0, 0).attempts).toBe(1);
  });

  it('skips unusable backends (disabled, weight 0, full) and keeps rotating over the rest', () => {
    const { open, st } = setup([
      {
        policy: 'rr',
        backends: [A, { addr: Bk, enabled: false }, { addr: C, weight: 0 }, { addr: D, maxc: 1 }, E],
      },
    ]);
    expect(seq(4, () => open())).toEqual([A, D, E, A]);
    expect(st(0, 3).cur).toBe(1); // D is full now
    expect(seq(3, () => open())).toEqual([E, A, E]);
  });

  it('the failover retry for one client skips what it already tried', () => {
    const { choose, key, st } = setup([{ policy: 'rr', backends: [A, Bk, C] }]);
    expect(key(choose(1, 'x', [st(0, 0)]))).toBe(Bk);
    expect(key(choose(1, 'x', [st(0, 0), st(0, 1), st(0, 2)]))).toBe('-');
  });
});

describe('hash', () => {
  const keys = [A, Bk, C, D];
  const list = keys.map((k) => backend(k));

  // Test vectors: rendezvous order of backends 10.0.0.1:80 .. 10.0.0.4:80 for each client IP. Computed once
  // from the implementation and frozen: the mapping must not change across versions, restarts or instances.
  const VECTORS: [ip: string, order: number[]][] = [
    ['127.0.0.1', [1, 3, 2, 0]],
    ['10.1.2.3', [0, 1, 2, 3]],
    ['192.168.0.1', [1, 3, 0, 2]],
    ['192.168.0.2', [3, 1, 0, 2]],
    ['192.168.0.3', [3, 1, 0, 2]],
    ['172.16.5.4', [2, 1, 3, 0]],
    ['8.8.8.8', [0, 1, 3, 2]],
    ['203.0.113.7', [3, 1, 0, 2]],
    ['2001:db8::1', [0, 1, 2, 3]],
    ['::1', [0, 3, 1, 2]],
    ['fe80::1', [0, 3, 1, 2]],
    ['198.51.100.255', [2, 0, 1, 3]],
  ];

  it.each(VECTORS)('test vector %s → order %j', (ip, order) => {
    expect(hashOrder(ip, list)).toEqual(order);
    const { choose } = setup([{ policy: 'hash', backends: keys }]);
    expect(choose(1, ip)!.index).toBe(order[0]);
  });

  it('scores are a fixed function of "ip|host:port" (frozen values)', () => {
    expect(hashScore('127.0.0.1', A)).toBe(1402390968);
    expect(hashScore('10.1.2.3', A)).toBe(3976161691);
    expect(hashScore('2001:db8::1', A)).toBe(3128415929);
  });

  it('the vectors use every backend (the hash is not degenerate)', () => {
    expect(new Set(VECTORS.map(([, o]) => o[0])).size).toBe(4);
  });

  it('::ffff:a.b.c.d hashes as a.b.c.d', () => {
    expect(normaliseClientIp('::ffff:127.0.0.1')).toBe('127.0.0.1');
    expect(normaliseClientIp('127.0.0.1')).toBe('127.0.0.1');
    expect(normaliseClientIp('::1')).toBe('::1');
    expect(normaliseClientIp('2001:db8::1')).toBe('2001:db8::1');
    for (const [ip] of VECTORS.filter(([ip]) => ip.includes('.'))) {
      expect(hashOrder(normaliseClientIp(`::ffff:${ip}`), list)).toEqual(hashOrder(ip, list));
    }
  });

  it('the same client always gets the same backend, whatever happened in between', () => {
    const { choose, key } = setup([{ policy: 'hash', backends: keys }]);
    const first = key(choose(1, '192.168.0.1'));
    for (let i = 0; i < 20; i++) {
      choose(1, `10.9.${i}.1`);
      expect(key(choose(1, '192.168.0.1'))).toBe(first);
    }
  });

  it('the choice is hashOrder\'s first usable backend, with most of a group disabled (hash_failover) and without', () => {
    // 50 backends, 45 disabled: for many clients the first 8 in hash order are all disabled (the choice
    // then sorts what is left), for the others one of the first few is usable.
    const keys50 = Array.from({ length: 50 }, (_, i) => `10.1.0.${i + 1}:80`);
    const bs: B[] = keys50.map((addr, i) => (i % 10 === 3 ? addr : { addr, enabled: false }));
    const entries = keys50.map((k) => backend(k));
    for (const hashFailover of [true, false]) {
      const { choose } = setup([{ policy: 'hash', backends: bs }], { hashFailover });
      for (let i = 0; i < 300; i++) {
        const ip = `172.16.${i >> 8}.${i & 255}`;
        const order = hashOrder(ip, entries);
        const want = hashFailover ? order.find((k) => k % 10 === 3)! : order[0]! % 10 === 3 ? order[0]! : undefined;
        expect(choose(1, ip)?.index).toBe(want);
      }
    }
  });

  it('adding a 5th backend to 4 remaps about 1/5 of clients, all of them to the new backend', () => {
    const five = [...list, backend(E)];
    let moved = 0;
    const N = 10_000;
    const counts = [0, 0, 0, 0, 0];
    for (let i = 0; i < N; i++) {
      const ip = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
      const before = hashOrder(ip, list)[0]!;
      const after = hashOrder(ip, five)[0]!;
      counts[after]!++;
      if (before !== after) {
        moved++;
        expect(after).toBe(4); // rendezvous: a client only ever moves to the new backend
      }
    }
    const fraction = moved / N;
    expect(fraction).toBeGreaterThan(0.12);
    expect(fraction).toBeLessThan(0.28);
    for (const c of counts) expect(c / N).toBeGreaterThan(0.12); // spread over all five
  });

  it('removing one of 4 backends moves only the clients that were on it', () => {
    const three = [list[0]!, list[1]!, list[3]!];
    for (let i = 0; i < 2000; i++) {
      const ip = `172.20.${i >> 8}.${i & 255}`;
      const before = list[hashOrder(ip, list)[0]!]!.key;
      const after = three[hashOrder(ip, three)[0]!]!.key;
      if (before !== C) expect(after).toBe(before);
    }
  });

  it('without hash_failover an unusable hashed backend skips the group', () => {
    const ip = '127.0.0.1'; // order [1, 3, 2, 0]
    const { choose, st } = setup([
      { policy: 'hash', backends: keys },
      { policy: 'rr', backends: [E] },
    ]);
    expect(choose(1, ip)).toMatchObject({ group: 0, index: 1 });
    st(0, 1).connectFailed(1, 'ECONNREFUSED', false);
    expect(choose(2, ip)).toMatchObject({ group: 1, index: 0 });
    // Another client whose hashed backend is fine still uses group 0.
    expect(choose(2, '10.1.2.3')).toMatchObject({ group: 0, index: 0 });
  });

  it('with hash_failover the next backend in hash order is tried', () => {
    const ip = '127.0.0.1'; // order [1, 3, 2, 0]
    const { choose, st } = setup(
      [
        { policy: 'hash', backends: keys },
        { policy: 'rr', backends: [E] },
      ],
      { hashFailover: true },
    );
    st(0, 1).connectFailed(1, 'ECONNREFUSED', false);
    expect(choose(2, ip)).toMatchObject({ group: 0, index: 3 });
    expect(choose(2, ip, [st(0, 3)])).toMatchObject({ group: 0, index: 2 });
    expect(choose(2, ip, [st(0, 3), st(0, 2), st(0, 0)])).toMatchObject({ group: 1, index: 0 });
  });
});

describe('leastconn', () => {
  it('picks the fewest connections per unit of weight', () => {
    const { st, key, choose } = setup([
      { policy: 'leastconn', backends: [{ addr: A, weight: 1 }, { addr: Bk, weight: 3 }, { addr: C, weight: 1 }] },
    ]);
    setCur(st(0, 0), 2); // 2 per weight
    setCur(st(0, 1), 3); // 1 per weight
    setCur(st(0, 2), 2); // 2 per weight
    expect(key(choose())).toBe(Bk);
    setCur(st(0, 1), 7); // 2.33 per weight
    expect(key(choose())).not.toBe(Bk);
  });

  it('fills the least loaded as connections open, weighted 2:1', () => {
    const { open, st } = setup([{ policy: 'leastconn', backends: [{ addr: A, weight: 2 }, Bk] }]);
    seq(9, () => open());
    expect(st(0, 0).cur).toBe(6);
    expect(st(0, 1).cur).toBe(3);
  });

  it('breaks ties round robin', () => {
    const { choose, key } = setup([{ policy: 'leastconn', backends: [A, Bk, C] }]);
    // Nothing opens (cur stays 0): every pick is a three-way tie.
    expect(seq(6, () => key(choose()))).toEqual([A, Bk, C, A, Bk, C]);
  });

  it('skips full and drained backends', () => {
    const { open } = setup([{ policy: 'leastconn', backends: [{ addr: A, maxc: 1 }, { addr: Bk, weight: 0 }, C] }]);
    expect(seq(4, () => open())).toEqual([A, C, C, C]);
  });
});

describe('weighted (smooth weighted round robin)', () => {
  it('weights 5,1,1 give nginx\'s sequence a a b a c a a', () => {
    const { choose, key } = setup([
      { policy: 'weighted', backends: [{ addr: A, weight: 5 }, { addr: Bk, weight: 1 }, { addr: C, weight: 1 }] },
    ]);
    const name = { [A]: 'a', [Bk]: 'b', [C]: 'c' } as Record<string, string>;
    expect(seq(14, () => name[key(choose())]!).join(' ')).toBe('a a b a c a a a a b a c a a');
  });

  it('weight 0 drains a backend', () => {
    const { choose, key } = setup([{ policy: 'weighted', backends: [{ addr: A, weight: 2 }, { addr: Bk, weight: 0 }, C] }]);
    const picks = seq(30, () => key(choose()));
    expect(picks).not.toContain(Bk);
    expect(picks.filter((k) => k === A)).toHaveLength(20);
    expect(picks.filter((k) => k === C)).toHaveLength(10);
  });

  it('all weights 0: the group is skipped', () => {
    const { choose } = setup([
      { policy: 'weighted', backends: [{ addr: A, weight: 0 }] },
      { policy: 'rr', backends: [Bk] },
    ]);
    expect(choose()).toMatchObject({ group: 1 });
  });
});

describe('random', () => {
  it('picks over usable backends only, using the injected random function', () => {
    let r = 0;
    const { choose, key } = setup(
      [{ policy: 'random', backends: [A, { addr: Bk, enabled: false }, C, { addr: D, weight: 0 }] }],
      { random: () => r },
    );
    r = 0;
    expect(key(choose())).toBe(A);
    r = 0.49;
    expect(key(choose())).toBe(A);
    r = 0.5;
    expect(key(choose())).toBe(C);
    r = 0.999999;
    expect(key(choose())).toBe(C);
  });

  it('is uniform-ish over the usable backends', () => {
    // A fixed-seed generator (mulberry32), so the test cannot flake.
    let seed = 12345;
    const rand = (): number => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = seed;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    const { choose, key } = setup([{ policy: 'random', backends: [A, Bk, { addr: C, enabled: false }, D, E] }], { random: rand });
    const counts = new Map<string, number>();
    const N = 30_000;
    for (let i = 0; i < N; i++) {
      const k = key(choose());
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    expect([...counts.keys()].sort()).toEqual([A, Bk, D, E]);
    for (const n of counts.values()) expect(Math.abs(n / N - 0.25)).toBeLessThan(0.02);
  });

  it('never picks a full backend', () => {
    const { open, st } = setup([{ policy: 'random', backends: [{ addr: A, maxc: 1 }, Bk] }], { random: () => 0 });
    expect(open()).toBe(A);
    expect(seq(5, () => open())).toEqual([Bk, Bk, Bk, Bk, Bk]);
    expect(st(0, 0).cur).toBe(1);
  });
});

describe('first', () => {
  it('always the first usable backend in list order', () => {
    const { open, st } = setup([{ policy: 'first', backends: [{ addr: A, maxc: 2 }, { addr: Bk, maxc: 1 }, C] }]);
    expect(seq(5, () => open())).toEqual([A, A, Bk, C, C]);
    st(0, 0).release(); // one of A's connections ends
    expect(open()).toBe(A);
  });
});

describe('maxc', () => {
  it('a full backend overflows to the next backend, then to the next group', () => {
    const { open, st } = setup([
      { policy: 'rr', backends: [{ addr: A, maxc: 1 }, { addr: Bk, maxc: 1 }] },
      { policy: 'rr', backends: [C] },
    ]);
    expect(seq(4, () => open())).toEqual([A, Bk, C, C]);
    st(0, 1).release(); // B's connection ends
    expect(open()).toBe(Bk);
    expect(open()).toBe(C);
  });

  it('maxc 0 is unlimited', () => {
    const { open, st } = setup([{ policy: 'rr', backends: [{ addr: A, maxc: 0 }] }, { policy: 'rr', backends: [C] }]);
    expect(seq(100, () => open()).every((k) => k === A)).toBe(true);
    expect(st(0, 0).cur).toBe(100);
  });

  it('nothing usable anywhere: no choice', () => {
    const { open } = setup([{ policy: 'rr', backends: [{ addr: A, maxc: 1 }] }, { policy: 'hash', backends: [{ addr: C, maxc: 1 }] }]);
    expect(seq(3, () => open())).toEqual([A, C, '-']);
  });
});

describe('passive ejection', () => {
  it('backs off 1 s, 2 s, 4 s ... capped at 30 s', () => {
    const st = newBackend();
    expect(BACKOFF_START_MS).toBe(1000);
    expect(BACKOFF_MAX_MS).toBe(30_000);
    let now = 1_000_000;
    const seen: number[] = [];
    for (let i = 0; i < 8; i++) {
      st.connectFailed(now, 'ETIMEDOUT', false);
      seen.push(st.ejectedUntil - now);
      expect(st.isDown(now + st.backoffMs - 1)).toBe(true);
      expect(st.isDown(now + st.backoffMs)).toBe(false);
      now += st.backoffMs; // the probe at the end of the back-off fails again
      st.picked();
    }
    expect(seen).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    expect(st.failures).toBe(8);
    expect(st.lastFailure).toBe('ETIMEDOUT');
  });

  it('a success resets the back-off', () => {
    const st = newBackend();
    st.connectFailed(0, 'ECONNREFUSED', false);
    st.connectFailed(1000, 'ECONNREFUSED', false);
    expect(st.backoffMs).toBe(2000);
    st.picked();
    st.connectSucceeded(3000);
    expect(st.isDown(3000)).toBe(false);
    st.connectFailed(5000, 'ECONNREFUSED', false);
    expect(st.ejectedUntil).toBe(6000);
  });

  it('after the back-off exactly one client probes; the others skip the backend until the probe ends', () => {
    const { choose, st, key } = setup([{ policy: 'rr', backends: [A, Bk] }]);
    const t0 = 2_000_000;
    st(0, 0).connectFailed(t0, 'ECONNREFUSED', false);
    expect(unusable(backend(A), st(0, 0), t0 + 500, null)).toBe('down');
    expect(seq(3, () => key(choose(t0 + 500)))).toEqual([Bk, Bk, Bk]);
    // Back-off over: the next client that lands on A is the probe.
    let probe: Choice | null = null;
    for (let i = 0; i < 2 && !probe; i++) {
      const c = choose(t0 + 1000)!;
      c.state.picked();
      if (c.entry.key === A) probe = c;
    }
    expect(probe).not.toBeNull();
    expect(st(0, 0).probing).toBe(true);
    // While it is in flight nobody else gets A.
    expect(seq(4, () => key(choose(t0 + 1001)))).toEqual([Bk, Bk, Bk, Bk]);
    // The probe fails: ejected again for twice as long.
    st(0, 0).connectFailed(t0 + 1100, 'ECONNREFUSED', false);
    expect(st(0, 0).probing).toBe(false);
    expect(st(0, 0).ejectedUntil).toBe(t0 + 1100 + 2000);
    expect(key(choose(t0 + 3000))).toBe(Bk);
    // Next probe succeeds: back in rotation for everyone.
    const c2 = [choose(t0 + 3100)!, choose(t0 + 3100)!].find((c) => c.entry.key === A)!;
    c2.state.picked();
    c2.state.connectSucceeded(t0 + 3101);
    const picks = seq(4, () => key(choose(t0 + 3102)));
    expect(picks.filter((k) => k === A)).toHaveLength(2);
  });

  it('autodisable: down until an operator enables it, however long it waits', () => {
    const { choose, st, key } = setup([{ policy: 'rr', backends: [A, Bk] }]);
    st(0, 0).connectFailed(0, 'ECONNREFUSED', true);
    expect(st(0, 0).autoDisabled).toBe(true);
    expect(st(0, 0).failures).toBe(1);
    const hourLater = 3_600_000;
    expect(seq(4, () => key(choose(hourLater)))).toEqual([Bk, Bk, Bk, Bk]);
    st(0, 0).operatorEnabled(hourLater);
    expect(seq(4, () => key(choose(hourLater))).sort()).toEqual([A, A, Bk, Bk]);
  });

  it('an operator enable also ends an ejection at once', () => {
    const st = newBackend();
    st.connectFailed(0, 'ETIMEDOUT', false);
    st.connectFailed(1000, 'ETIMEDOUT', false);
    st.operatorEnabled(1500);
    expect(st.isDown(1500)).toBe(false);
    st.connectFailed(1600, 'ETIMEDOUT', false);
    expect(st.backoffMs).toBe(1000);
  });
});

describe('groups', () => {
  it('a later group is used only when the earlier one has nothing usable', () => {
    const { choose, st, key } = setup([
      { policy: 'rr', backends: [A, Bk] },
      { policy: 'rr', backends: [C] },
    ]);
    expect(seq(2, () => key(choose()))).toEqual([A, Bk]);
    st(0, 0).connectFailed(1_000_000, 'ECONNREFUSED', false);
    st(0, 1).connectFailed(1_000_000, 'ECONNREFUSED', false);
    expect(choose()).toMatchObject({ group: 1, index: 0 });
  });

  it('the failover walk goes through the rest of the group, then later groups, then gives up', () => {
    const { choose, st } = setup([
      { policy: 'rr', backends: [A, Bk] },
      { policy: 'rr', backends: [C] },
    ]);
    const tried: BackendState[] = [];
    const order: string[] = [];
    for (let c = choose(1, 'x', tried); c; c = choose(1, 'x', tried)) {
      order.push(c.entry.key);
      tried.push(c.state);
    }
    expect(order).toEqual([A, Bk, C]);
    expect(st(1, 0).attempts).toBe(0); // choosing alone counts nothing
  });
});
