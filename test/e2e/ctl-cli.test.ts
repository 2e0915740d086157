// `lb ctl` (exit codes 0/1/69, --control/--socket/--config, arguments joined) and balance's shell forms
// `lb -c "CMD" PORT` / `lb -i PORT` against an instance started with balance's command line, which
// serves its control socket under $XDG_RUNTIME_DIR/lb.

import { lstatSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ask, backendOf, connectClient, echoServer, freePort, refusedPort, within } from '../helpers/backends.ts';
import { adminControl, testTokenFile, useControlScope, ctl, expectAlive, lbCli, parseShow, showRow, startCliLb, startControlLb, UPTIME } from '../helpers/control.ts';
import { at } from '../helpers/lb.ts';
import { VERSION } from '../../src/version.ts';

const scope = useControlScope();

async function webLb(control: Record<string, unknown> = {}) {
  const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
  const started = await startControlLb({
    global: { access_log: true, log_level: 'debug' }, // every command logged, reads included
    control: Object.fromEntries(Object.entries({ ...adminControl(), ...control }).filter(([, v]) => v !== undefined)),
    listeners: { web: { listen: '127.0.0.1:0', groups: [{ policy: 'rr', backends: [at(a.port), at(b.port)] }] } },
  });
  return { ...started, a, b };
}

describe('lb ctl', () => {
  it('prints the reply without prompt or closing blank line and exits 0; an error reply exits 1', async () => {
    const { lb, port } = await webLb();
    const control = `127.0.0.1:${port}`;
    const [show, mrtg, bad, badArgs] = await Promise.all([
      lbCli(['ctl', '--control', control, '--token-file', testTokenFile(), 'show']),
      lbCli(['ctl', '--control', control, '--token-file', testTokenFile(), 'mrtg-bytes', 'web', '0', '0']),
      lbCli(['ctl', '--control', control, '--token-file', testTokenFile(), 'bogus']),
      lbCli(['ctl', '--control', control, '--token-file', testTokenFile(), 'disable', 'web', '0', '9']),
    ]);
    expect(show.code).toBe(0);
    expect(show.stdout).toBe(`${await ctl(port, 'show')}\n`);
    expect(parseShow(show.stdout).get('web')).toHaveLength(2);
    expect(show.stdout).not.toMatch(/(^|\n)lb> /);
    // MRTG reads exactly four lines from a Target command.
    expect(mrtg.code).toBe(0);
    const lines = mrtg.stdout.split('\n');
    expect(lines).toHaveLength(5);
    expect(lines[4]).toBe('');
    expect(lines.slice(0, 2)).toEqual(['0', '0']);
    expect(lines[2]).toMatch(UPTIME);
    expect(bad.code).toBe(1);
    expect(bad.stdout + bad.stderr).toMatch(/error: unknown command "bogus".*\[LB_CONTROL_UNKNOWN_COMMAND\]/);
    expect(badArgs.code).toBe(1);
    expect(badArgs.stdout + badArgs.stderr).toMatch(/error: no such channel 9.*\[LB_CONTROL_BAD_ARGS\]/);
    expect(showRow(await ctl(port, 'show'), 'web', 0, 0).state).toBe('ENA');
    expect(lb.logs.all('control').length).toBeGreaterThanOrEqual(5);
  });

  it('joins its arguments: separate words and one quoted word are the same command', async () => {
    const { lb, port } = await webLb();
    const control = `127.0.0.1:${port}`;
    await ask(lb.port(), 'traffic');
    await lb.logs.waitFor('conn');
    const [split, quoted] = await Promise.all([
      lbCli(['ctl', '--control', control, '--token-file', testTokenFile(), 'mrtg-conns', 'web', '0', '0']),
      lbCli(['ctl', '--control', control, '--token-file', testTokenFile(), 'mrtg-conns web 0 0']),
    ]);
    expect(split.code).toBe(0);
    expect(split.stdout.split('\n')[0]).toBe('1');
    expect(quoted.stdout.split('\n').slice(0, 2)).toEqual(split.stdout.split('\n').slice(0, 2));
    const dis = await lbCli(['ctl', '--control', control, '--token-file', testTokenFile(), 'disable', 'web', '0', '1']);
    expect([dis.code, dis.stdout]).toEqual([0, 'channel 1 disabled\n']);
    expect([backendOf(await ask(lb.port(), 'x')), backendOf(await ask(lb.port(), 'y'))]).toEqual(['a', 'a']);
    // Options may come after the command words too.
    const late = await lbCli(['ctl', 'enable', 'web', '0', '1', '--control', control, '--token-file', testTokenFile()]);
    expect([late.code, late.stdout]).toEqual([0, 'channel 1 enabled\n']);
  });

  it('exits 69 when it cannot connect (TCP port or socket), naming the address', async () => {
    const scratch = scope.scratch();
    const dead = await refusedPort();
    const missing = path.join(scratch.path, 'nobody.sock');
    const [tcp, unix] = await Promise.all([
      lbCli(['ctl', '--control', `127.0.0.1:${dead}`, 'show']),
      lbCli(['ctl', '--socket', missing, 'show']),
    ]);
    expect(tcp.code).toBe(69);
    expect(tcp.stderr).toContain(`127.0.0.1:${dead}`);
    expect(tcp.stderr).toMatch(/LB_CONTROL_UNREACHABLE/);
    expect(tcp.stdout).toBe('');
    expect(unix.code).toBe(69);
    expect(unix.stderr).toContain(missing);
  });

  it('--config FILE finds the control address: the TCP listen address, or the socket', async () => {
    const scratch = scope.scratch();
    const cport = await freePort();
    await webLb({ listen: `127.0.0.1:${cport}` });
    const tcpFile = scratch.write(
      'tcp.toml',
      `[control]\nlisten = "127.0.0.1:${cport}"\n\n[listeners.web]\nlisten = "127.0.0.1:0"\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:1"]\n`,
    );
    const sock = path.join(scratch.path, 'ctl.sock');
    const other = await webLb({ listen: undefined, socket: sock });
    await ctl(sock, 'disable web 0 1'); // tells the two instances apart
    const sockFile = scratch.write(
      'sock.toml',
      `[control]\nsocket = ${JSON.stringify(sock)}\n\n[listeners.web]\nlisten = "127.0.0.1:0"\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:1"]\n`,
    );
    const noControl = scratch.write('none.toml', `[listeners.web]\nlisten = "127.0.0.1:0"\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:1"]\n`);
    const [viaTcp, viaSock, none, direct] = await Promise.all([
      lbCli(['ctl', '--config', tcpFile, 'show']),
      lbCli(['ctl', '--config', sockFile, 'show']),
      lbCli(['ctl', '--config', noControl, 'show']),
      lbCli(['ctl', '--socket', sock, 'show', 'web']),
    ]);
    expect(direct.code).toBe(0);
    expect(parseShow(direct.stdout).get('web')!.map((r) => r.state)).toEqual(['ENA', 'DIS']);
    expect(viaTcp.code).toBe(0);
    expect(parseShow(viaTcp.stdout).get('web')!.map((r) => r.state)).toEqual(['ENA', 'ENA']);
    expect(viaSock.code).toBe(0);
    expect(parseShow(viaSock.stdout).get('web')!.map((r) => r.state)).toEqual(['ENA', 'DIS']);
    expect(showRow(viaSock.stdout, 'web', 0, 1).port).toBe(other.b.port);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toMatch(/control/);
  });
});

