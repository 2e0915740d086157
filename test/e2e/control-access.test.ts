// Who may use the control port and for what (issue 12 item 4): levels read < operator < admin; a TCP
// session starts at read and `auth TOKEN` (control.token_file) raises it to control.level; the Unix socket
// (mode 0660 from the start, in a directory others cannot write) starts at socket_level; `allow` CIDRs
// refuse other TCP peers; a reload re-applies all of it to open sessions; read sessions do not see secrets.

import { chmodSync, existsSync, lstatSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ask, backendOf, echoServer, within } from '../helpers/backends.ts';
import { runLb } from '../helpers/cli.ts';
import {
  adminControl, ctl, ERROR_LINE, expectAlive, openSession, showRow, startCliLb, startControlLb, TEST_TOKEN, testTokenFile,
  useControlScope, webToml,
} from '../helpers/control.ts';
import { at, cleanup } from '../helpers/lb.ts';

const scope = useControlScope();

/** Every command that needs more than read, with plausible arguments (the refusal comes first anyway). */
const OPERATOR: Record<string, string> = {
  enable: 'enable web 0 1',
  disable: 'disable web 0 0',
  drain: 'drain web 0 0',
  maxc: 'maxc web 0 0 1',
  reset: 'reset web 0 0',
};
const ADMIN: Record<string, string> = {
  reload: 'reload',
  create: 'create 127.0.0.1 9',
  assign: 'assign web 0 1 127.0.0.1 9',
  delete: 'delete web 0 1',
  hash: 'hash',
  rr: 'rr web 0',
  policy: 'policy web 0 first',
  save: 'save',
  kill: 'kill',
};

const READ_ONLY = [
  'help', '?', 'show', 'show web', 'show stat', 'show info', 'show json', 'show config', 'use web', 'group 0',
  'mrtg-bytes 0 0', 'mrtg-bytes web 0 1', 'mrtg-conns web', 'version',
];

const HEALTH_SEND = 'a1 LOGIN monitor s3cret\r\n';

async function webLb(control: Record<string, unknown>) {
  const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
  const started = await startControlLb({
    global: { access_log: true },
    control: { listen: '127.0.0.1:0', ...control },
    listeners: {
      web: {
        listen: '127.0.0.1:0',
        groups: [{ policy: 'rr', backends: [at(a.port), at(b.port)], health: { interval: '1h', send: HEALTH_SEND } }],
      },
    },
  });
  return { ...started, a, b };
}

/** Sends every command of `commands` in one session and expects each refused for lack of level. */
async function expectRefused(s: Awaited<ReturnType<typeof openSession>>, commands: Record<string, string>, need: string, have: string) {
  for (const line of Object.values(commands)) {
    const reply = await s.command(line);
    expect(reply, line).toMatch(ERROR_LINE);
    expect(reply, line).toContain(`needs level ${need}, this session has ${have}`);
    expect(reply, line).toMatch(/\[LB_CONTROL_NOT_ADMIN\]$/);
  }
}

