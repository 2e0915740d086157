// A start-up that fails says so in one line: the cause, a stable code, what to do, and the documented
// sysexits code (the unit's RestartPreventExitStatus= keys on it), with no stack trace unless LB_DEBUG is
// set. Run as the real CLI process, as an operator (or systemd) would.

import { chmodSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI, lbCli, runToEnd, useControlScope } from '../helpers/control.ts';

const scope = useControlScope();

/** A config whose control socket lives at `socket`; the listener takes any free port. */
function config(socket: string, extra = ''): string {
  return [
    extra,
    '[control]',
    `socket = ${JSON.stringify(socket)}`,
    '[listeners.web]',
    'listen = "127.0.0.1:0"',
    '[[listeners.web.groups]]',
    'backends = ["127.0.0.1:9"]',
    '',
  ].join('\n');
}

/** Exactly one line, ours, and no trace of a JavaScript stack. */
function expectOneLine(stderr: string, re: RegExp): void {
  expect(stderr.split('\n')).toEqual([expect.stringMatching(re), '']);
  expect(stderr).not.toMatch(/\n\s+at |node:internal|file:\/\//);
}

describe('start-up failures', () => {
  it('a directory it may not create (the packaged config outside systemd): one line, exit 77', async (ctx) => {
    // The packaged config's /run/lb, as a user who may not create it: root may create anything, so the test
    // runs lb as nobody (setpriv, util-linux) when it runs as root, and as itself otherwise.
    const dir = scope.scratch();
    chmodSync(dir.path, 0o755);
    const closed = join(dir.path, 'run');
    mkdirSync(closed, { mode: 0o755 });
    chmodSync(closed, 0o555);
    const file = dir.write('packaged.toml', config(join(closed, 'lb', 'lb.sock')));
    chmodSync(file, 0o644);
    const asRoot = process.getuid?.() === 0;
    if (asRoot && !(await runToEnd('setpriv', ['--version'])).stdout) ctx.skip('setpriv (util-linux) is needed to drop root');
    const argv = ['run', file];
    const cmd = asRoot ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, CLI, ...argv] : [process.execPath, CLI, ...argv];
    const r = await runToEnd(cmd[0]!, cmd.slice(1), { env: { ...process.env, LB_DEBUG: '' } });
    expect(r.code).toBe(77);
    expect(r.stdout).toBe('');
    // The cause names the directory; the code is the control socket's own or the generic one.
    expectOneLine(
      r.stderr,
      new RegExp(`^lb: .*${join(closed, 'lb')}.*EACCES.* \\[LB_[A-Z_]+\\]; lb runs as \\S+, who may not write there: run it under its systemd unit`),
    );
  });

  it('a path that cannot be created (a file where a directory should be): one line, exit 73', async () => {
    const dir = scope.scratch();
    const notADir = dir.write('plain-file', 'x');
    const file = dir.write('enotdir.toml', config(join(notADir, 'lb.sock')));
    const r = await lbCli(['run', file], { env: { ...process.env, LB_DEBUG: '' } });
    expect(r.code).toBe(73);
    expectOneLine(r.stderr, /^lb: .*plain-file.*(EEXIST|ENOTDIR).* \[LB_[A-Z_]+\]; check the path in the config/);
  });

  it('LB_DEBUG=1 adds the stack trace after the same line', async () => {
    const dir = scope.scratch();
    const notADir = dir.write('plain-file', 'x');
    const file = dir.write('enotdir.toml', config(join(notADir, 'lb.sock')));
    const r = await lbCli(['run', file], { env: { ...process.env, LB_DEBUG: '1' } });
    expect(r.code).toBe(73);
    const [first, ...rest] = r.stderr.split('\n');
    expect(first).toMatch(/^lb: .*plain-file.* \[LB_[A-Z_]+\]; check the path/);
    expect(rest.join('\n')).toMatch(/^\w*Error: .*\n\s+at /);
  });

  // The holder listens in this (test) process; lb's check binds alone, without listening (ports.ts).
  // A holder with SO_REUSEPORT (a second lb of the same user) must not let lb share its port; a listener
  // on every address (`:port`) meets a holder on 0.0.0.0 as Node's own listen would.
  it.each([
    { holder: 'a plain listener', holdOn: '127.0.0.1', reusePort: false, listen: (port: number) => `127.0.0.1:${port}`, shown: (port: number) => `127\\.0\\.0\\.1:${port}` },
    { holder: 'a listener with SO_REUSEPORT', holdOn: '127.0.0.1', reusePort: true, listen: (port: number) => `127.0.0.1:${port}`, shown: (port: number) => `127\\.0\\.0\\.1:${port}` },
    { holder: 'a listener on 0.0.0.0, lb on every address', holdOn: '0.0.0.0', reusePort: false, listen: (port: number) => `:${port}`, shown: (port: number) => `:${port}` },
  ])('an address in use ($holder): one line naming it, what to do, exit 69', async ({ holdOn, reusePort, listen, shown }) => {
    const holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen({ port: 0, host: holdOn, reusePort }, resolve));
    try {
      const port = (holder.address() as net.AddressInfo).port;
      const file = scope.scratch().write(
        'busy.toml',
        ['[listeners.web]', `listen = "${listen(port)}"`, '[[listeners.web.groups]]', 'backends = ["127.0.0.1:9"]', ''].join('\n'),
      );
      const r = await lbCli(['run', file], { env: { ...process.env, LB_DEBUG: '' } });
      expect(r.code).toBe(69);
      expectOneLine(r.stderr, new RegExp(`^lb: listener web: cannot listen on ${shown(port)}: EADDRINUSE \\[LB_BIND\\]; another process is listening there`));
    } finally {
      await new Promise<void>((resolve) => holder.close(() => resolve()));
    }
  });

  it('with log_format = "json", the failure is a JSON line too', async () => {
    const dir = scope.scratch();
    const notADir = dir.write('plain-file', 'x');
    const file = dir.write('json.toml', config(join(notADir, 'lb.sock'), '[global]\nlog_format = "json"'));
    const r = await lbCli(['run', file], { env: { ...process.env, LB_DEBUG: '' } });
    expect(r.code).toBe(73);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'error', event: 'failed', code: expect.stringMatching(/^LB_/), exit: 73, hint: expect.stringMatching(/check the path/) });
  });
});
