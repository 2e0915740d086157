// `[global] log_level` and the Logger's filtering; the control port's command lines (reads at debug,
// failures with their reason); and the one-line explanation of a failure that ends an `lb` command.

import { describe, expect, it } from 'vitest';
import { explainFailure, formatFailure } from '../../src/cli/failure.ts';
import { buildTable } from '../../src/config/pipeline.ts';
import { Code, Exit, LbError } from '../../src/errors.ts';
import { controlCommandEvent, createLogger, levelEnabled, type AccessRecord } from '../../src/log.ts';

const access: AccessRecord = {
  id: 1, listener: 'web', client: '127.0.0.1:5000', backend: 'www1', backend_addr: '127.0.0.1:80', group: 0, sent: 1, rcvd: 2, ms: 3, queued_ms: undefined, end: 'client-close',
};

describe('log levels', () => {
  it('write the level and above, and the access log whatever the level', () => {
    const lines: string[] = [];
    const log = createLogger('text', (l) => lines.push(l), 'warn');
    log.log('debug', 'd');
    log.log('info', 'i');
    log.log('warn', 'w');
    log.log('error', 'e');
    log.access(access);
    expect(lines.map((l) => l.split(' ').slice(1, 3).join(' '))).toEqual(['warn w', 'error e', 'info conn']);
  });

  it('follow a change of level (a reload)', () => {
    const lines: string[] = [];
    const log = createLogger('json', (l) => lines.push(l));
    log.log('debug', 'hidden');
    log.level = 'debug';
    log.log('debug', 'shown', { n: 1 });
    expect(lines.map((l) => JSON.parse(l) as Record<string, unknown>)).toEqual([{ time: expect.any(String), level: 'debug', event: 'shown', n: 1 }]);
  });

  it('order debug < info < warn < error', () => {
    expect(['debug', 'info', 'warn', 'error'].map((l) => levelEnabled('info', l as 'info'))).toEqual([false, true, true, true]);
    expect(levelEnabled('debug', 'debug')).toBe(true);
    expect(levelEnabled('error', 'warn')).toBe(false);
  });

  it('are set by [global] log_level, default info; anything else is refused', async () => {
    const doc = (global: object) => ({ global, listeners: { a: { listen: 18001, groups: [{ backends: ['127.0.0.1'] }] } } });
    const ok = async (global: object) => {
      const r = await buildTable(doc(global), { resolve: 'skip' });
      return r.ok ? r.table.global.logLevel : null;
    };
    expect(await ok({})).toBe('info');
    expect(await ok({ log_level: 'debug' })).toBe('debug');
    const bad = await buildTable(doc({ log_level: 'verbose' }), { resolve: 'skip' });
    expect(!bad.ok && bad.diagnostics.map((d) => d.message)).toEqual(['must be one of "debug", "info", "warn", "error", not "verbose"']);
  });
});

describe('control command log lines', () => {
  it('log reads at debug, changes at info, failures at warn with the reason and code', () => {
    expect(controlCommandEvent('unix', 'show stat', { text: '# pxname,...' }, true)).toEqual({
      level: 'debug', event: 'control', fields: { peer: 'unix', command: 'show stat', ok: true },
    });
    expect(controlCommandEvent('127.0.0.1:4000', 'disable web 0 1', { text: 'channel 1 disabled' }, false).level).toBe('info');
    expect(controlCommandEvent('unix', 'save', { text: 'error: EROFS: read-only file system, open \'/etc/lb/lb.toml.tmp\'; usage: save [FILE]', error: 'LB_CONTROL_BAD_ARGS' }, false)).toEqual({
      level: 'warn', event: 'control',
      fields: { peer: 'unix', command: 'save', ok: false, error: "EROFS: read-only file system, open '/etc/lb/lb.toml.tmp'; usage: save [FILE]", code: 'LB_CONTROL_BAD_ARGS' },
    });
  });

  it('in text: command=save ok=false error="..." (a read is not written at the default level)', () => {
    const lines: string[] = [];
    const log = createLogger('text', (l) => lines.push(l));
    for (const [command, reply, readOnly] of [
      ['show', { text: 'listener ...' }, true],
      ['save', { text: 'error: cannot write /etc/lb/lb.toml: EROFS', error: 'LB_CONTROL_BAD_ARGS' }, false],
    ] as const) {
      const e = controlCommandEvent('unix', command, reply, readOnly);
      log.log(e.level, e.event, e.fields);
    }
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/ warn control peer=unix command=save ok=false error="cannot write \/etc\/lb\/lb.toml: EROFS" code=LB_CONTROL_BAD_ARGS$/);
  });
});

describe('failure lines', () => {
  const errno = (code: string, syscall: string, path: string): NodeJS.ErrnoException =>
    Object.assign(new Error(`${code}: ${syscall} '${path}'`), { code, syscall, path, errno: -13 });

  it.each<[string, unknown, number, RegExp]>([
    ['mkdir EACCES (the packaged config outside systemd)', errno('EACCES', 'mkdir', '/run/lb'), 77,
      /^lb: cannot create directory \/run\/lb: permission denied \(EACCES\) \[LB_STARTUP_PERMISSION\]; lb runs as \S+, who may not write there: run it under its systemd unit \(which creates \/run\/lb and \/var\/lib\/lb for user lb\), create \/run\/lb owned by this user, or set a path this user can write in the config$/],
    ['open EROFS', errno('EROFS', 'open', '/etc/lb/x'), 73, /^lb: cannot open \/etc\/lb\/x: read-only file system \(EROFS\) \[LB_STARTUP_CANTCREAT\]; the file system is read-only here/],
    ['mkdir ENOTDIR', errno('ENOTDIR', 'mkdir', '/tmp/f/x'), 73, /\[LB_STARTUP_CANTCREAT\]; check the path in the config/],
    ['EMFILE', errno('EMFILE', 'open', '/x'), 71, /^lb: cannot open \/x: too many open files \(EMFILE\) \[LB_STARTUP_FAILED\]$/],
    ['a bind refused', new LbError(Code.BIND, 'listener web: cannot listen on 127.0.0.1:80: EACCES', Exit.NOPERM), 77, /\[LB_BIND\]; ports below 1024 need root or CAP_NET_BIND_SERVICE/],
    ['an LbError caused by EACCES, whatever exit its thrower chose', new LbError(Code.STATE_WRITE, 'cannot write state file /var/lib/lb/state.json: EACCES', Exit.CANTCREAT), 77, /\[LB_STATE_WRITE\]; lb runs as/],
    ['a defect', new TypeError('x is not a function'), 70, /^lb: unexpected error: x is not a function \[LB_INTERNAL\]; this is a defect in lb: please report it .* LB_DEBUG=1$/],
  ])('%s', (_what, err, exit, line) => {
    const f = explainFailure(err);
    expect(f.exitCode).toBe(exit);
    const text = formatFailure(f);
    expect(text).toMatch(line);
    expect(text).not.toContain('\n');
  });
});