describe('levels on TCP', () => {
  it('without a token a TCP session is read: help marks each level, everything above read is refused, nothing changes', async () => {
    const { lb, port } = await webLb({});
    await ask(lb.port(), 'x'); // some traffic, so a reset would show
    await lb.logs.waitFor('conn');
    const s = await openSession(port);
    const before = await s.command('show');
    const help = await s.command('help');
    expect(help.split('\n')[0]).toBe('available commands (this session: read):');
    const marked = (level: string) => help.split('\n').filter((l) => l.endsWith(`(${level})`)).map((l) => l.trim().split(/\s/)[0]!);
    expect(marked('operator').sort()).toEqual(Object.keys(OPERATOR).sort());
    expect(marked('admin').sort()).toEqual(Object.keys(ADMIN).sort());
    await expectRefused(s, OPERATOR, 'operator', 'read');
    await expectRefused(s, ADMIN, 'admin', 'read');
    expect(await s.command('show')).toBe(before);
    expect([backendOf(await ask(lb.port(), 'y')), backendOf(await ask(lb.port(), 'z'))].sort()).toEqual(['a', 'b']);
    for (const line of READ_ONLY) {
      const reply = await s.command(line);
      expect(reply, line).not.toMatch(/^error:/m);
      expect(reply.length, line).toBeGreaterThan(0);
    }
    expect(await s.command(`auth ${TEST_TOKEN}`)).toMatch(/^error: this port takes no token .*\[LB_CONTROL_AUTH\]$/);
    s.write('quit\n');
    await within(s.gone, 3000, 'quit to close the session');
  });

  it('level = "operator": auth raises the session to operator; admin commands stay refused', async () => {
    const { port } = await webLb({ level: 'operator', token_file: testTokenFile() });
    const s = await openSession(port, { auth: false });
    expect(await s.command('disable web 0 0')).toMatch(/needs level operator, this session has read/);
    expect(await s.command(`auth ${TEST_TOKEN}`)).toBe('level operator');
    expect((await s.command('help')).split('\n')[0]).toBe('available commands (this session: operator):');
    expect(await s.command('disable web 0 0')).toBe('channel 0 disabled');
    expect(await s.command('drain web 0 1')).toMatch(/^channel 1 drain/);
    expect(await s.command('enable web 0 0')).toBe('channel 0 enabled');
    await expectRefused(s, ADMIN, 'admin', 'operator');
  });

  it('a wrong token is answered after a delay, never logged, and the third failure closes the session', async () => {
    const { lb, port } = await webLb({ level: 'admin', token_file: testTokenFile() });
    const s = await openSession(port, { auth: false });
    const t0 = Date.now();
    expect(await s.command('auth not-the-token-at-all', 5000)).toMatch(/^error: wrong token \[LB_CONTROL_AUTH\]$/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(await s.command('disable web 0 0')).toMatch(/needs level operator, this session has read/);
    const t1 = Date.now();
    expect(await s.command('auth still-wrong', 8000)).toMatch(/^error: wrong token \[LB_CONTROL_AUTH\]$/);
    expect(Date.now() - t1).toBeGreaterThanOrEqual(1900); // longer after each failure
    s.write('auth third-wrong\nversion\n');
    await within(s.gone, 10_000, 'the session to be closed after the third failure');
    expect(s.raw().toString('latin1')).toMatch(/error: wrong token; closing after 3 failures \[LB_CONTROL_AUTH\]\n\n$/);
    // A correct token on a new session works, and no token (right or wrong) is in any log line.
    expect(await ctl(port, 'disable web 0 0', 5000, { auth: true })).toBe('channel 0 disabled');
    const logs = lb.logs.all(() => true).map((l) => JSON.stringify(l)).join('\n');
    expect(logs).toMatch(/control-auth-failed/);
    expect(logs).toMatch(/command.{0,4}auth/);
    for (const secret of [TEST_TOKEN, 'not-the-token-at-all', 'still-wrong', 'third-wrong']) expect(logs).not.toContain(secret);
  });

  it('level = "operator" without token_file is a --check error; admin = true is a warning and leaves TCP at read', async () => {
    const scratch = scope.scratch();
    const noToken = scratch.write('a.toml', webToml({ level: 'operator' }, [9]));
    const r = await runLb(['--check', noToken]);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/control\.level: level = "operator" needs token_file/);
    const legacy = scratch.write('b.toml', webToml({ admin: true }, [9]));
    const w = await runLb(['--check', '--print', legacy]);
    expect(w.code).toBe(0);
    expect(w.stderr).toMatch(/control\.admin: warning: admin is deprecated.*without token_file TCP stays read/);
    expect(w.stdout).toMatch(/^control 127\.0\.0\.1:0 level=read socket_level=admin$/m);
    const legacyToken = scratch.write('c.toml', webToml({ admin: true, token_file: testTokenFile() }, [9]));
    expect((await runLb(['--check', '--print', legacyToken])).stdout).toMatch(/level=admin socket_level=admin token_file=/);
  });

  it('admin = true (legacy) with a TCP port: TCP answers read-level only, the socket is admin', async () => {
    const sock = path.join(scope.scratch().path, 'ctl.sock');
    const { port } = await webLb({ admin: true, socket: sock });
    expect(await ctl(port, 'disable web 0 0')).toMatch(/needs level operator, this session has read \(.*\) \[LB_CONTROL_NOT_ADMIN\]$/);
    expect(await ctl(sock, 'disable web 0 0')).toBe('channel 0 disabled');
  });
});

