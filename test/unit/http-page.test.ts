// The status page's server-side pieces: its script parses, names are escaped, states are named as the
// operator reads them, numbers are exact.

import vm from 'node:vm';
import { describe, expect, it } from 'vitest';
import { PAGE_JS } from '../../src/http/assets.ts';
import { bearerToken, hostAllowed, originMatches, parseCookies, Sessions } from '../../src/http/auth.ts';
import { esc, fmtInt, stateOf } from '../../src/http/page.ts';
import type { BackendSnap } from '../../src/stats/snapshot.ts';

describe('page pieces', () => {
  it('serves a script that is valid JavaScript (it lives in a template string, where escapes bite)', () => {
    expect(() => new vm.Script(PAGE_JS)).not.toThrow();
    expect(PAGE_JS).toContain("replace(/\\n$/, '')");
  });

  it('escapes what it puts in HTML and prints counts exactly, grouped', () => {
    expect(esc(`<a href="x">'&`)).toBe('&lt;a href=&quot;x&quot;&gt;&#39;&amp;');
    expect(fmtInt(1234567890123)).toBe('1\u202f234\u202f567\u202f890\u202f123');
    expect(fmtInt(999)).toBe('999');
  });

  it('names states UP, DOWN, EJECTED, DIS and DRN', () => {
    const b = (status: string, downReason = ''): BackendSnap => ({ status, downReason }) as unknown as BackendSnap;
    expect(stateOf(b('ENA')).label).toBe('UP');
    expect(stateOf(b('dis', 'health check failed: L4CON')).label).toBe('DOWN');
    expect(stateOf(b('dis', 'ejected 3s: ECONNREFUSED')).label).toBe('EJECTED');
    expect(stateOf(b('DIS')).label).toBe('DIS');
    expect(stateOf(b('DRN')).label).toBe('DRN');
  });
});

describe('auth pieces', () => {
  it('ties a CSRF token to its session and compares in constant time', () => {
    const s = new Sessions();
    const id = s.create(0);
    expect(s.valid(id, 1)).toBe(true);
    expect(s.csrfValid(id, s.csrf(id))).toBe(true);
    expect(s.csrfValid('', s.csrf(id))).toBe(false);
    expect(s.csrfValid(id, undefined)).toBe(false);
    expect(s.valid(id, 13 * 3600 * 1000)).toBe(false); // expired after 12 h
    expect(new Sessions().csrfValid('', s.csrf(''))).toBe(false); // another server's secret
  });

  it('reads cookies and Bearer headers', () => {
    expect(parseCookies('a=1; lb_session=xyz; a=2').get('lb_session')).toBe('xyz');
    expect(parseCookies('a=1; a=2').get('a')).toBe('1');
    expect(bearerToken('Bearer abc')).toBe('abc');
    expect(bearerToken('Basic abc')).toBeNull();
  });

  it('answers loopback Host names only on a loopback face; checks Origin against Host', () => {
    expect(hostAllowed('127.0.0.1', 'localhost:8024')).toBe(true);
    expect(hostAllowed('127.0.0.1', '[::1]:8024')).toBe(true);
    expect(hostAllowed('127.0.0.1', '127.1.2.3')).toBe(true);
    expect(hostAllowed('127.0.0.1', 'evil.example:8024')).toBe(false);
    expect(hostAllowed('::1', 'evil.example')).toBe(false);
    expect(hostAllowed('10.1.2.3', 'lb.corp.example:8024')).toBe(true);
    expect(originMatches(undefined, 'x:1')).toBe(true);
    expect(originMatches('http://127.0.0.1:8024', '127.0.0.1:8024')).toBe(true);
    expect(originMatches('http://evil.example', '127.0.0.1:8024')).toBe(false);
    expect(originMatches('null', '127.0.0.1:8024')).toBe(false);
  });
});
