// `[global] maxconn`'s pure parts (src/proxy/conn-limit.ts, SharedState's limit): the default from the
// descriptor limit, and the count that admits exactly up to the limit and gives a dead worker's back.

import { describe, expect, it } from 'vitest';
import { defaultMaxconn, effectiveMaxconn, FDS_PER_CONN, MAXCONN_RESERVE, openFileLimit } from '../../src/proxy/conn-limit.ts';
import { DEFAULT_CAPACITY, SharedState } from '../../src/shared/state.ts';

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1048576              1048576              files
Max locked memory         8388608              8388608              bytes
`;

describe('the default maxconn', () => {
  it('reads the soft descriptor limit from /proc/self/limits', () => {
    expect(openFileLimit(LIMITS)).toBe(1048576);
    expect(openFileLimit(LIMITS.replace('1048576              1048576', 'unlimited            unlimited'))).toBeNull();
    expect(openFileLimit('nothing useful')).toBeNull();
    expect(openFileLimit()).toBeGreaterThan(0); // this process's, on Linux
  });

  it('keeps 256 descriptors back and allows 2.5 per connection (two sockets, a pipe pair for one in two)', () => {
    expect(MAXCONN_RESERVE).toBe(256);
    expect(FDS_PER_CONN).toBe(2.5);
    expect(defaultMaxconn(1024)).toBe(307);
    expect(defaultMaxconn(1048576)).toBe(419328);
    expect(defaultMaxconn(100)).toBe(1); // never 0 (0 would mean no limit)
  });

  it('a configured maxconn wins; without one and without a descriptor limit there is none (0)', () => {
    expect(effectiveMaxconn(100, 1024)).toBe(100);
    expect(effectiveMaxconn(null, 1024)).toBe(307);
    expect(effectiveMaxconn(null, null)).toBe(0);
  });
});

describe('the shared connection count', () => {
  it('admits exactly up to the limit, counts each refusal, and admits again once a place is given back', () => {
    const s = new SharedState(undefined, { ...DEFAULT_CAPACITY, regions: 2 });
    s.setMaxconn(3);
    expect([s.admitConn(0), s.admitConn(1), s.admitConn(0), s.admitConn(1)]).toEqual([true, true, true, false]);
    expect(s.connFigures()).toEqual({ max: 3, cur: 3, reached: 1, refused: 1 });
    expect(s.releaseConn(1)).toBe(false); // no addon thread waits
    expect(s.admitConn(1)).toBe(true);
    expect(s.connFigures().cur).toBe(3);
  });

  it('no limit (0) still counts; a dead worker\'s places are given back, the others\' kept', () => {
    const s = new SharedState(undefined, { ...DEFAULT_CAPACITY, regions: 2 });
    s.setMaxconn(0);
    for (let i = 0; i < 5; i++) expect(s.admitConn(i % 2)).toBe(true);
    expect(s.connFigures().cur).toBe(5);
    s.workerGone(0, [], []); // region 0 held 3
    expect(s.connFigures().cur).toBe(2);
    s.workerGone(0, [], []); // nothing left to give back
    expect(s.connFigures().cur).toBe(2);
  });
});