describe('secrets in show', () => {
  it('show config and show json hide health send strings and the token file from read sessions, not from admin', async () => {
    const { port } = await webLb({ level: 'admin', token_file: testTokenFile() });
    const read = await openSession(port, { auth: false });
    const admin = await openSession(port, { auth: true });
    for (const what of ['show config', 'show json']) {
      const low = await read.command(what);
      const high = await admin.command(what);
      expect(low, what).toContain('<hidden>');
      expect(low, what).not.toContain('s3cret');
      expect(low, what).not.toContain(testTokenFile());
      expect(high, what).toContain('s3cret');
    }
    expect(await admin.command('show config')).toContain(testTokenFile());
  });
});

describe('a reload re-applies access to open sessions', () => {
  it('a new token takes back what the old one gave; a narrower allow closes the session with the reason', async () => {
    const scratch = scope.scratch();
    const tokenA = scratch.write('a.token', 'first-token-0123456789\n');
    const { lb, port, a, b } = await webLb({ level: 'admin', token_file: tokenA });
    // The same addresses as at the start (port 0 included): the control port is updated in place.
    const doc = (control: Record<string, unknown>) => ({
      global: { access_log: true },
      control: { listen: '127.0.0.1:0', ...control },
      listeners: {
        web: { listen: '127.0.0.1:0', groups: [{ policy: 'rr', backends: [at(a.port), at(b.port)], health: { interval: '1h', send: HEALTH_SEND } }] },
      },
    });
    const s = await openSession(port, { auth: false });
    expect(await s.command('auth first-token-0123456789')).toBe('level admin');
    expect(await s.command('disable web 0 0')).toBe('channel 0 disabled');
    // Same file, same token: the session keeps its level.
    await lb.apply(doc({ level: 'admin', token_file: tokenA }));
    expect((await s.command('help')).split('\n')[0]).toBe('available commands (this session: admin):');
    // Another token: back to read.
    const tokenB = scratch.write('b.token', 'second-token-0123456789\n');
    await lb.apply(doc({ level: 'admin', token_file: tokenB }));
    expect(await s.command('disable web 0 0')).toMatch(/needs level operator, this session has read/);
    expect(await s.command('auth second-token-0123456789')).toBe('level admin');
    // Level lowered in the config: the authenticated session follows.
    await lb.apply(doc({ level: 'operator', token_file: tokenB }));
    expect(await s.command('save')).toMatch(/needs level admin, this session has operator/);
    // allow no longer covers 127.0.0.1: the open session is told and closed.
    await lb.apply(doc({ level: 'operator', token_file: tokenB, allow: ['10.0.0.0/8'] }));
    await within(s.gone, 3000, 'the session to be closed by the reload');
    expect(s.raw().toString('latin1')).toMatch(/error: access withdrawn by a reload \(control\.allow\) \[LB_CONTROL_DENIED\]\n\n$/);
  });
});

