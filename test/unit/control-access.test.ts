// The pure parts of control-port access: which level a session has, how token guessing is slowed, and
// what a read-level session is not shown.

import { describe, expect, it } from 'vitest';
import {
  AUTH_FAIL_DELAY_MS, AUTH_GLOBAL_STEP_MS, AUTH_MAX_DELAY_MS, AUTH_WINDOW_MS, AuthThrottle, levelAllows, sessionLevel, tokenMatches,
} from '../../src/control/access.ts';
import { HIDDEN, hideSecrets } from '../../src/control/commands.ts';

describe('sessionLevel', () => {
  const c = { level: 'admin', socketLevel: 'operator', tokenFile: '/etc/lb/token' } as const;
  it('TCP starts at read and auth raises it to level; the socket starts at socket_level', () => {
    expect(sessionLevel(c, 'tcp', false)).toBe('read');
    expect(sessionLevel(c, 'tcp', true)).toBe('admin');
    expect(sessionLevel(c, 'unix', false)).toBe('operator');
    expect(sessionLevel(c, 'unix', true)).toBe('admin');
  });
  it('without a token file nothing raises a session, and auth never lowers one', () => {
    expect(sessionLevel({ ...c, tokenFile: null }, 'tcp', true)).toBe('read');
    expect(sessionLevel({ level: 'read', socketLevel: 'admin', tokenFile: '/t' }, 'unix', true)).toBe('admin');
  });
  it('levels are ordered read < operator < admin', () => {
    expect(levelAllows('admin', 'operator')).toBe(true);
    expect(levelAllows('operator', 'admin')).toBe(false);
    expect(levelAllows('read', 'read')).toBe(true);
  });
  it('tokenMatches compares whole tokens', () => {
    expect(tokenMatches('abc', 'abc')).toBe(true);
    expect(tokenMatches('abc', 'abcd')).toBe(false);
    expect(tokenMatches('', 'abc')).toBe(false);
  });
});

describe('AuthThrottle', () => {
  it('grows with the session\'s failures and with the port\'s recent ones, up to a cap, and forgets old ones', () => {
    const t = new AuthThrottle();
    expect(t.failed(1, 0)).toBe(AUTH_FAIL_DELAY_MS);
    expect(t.failed(2, 10)).toBe(2 * AUTH_FAIL_DELAY_MS + AUTH_GLOBAL_STEP_MS);
    expect(t.failed(1, 20)).toBe(AUTH_FAIL_DELAY_MS + 2 * AUTH_GLOBAL_STEP_MS); // another session: still slower
    for (let i = 0; i < 5000; i++) t.failed(1, 30);
    expect(t.failed(1, 40)).toBe(AUTH_MAX_DELAY_MS);
    expect(t.failed(1, 40 + AUTH_WINDOW_MS)).toBe(AUTH_FAIL_DELAY_MS); // the window has passed
  });
});

describe('hideSecrets', () => {
  it('replaces health send strings (config document and snapshot shapes) and the token file, nothing else', () => {
    const doc = {
      control: { listen: '127.0.0.1:8023', token_file: '/etc/lb/token' },
      listeners: { web: { groups: [{ health: { send: 'LOGIN x y\r\n', expect: 'OK' }, backends: [{ host: 'a', health: { send: 'S' } }, 'b:1'] }] } },
      send: 'not a health send',
    };
    const out = hideSecrets(doc) as typeof doc;
    expect(out.control.token_file).toBe(HIDDEN);
    expect(out.listeners.web.groups[0]!.health.send).toBe(HIDDEN);
    expect(out.listeners.web.groups[0]!.health.expect).toBe('OK');
    expect((out.listeners.web.groups[0]!.backends[0] as { health: { send: string } }).health.send).toBe(HIDDEN);
    expect(out.listeners.web.groups[0]!.backends[1]).toBe('b:1');
    expect(out.send).toBe('not a health send');
    expect(doc.control.token_file).toBe('/etc/lb/token'); // a copy: the running table is untouched
    const snap = { listeners: [{ groups: [{ backends: [{ entry: { health: { send: 'x', port: null } } }] }] }] };
    expect(JSON.stringify(hideSecrets(snap))).not.toContain('"x"');
  });
});