describe("balance's shell forms against a balance command-line instance", () => {
  async function balanceInstance(extra: string[] = []) {
    const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
    const scratch = scope.scratch();
    const env = { ...process.env, XDG_RUNTIME_DIR: scratch.path };
    const port = await freePort();
    const lbp = await startCliLb([...extra, String(port), at(a.port), at(b.port)], { env });
    return { lbp, port, env, a, b };
  }

  it('lb PORT A B serves a 0660 socket (in a 0700 directory) under $XDG_RUNTIME_DIR/lb; lb -c "CMD" PORT and lb -c CMD ARGS PORT reach it', async () => {
    const { lbp, port, env } = await balanceInstance();
    const sock = path.join(env.XDG_RUNTIME_DIR!, 'lb', `lb.${port}.sock`);
    expect(lbp.controlSocket).toBe(sock);
    expect((lstatSync(sock).mode & 0o777).toString(8)).toBe('660');
    expect((lstatSync(path.dirname(sock)).mode & 0o777).toString(8)).toBe('700');
    const p = String(port);
    const [show, mrtgQuoted, mrtgWords, version, nobody] = await Promise.all([
      lbCli(['-c', 'show', p], { env }),
      lbCli(['-c', 'mrtg-bytes 0 0', p], { env }),
      lbCli(['-c', 'mrtg-bytes', '0', '0', p], { env }),
      lbCli(['-c', 'version', p], { env }),
      lbCli(['-c', 'show', String(port + 1)], { env }),
    ]);
    for (const r of [show, mrtgQuoted, mrtgWords, version]) expect(r.code, r.stderr).toBe(0);
    expect(parseShow(show.stdout).get(p)!.map((r) => r.state)).toEqual(['ENA', 'ENA']);
    expect(mrtgQuoted.stdout.split('\n')).toHaveLength(5);
    expect(mrtgWords.stdout.split('\n').slice(0, 2)).toEqual(mrtgQuoted.stdout.split('\n').slice(0, 2));
    expect(version.stdout).toContain(`This is lb ${VERSION}`);
    expect(nobody.code).toBe(69);

    const dis = await lbCli(['-c', 'disable 1', p], { env });
    expect([dis.code, dis.stdout]).toEqual([0, 'channel 1 disabled\n']);
    expect([backendOf(await ask(port, 'x')), backendOf(await ask(port, 'y'))]).toEqual(['a', 'a']);
    expectAlive(lbp);
  });

  it('lb -b 127.0.0.1 PORT ... and lb -b 127.0.0.1 -c CMD PORT use the same (bind-specific) socket', async () => {
    const { lbp, port, env } = await balanceInstance(['-b', '127.0.0.1']);
    expect(path.basename(lbp.controlSocket)).toMatch(new RegExp(`^lb\\.${port}\\..*127\\.0\\.0\\.1.*\\.sock$`));
    const r = await lbCli(['-b', '127.0.0.1', '-c', 'show', String(port)], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^listener ${port} 127\\.0\\.0\\.1:${port} `));
  });

  it('lb -i PORT with piped stdin runs every line in order and exits 0 at EOF', async () => {
    const { lbp, port, env } = await balanceInstance();
    await ask(port, 'one connection');
    const r = await lbCli(['-i', String(port)], { env, input: 'version\ngroup 0\ndisable 1\nshow\nmrtg-conns 0 0\n' });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = r.stdout;
    const order = [`This is lb ${VERSION}`, 'group 0', 'channel 1 disabled', 'GRP Type', 'group 0 channel 0'].map((t) => out.indexOf(t));
    expect(order.every((i) => i >= 0), out).toBe(true);
    expect([...order].sort((x, y) => x - y)).toEqual(order);
    expect(showRow(out, String(port), 0, 1).state).toBe('DIS');
    expectAlive(lbp);
  });
});

describe('lb demo', () => {
  it('prints where it listens, and the commands it suggests work as printed (then lb ctl kill stops it)', async () => {
    const env = { ...process.env };
    delete env.npm_lifecycle_event; // under `npm test` the demo would suggest `npm run -s lb --` instead of `lb`
    const demo = await startCliLb(['demo', '--port', '0', '--control-port', '0'], { env });
    const help = await demo.waitOutput((t) => t.includes('Ctrl-C stops the demo.'), 5000, 'the demo help');
    const listen = demo.ports.demo!;
    expect(listen).toBeGreaterThan(0);
    expect(demo.controlPort).toBeGreaterThan(0);
    expect(help).toContain(`nc 127.0.0.1 ${listen}`);
    expect(help).toContain(`echo show | nc -N 127.0.0.1 ${demo.controlPort}`);
    const table = parseShow(await ctl(demo.controlPort, 'show')).get('demo')!;
    expect(table.map((r) => [r.grp, r.ch, r.state])).toEqual([[0, 0, 'ENA'], [0, 1, 'ENA'], [1, 0, 'ENA']]);

    const greeting = async (): Promise<string> => {
      const c = await connectClient(listen);
      const got = await c.waitFor((b) => b.includes('\n'), 3000, 'the banner');
      await c.close();
      return got.toString().trim();
    };
    expect(new Set([await greeting(), await greeting()])).toEqual(new Set(['hello from backend-2', 'hello from backend-3']));

    const suggested = [...help.matchAll(/^ +lb ctl (.*?)(?: +#.*)?$/gm)].map((m) => m[1]!.split(/ +/));
    expect(suggested.map((a) => a.slice(2).join(' '))).toEqual(['disable demo 0 0', 'mrtg-bytes demo 0 1']);
    const disable = await lbCli(['ctl', ...suggested[0]!]);
    expect([disable.code, disable.stdout]).toEqual([0, 'channel 0 disabled\n']);
    expect([await greeting(), await greeting()]).toEqual(['hello from backend-3', 'hello from backend-3']);
    const mrtg = await lbCli(['ctl', ...suggested[1]!]);
    expect(mrtg.code).toBe(0);
    const lines = mrtg.stdout.split('\n');
    expect(lines).toHaveLength(5);
    expect(lines.slice(0, 2)).toEqual([String(3 * 'hello from backend-3\n'.length), '0']); // three banners, nothing sent

    // TCP is read-only in the demo; its Unix socket may stop it.
    expect((await lbCli(['ctl', '--control', `127.0.0.1:${demo.controlPort}`, 'kill'])).stdout).toMatch(/needs level admin/);
    const kill = await lbCli(['ctl', '--socket', demo.controlSocket, 'kill']);
    expect(kill.code).toBe(0);
    expect((await within(demo.exited, 5000, 'the demo to exit after kill')).code).toBe(0);
  });
});