// allow is tested on lb as a process: a crash must show as a failed test, not as an exception in the runner.
describe('allow', () => {
  async function cliLb(control: Record<string, unknown>) {
    const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
    const scratch = scope.scratch();
    const lbp = await startCliLb([scratch.write('lb.toml', webToml(control, [a.port, b.port]))]);
    expect(lbp.controlPort).toBeGreaterThan(0);
    return { lbp, port: lbp.controlPort, web: lbp.ports.web! };
  }

  it('allow = ["10.0.0.0/8"] refuses 127.0.0.1 with one error naming control.allow, runs nothing, and logs it', async () => {
    const scratch = scope.scratch();
    const sock = path.join(scratch.path, 'lb.sock');
    const { lbp, port } = await cliLb({ ...adminControl(), allow: ['10.0.0.0/8'], socket: sock });
    const s = await openSession(port, { auth: false });
    s.write(`auth ${TEST_TOKEN}\ndisable web 0 0\nshow\n`);
    await within(s.gone, 3000, 'lb to refuse and close');
    const lines = s.raw().toString('latin1').split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(ERROR_LINE);
    expect(lines[0]).toContain('127.0.0.1');
    expect(lines[0]).toContain('control.allow');
    expect(lines[0]).toMatch(/\[LB_CONTROL_DENIED\]$/);
    await lbp.waitOutput((t) => /warn control-denied code=LB_CONTROL_DENIED peer=127\.0\.0\.1:\d+/.test(t), 3000, 'the log line', 'stderr');
    // The Unix socket is not subject to allow (file permissions guard it): the disable above never ran.
    expect(showRow(await ctl(sock, 'show'), 'web', 0, 0).state).toBe('ENA');
    expect(lbp.stderr()).not.toMatch(/command=.?disable/);
  });

  it('a refused client that then closes its side (as nc, telnet and scripts do) does not crash lb', async () => {
    const scratch = scope.scratch();
    const sock = path.join(scratch.path, 'lb.sock');
    const { lbp, port, web } = await cliLb({ allow: ['10.0.0.0/8'], socket: sock });
    const s = await openSession(port);
    await within(s.gone, 3000, 'lb to refuse and close');
    expect(s.raw().toString('latin1')).toMatch(/control\.allow/);
    s.socket.end();
    await within(s.closed, 3000, 'the refused session to close');
    // A round trip over the socket shows whether lb is still there.
    const reply = await ctl(sock, 'version').catch(async (err: Error) => {
      const r = await within(lbp.exited, 2000, 'lb to exit').catch(() => null);
      throw r ? new Error(`lb exited (${r.code ?? r.signal}) after a refused client closed; its stderr:\n${r.stderr}`) : err;
    });
    expect(reply).toMatch(/This is lb/);
    expect(backendOf(await ask(web, 'still relaying'))).toMatch(/^[ab]$/);
    expectAlive(lbp);
  });

  it('a refusal is a reply like any other: it ends with a blank line', async () => {
    const { port } = await cliLb({ allow: ['10.0.0.0/8'] });
    const s = await openSession(port);
    await within(s.gone, 3000, 'lb to refuse and close');
    expect(s.raw().toString('latin1')).toMatch(/^error: .* \[LB_CONTROL_DENIED\]\n\n$/);
  });

  it('a matching CIDR (127.0.0.1/32) and the default allow list accept 127.0.0.1', async () => {
    const one = await webLb({ allow: ['10.0.0.0/8', '127.0.0.1/32'] });
    expect(await ctl(one.port, 'version')).toMatch(/This is lb/);
    await cleanup();
    const def = await webLb({});
    expect(await ctl(def.port, 'version')).toMatch(/This is lb/);
  });
});

