import { describe, expect, it } from 'vitest';
import {
  formatDuration,
  parseBackendString,
  parseDuration,
  parseListenAddress,
  parsePort,
} from '../../src/config/values.ts';

describe('parseDuration', () => {
  it.each([
    ['250ms', 250],
    ['5s', 5_000],
    ['2m', 120_000],
    ['1h', 3_600_000],
    ['1d', 86_400_000],
    ['1m30s', 90_000],
    ['1h15m', 4_500_000],
    ['1.5s', 1_500],
    ['0', 0],
    ['0s', 0],
  ])('reads %j as %i ms', (text, ms) => {
    expect(parseDuration(text)).toEqual({ ok: true, value: ms });
  });

  it.each([
    [5, 5_000],
    [1, 1_000],
    [0, 0],
  ])('reads the integer %i as seconds (%i ms), like balance -t/-T', (seconds, ms) => {
    expect(parseDuration(seconds)).toEqual({ ok: true, value: ms });
  });

  it.each(['', '5 s', '5S', '-5s', '1h 30m', 'ms', 'five', '.5s', '5sec', '5'])(
    'rejects the string %j, naming it in the error',
    (text) => {
      const result = parseDuration(text);
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.error).toContain(JSON.stringify(text));
    },
  );

  it.each([-1, 1.5])('rejects the number %d (not a whole, non-negative number of seconds)', (n) => {
    expect(parseDuration(n).ok).toBe(false);
  });

  it.each([0, 1, 250, 1_000, 1_500, 60_000, 90_000, 3_600_000, 86_400_000])(
    'formatDuration(%i) is read back by parseDuration as the same number of ms',
    (ms) => {
      expect(parseDuration(formatDuration(ms))).toEqual({ ok: true, value: ms });
    },
  );

  it('formatDuration uses the largest unit that divides exactly', () => {
    expect([0, 1_500, 90_000, 120_000, 7_200_000].map(formatDuration)).toEqual(['0', '1500ms', '90s', '2m', '2h']);
  });
});

describe('parseListenAddress', () => {
  it.each<[string | number, string | null, number]>([
    [':143', null, 143],
    ['[::1]:80', '::1', 80],
    ['127.0.0.1:8080', '127.0.0.1', 8080],
    ['localhost:8080', 'localhost', 8080],
    ['0.0.0.0:80', '0.0.0.0', 80],
    ['*:80', null, 80],
    ['143', null, 143],
    [143, null, 143],
    ['imap', null, 143],
    ['127.0.0.1:imap', '127.0.0.1', 143],
    ['[::1]:smtp', '::1', 25],
  ])('reads %j as host %j, port %i', (input, host, port) => {
    expect(parseListenAddress(input)).toEqual({ ok: true, value: { host, port } });
  });

  it.each<[string | number, string | null]>([
    [0, null],
    ['0', null],
    [':0', null],
    ['127.0.0.1:0', '127.0.0.1'],
  ])('accepts port 0 for a listener (%j: any free port)', (input, host) => {
    expect(parseListenAddress(input)).toEqual({ ok: true, value: { host, port: 0 } });
  });

  it.each<[string | number, RegExp]>([
    ['[::1]', /missing port/],
    ['::1:80', /must be written in brackets/],
    ['fe80::1:8080', /must be written in brackets/],
    ['127.0.0.1:', /empty port/],
    ['127.0.0.1:65536', /out of range/],
    [65536, /out of range/],
    [-1, /out of range/],
    ['no-such-service-xyz', /unknown service name "no-such-service-xyz"/],
    ['127.0.0.1:no-such-service-xyz', /unknown service name/],
    ['[::1]80', /unexpected "80"/],
    ['[::1:80', /unterminated "\["/],
    ['[example.com]:80', /not an IPv6 address/],
  ])('rejects %j', (input, message) => {
    const result = parseListenAddress(input);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.error).toMatch(message);
  });
});

describe('parseBackendString (balance channel syntax host[:port[:maxc]])', () => {
  it.each<[string, string, number | null, number | null]>([
    ['mail1', 'mail1', null, null],
    ['mail1:143', 'mail1', 143, null],
    ['mail1:143:16', 'mail1', 143, 16],
    ['mail1::16', 'mail1', null, 16],
    ['mail1::0', 'mail1', null, 0],
    ['mail1:imap', 'mail1', 143, null],
    ['mail1:imap:4', 'mail1', 143, 4],
    ['10.0.0.1:8080:2', '10.0.0.1', 8080, 2],
    ['[::1]', '::1', null, null],
    ['[::1]:143', '::1', 143, null],
    ['[::1]:143:16', '::1', 143, 16],
    ['[2001:db8::5]::3', '2001:db8::5', null, 3],
  ])('reads %j as host %j, port %j, maxc %j', (input, host, port, maxc) => {
    expect(parseBackendString(input)).toEqual({ ok: true, value: { host, port, maxc } });
  });

  it.each(['::1', '2001:db8::1', 'fe80::1:143', '::1:143:16'])('rejects the unbracketed IPv6 literal %j', (input) => {
    const result = parseBackendString(input);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.error).toMatch(/must be written in brackets/);
  });

  it.each([
    ['mail1:143:x', 'x'],
    ['mail1:143:-1', '-1'],
    ['mail1:143:1.5', '1.5'],
    ['mail1::sixteen', 'sixteen'],
  ])('rejects %j: maxc %j is not a whole number >= 0', (input, maxc) => {
    const result = parseBackendString(input);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.error).toContain(`invalid maxc "${maxc}"`);
  });

  it.each(['mail1:0', 'mail1:65536', 'mail1:99999:4', '[::1]:70000'])('rejects %j: port out of range 1-65535', (input) => {
    const result = parseBackendString(input);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.error).toMatch(/port \d+ out of range \(1-65535\)/);
  });

  it.each<[string, RegExp]>([
    [':143', /missing host/],
    ['mail1:no-such-service-xyz', /unknown service name "no-such-service-xyz"/],
    ['[::1', /unterminated/],
    ['[mail1]:143', /not an IPv6 address/],
    ['[::1]143', /unexpected "143"/],
  ])('rejects %j', (input, message) => {
    const result = parseBackendString(input);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.error).toMatch(message);
  });
});

describe('parsePort', () => {
  it('takes numbers, numeric strings and tcp service names', () => {
    expect([parsePort(1), parsePort('65535'), parsePort('http'), parsePort('smtp')]).toEqual([
      { ok: true, value: 1 },
      { ok: true, value: 65535 },
      { ok: true, value: 80 },
      { ok: true, value: 25 },
    ]);
  });

  it('rejects port 0 for backends (the default) but accepts it when the minimum is 0 (listeners)', () => {
    expect(parsePort(0).ok).toBe(false);
    expect(parsePort('0').ok).toBe(false);
    expect(parsePort(0, 0)).toEqual({ ok: true, value: 0 });
  });

  it.each<string | number>([65536, '65536', -1, 1.5, ''])('rejects %j', (input) => {
    expect(parsePort(input).ok).toBe(false);
  });
});
