// Who may use the control port and for what: `admin = false` (the default) answers read-only commands
// and refuses every state-changing one with an error naming `control.admin`; `allow` CIDRs refuse other
// TCP peers; the Unix socket is created with mode 0600 and is not subject to `allow`.

import { lstatSync, existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ask, backendOf, echoServer, within } from '../helpers/backends.ts';
import {
  useControlScope, ctl, ERROR_LINE, expectAlive, openSession, showRow, startCliLb, startControlLb, webToml,
} from '../helpers/control.ts';
import { at, cleanup } from '../helpers/lb.ts';

const scope = useControlScope();

/** Commands the issue names as state-changing, with plausible arguments (the refusal comes first anyway). */
const STATE_CHANGING: Record<string, string> = {
  enable: 'enable web 0 1',
  disable: 'disable web 0 0',
  maxc: 'maxc web 0 0 1',
  reset: 'reset web 0 0',
  create: 'create 127.0.0.1 9',
  assign: 'assign web 0 1 127.0.0.1 9',
  hash: 'hash',
  rr: 'rr web 0',
  policy: 'policy web 0 first',
  kill: 'kill',
};

const READ_ONLY = [
  'help', '?', 'show', 'show web', 'show stat', 'show info', 'show json', 'show config', 'use web', 'group 0',
  'mrtg-bytes 0 0', 'mrtg-bytes web 0 1', 'mrtg-conns web', 'version',
];

async function webLb(control: Record<string, unknown>) {
  const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
  const started = await startControlLb({
    global: { access_log: true },
    control: { listen: '127.0.0.1:0', ...control },
    listeners: { web: { listen: '127.0.0.1:0', groups: [{ policy: 'rr', backends: [at(a.port), at(b.port)] }] } },
  });
  return { ...started, a, b };
}

describe('admin = false', () => {
  for (const [label, control] of [
    ['explicit admin = false', { admin: false }],
    ['admin left out (the default)', {}],
  ] as const) {
    it(`${label}: every state-changing command is refused naming control.admin; read-only ones answer`, async () => {
      const { lb, port } = await webLb(control);
      await ask(lb.port(), 'x'); // some traffic, so a reset would show
      await lb.logs.waitFor('conn');
      const s = await openSession(port);
      const before = await s.command('show');
      expect(showRow(before, 'web', 0, 0)).toMatchObject({ state: 'ENA', totalc: 1 });

      // Every command help marks "(admin)" is refused, plus the ones the issue names.
      const help = await s.command('help');
      const marked = help.split('\n').filter((l) => l.endsWith('(admin)')).map((l) => l.trim().split(/\s/)[0]!);
      expect(marked).toEqual(expect.arrayContaining(Object.keys(STATE_CHANGING)));
      for (const name of new Set([...Object.keys(STATE_CHANGING), ...marked])) {
        const line = STATE_CHANGING[name] ?? name;
        const reply = await s.command(line);
        expect(reply, line).toMatch(ERROR_LINE);
        expect(reply, line).toContain('control.admin');
        expect(reply, line).toMatch(/\[LB_CONTROL_NOT_ADMIN\]$/);
      }
      // Nothing changed: same table, same counters, traffic still alternates over both channels.
      expect(await s.command('show')).toBe(before);
      expect([backendOf(await ask(lb.port(), 'y')), backendOf(await ask(lb.port(), 'z'))].sort()).toEqual(['a', 'b']);

      for (const line of READ_ONLY) {
        const reply = await s.command(line);
        expect(reply, line).not.toMatch(/^error:/m);
        expect(reply.length, line).toBeGreaterThan(0);
      }
      // The session is still open: quit is read-only too.
      s.write('quit\n');
      await within(s.gone, 3000, 'quit to close the session');
    });
  }

  it('admin = true lets the same session change state', async () => {
    const { port } = await webLb({ admin: true });
    expect(await ctl(port, 'disable web 0 0')).toBe('channel 0 disabled');
    expect(showRow(await ctl(port, 'show'), 'web', 0, 0).state).toBe('DIS');
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
    const { lbp, port } = await cliLb({ admin: true, allow: ['10.0.0.0/8'], socket: sock });
    const s = await openSession(port);
    s.write('disable web 0 0\nshow\n');
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
  it('is created with mode 0600, serves the same protocol, and is removed at shutdown', async () => {
    const scratch = scope.scratch();
    const sock = path.join(scratch.path, 'ctl.sock');
    const { lb } = await startControlLb({
      control: { socket: sock, admin: true },
      listeners: { web: { listen: '127.0.0.1:0', groups: [{ backends: [at((await echoServer('a')).port)] }] } },
    });
    const st = lstatSync(sock);
    expect(st.isSocket()).toBe(true);
    expect((st.mode & 0o777).toString(8)).toBe('600');
    expect(await ctl(sock, 'disable web 0 0')).toBe('channel 0 disabled');
    expect(showRow(await ctl(sock, 'show'), 'web', 0, 0).state).toBe('DIS');
    const s = await openSession(sock);
    expect((await s.command('mrtg-conns web')).split('\n')).toHaveLength(4);
    await s.close();
    await lb.stop();
    expect(existsSync(sock)).toBe(false);
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
    await startControlLb({
      control: { socket: sock },
      listeners: { web: { listen: '127.0.0.1:0', groups: [{ backends: [at(a.port)] }] } },
    });
    expect(await ctl(sock, 'version')).toMatch(/This is lb/);
    expect((lstatSync(sock).mode & 0o777).toString(8)).toBe('600');
  });
});