describe('the Unix socket', () => {
  async function socketLb(sock: string, control: Record<string, unknown> = {}) {
    return startControlLb({
      control: { socket: sock, ...control },
      listeners: { web: { listen: '127.0.0.1:0', groups: [{ backends: [at((await echoServer('a')).port)] }] } },
    });
  }

  it('is created with mode 0660 (staged in a private directory, so never reachable with another mode), serves socket_level, and is removed at shutdown', async () => {
    const scratch = scope.scratch();
    const sock = path.join(scratch.path, 'ctl.sock');
    const { lb } = await socketLb(sock);
    const st = lstatSync(sock);
    expect(st.isSocket()).toBe(true);
    expect((st.mode & 0o777).toString(8)).toBe('660');
    expect(await ctl(sock, 'disable web 0 0')).toBe('channel 0 disabled');
    expect(showRow(await ctl(sock, 'show'), 'web', 0, 0).state).toBe('DIS');
    const s = await openSession(sock);
    expect((await s.command('help')).split('\n')[0]).toBe('available commands (this session: admin):');
    expect((await s.command('mrtg-conns web')).split('\n')).toHaveLength(4);
    await s.close();
    await lb.stop();
    expect(existsSync(sock)).toBe(false);
    // Nothing of the staging directory is left next to it.
    expect((await import('node:fs')).readdirSync(scratch.path).filter((n) => n.startsWith('.lb-'))).toEqual([]);
  });

  it('socket_level = "read" keeps the socket read-only', async () => {
    const sock = path.join(scope.scratch().path, 'ro.sock');
    await socketLb(sock, { socket_level: 'read' });
    expect(await ctl(sock, 'disable web 0 0')).toMatch(/needs level operator, this session has read/);
  });

  it('a stale socket left by a killed lb is replaced at the next start', async () => {
    const scratch = scope.scratch();
    const sock = path.join(scratch.path, 'stale.sock');
    const a = await echoServer('a');
    const file = scratch.write(
      'lb.toml',
      `[control]\nsocket = ${JSON.stringify(sock)}\n\n[listeners.web]\nlisten = "127.0.0.1:0"\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:${a.port}"]\n`,
    );
    const first = await startCliLb([file]);
    expect(first.controlSocket).toBe(sock);
    first.proc.kill('SIGKILL');
    await within(first.exited, 5000, 'the killed lb to exit');
    expect(lstatSync(sock).isSocket()).toBe(true); // nobody cleaned up
    await socketLb(sock);
    expect(await ctl(sock, 'version')).toMatch(/This is lb/);
    expect((lstatSync(sock).mode & 0o777).toString(8)).toBe('660');
  });

  it('a live instance\'s socket is never taken over: the second lb fails to start, the first still answers', async () => {
    const scratch = scope.scratch();
    const sock = path.join(scratch.path, 'live.sock');
    const a = await echoServer('a');
    const first = await startCliLb([
      scratch.write('one.toml', `[control]\nsocket = ${JSON.stringify(sock)}\n\n[listeners.web]\nlisten = "127.0.0.1:0"\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:${a.port}"]\n`),
    ]);
    const inode = lstatSync(sock).ino;
    await expect(socketLb(sock)).rejects.toThrow(/control socket .*live\.sock is in use by a running process/);
    expect(lstatSync(sock).ino).toBe(inode);
    expect(await ctl(sock, 'version')).toMatch(/This is lb/);
    expectAlive(first);
    // A plain file in the way is not a socket: never removed.
    const file = path.join(scratch.path, 'file.sock');
    writeFileSync(file, 'not a socket');
    await expect(socketLb(file)).rejects.toThrow(/not a socket is in the way/);
    expect(existsSync(file)).toBe(true);
  });

  it('a socket directory others could write to, or one not ours alone inside a world-writable directory, is refused', async () => {
    const scratch = scope.scratch();
    const open = path.join(scratch.path, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777); // everyone may write, no sticky bit
    await expect(socketLb(path.join(open, 'x.sock'))).rejects.toThrow(/control socket directory .*open: everyone may write to it/);
    // Like /tmp/lb-UID inside /tmp: someone else could have made it first, so it must be ours and 0700.
    const shared = path.join(open, 'lb-1000');
    mkdirSync(shared, { mode: 0o755 });
    chmodSync(shared, 0o755);
    chmodSync(open, 0o1777);
    await expect(socketLb(path.join(shared, 'x.sock'))).rejects.toThrow(/lb-1000: mode 755 lets others in; it must be 700/);
    chmodSync(shared, 0o700);
    await socketLb(path.join(shared, 'x.sock'));
    expect(await ctl(path.join(shared, 'x.sock'), 'version')).toMatch(/This is lb/);
  });
});

describe('listener names', () => {
  it('names that are show subcommands or hold spaces are refused by --check with a clear message', async () => {
    const scratch = scope.scratch();
    for (const name of ['stat', 'config', 'info', 'json', 'errors', 'my web', 'tab\there']) {
      const file = scratch.write(
        'names.toml',
        `[listeners.${JSON.stringify(name)}]\nlisten = "127.0.0.1:0"\n[[listeners.${JSON.stringify(name)}.groups]]\nbackends = ["127.0.0.1:9"]\n`,
      );
      const r = await runLb(['--check', file]);
      expect(r.code, name).toBe(78);
      expect(r.stderr, name).toMatch(name.includes(' ') || name.includes('\t') ? /must be one word/ : new RegExp(`clashes with the control command "show ${name}"`));
    }
  });
});
