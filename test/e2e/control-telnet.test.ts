// The control port on the wire: the real Debian `telnet` client (prompt, option negotiation), raw sockets
// sending IAC sequences, `nc -N` and `socat` sending bare LF, 0xFF bytes inside lines, and garbage:
// over-long lines, 1 MiB of binary, a flood of pipelined commands, and hundreds of idle sessions.

import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ask, backendOf, echoServer, within } from '../helpers/backends.ts';
import {
  useControlScope, ctl, ERROR_LINE, expectAlive, needTool, oneShot, openSession, parseShow, pseudoRandomBytes, recordingProxy, run,
  runToEnd, splitReplies, startCliLb, startControlLb, webToml, type ControlSession,
} from '../helpers/control.ts';
import { at } from '../helpers/lb.ts';
import { VERSION } from '../../src/version.ts';

const scope = useControlScope();

const IAC = 0xff;
const [WILL, WONT, DO, DONT] = [0xfb, 0xfc, 0xfd, 0xfe];
const VERSION_REPLY = `  This is lb ${VERSION}\n  Node ${process.version}`;

async function webLb(control: Record<string, unknown> = {}) {
  const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
  const started = await startControlLb({
    global: { access_log: true },
    control: { listen: '127.0.0.1:0', ...control }, // TCP at read: nothing here needs more
    listeners: { web: { listen: '127.0.0.1:0', groups: [{ policy: 'rr', backends: [at(a.port), at(b.port)] }] } },
  });
  return { ...started, a, b };
}

/** The option negotiations (IAC WILL/WONT/DO/DONT opt) in a byte stream, as [verb, option]. */
function negotiations(data: Buffer): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i + 2 < data.length; i++) {
    if (data[i] !== IAC) continue;
    const verb = data[i + 1]!;
    if (verb === IAC) {
      i++;
      continue;
    }
    if (verb >= WILL && verb <= DONT) {
      out.push([verb, data[i + 2]!]);
      i += 2;
    }
  }
  return out;
}

/** True when every DO/WILL the client sent got an answer (WILL/WONT for DO, DO/DONT for WILL). */
function allAnswered(fromClient: Buffer, fromServer: Buffer): boolean {
  const answers = negotiations(fromServer);
  return negotiations(fromClient).every(([verb, opt]) =>
    answers.some(([v, o]) => o === opt && (verb === DO ? v === WILL || v === WONT : verb === WILL ? v === DO || v === DONT : true)),
  );
}

describe('the Debian telnet client', () => {
  it('gets the prompt after each reply, its option negotiation answered, and quit closes the connection', async (ctx) => {
    needTool(ctx, 'telnet');
    const { port } = await webLb();
    const proxy = await recordingProxy(port);
    const t = run('telnet', ['127.0.0.1', String(proxy.port)], { keepStdin: true });
    await t.waitOutput((s) => s.includes('Escape character'), 5000, 'telnet to connect');

    t.proc.stdin!.write('show\n');
    await proxy.waitFromServer((b) => b.toString('latin1').endsWith('\r\n\r\nlb> '), 3000, 'the table, a blank line and the prompt');
    expect(proxy.fromClient().toString('latin1')).toBe('show\r\n'); // telnet sends CR LF: a Telnet client
    await t.waitOutput((s) => /GRP Type[^]*\n\nlb> $/.test(s), 3000, 'telnet to print the table and the prompt');
    expect(parseShow(t.stdout()).get('web')).toHaveLength(2);

    // Telnet's "mode character" makes the client negotiate (DO SGA, DO ECHO): lb must answer each offer.
    t.proc.stdin!.write('\x1dmode character\n');
    await proxy.waitFromClient((b) => negotiations(b).length > 0, 3000, 'telnet to negotiate options');
    await proxy.waitFromServer((b) => allAnswered(proxy.fromClient(), b), 3000, 'lb to answer every option request');

    const mark = proxy.fromServer().length;
    t.proc.stdin!.write('mrtg-conns web\n');
    const after = await proxy.waitFromServer(
      (b) => /lb web\r\n\r\nlb> $/.test(b.subarray(mark).toString('latin1')),
      3000,
      'the mrtg-conns reply after negotiation',
    );
    expect(splitReplies(after.subarray(mark))[0]!.split('\n')).toHaveLength(4);

    t.proc.stdin!.write('quit\n');
    const r = await within(t.exited, 5000, 'telnet to exit after quit');
    expect(r.stdout + r.stderr).toContain('Connection closed by foreign host.');
    expect(r.stdout).not.toContain('error:');
    expect(Buffer.from(r.stdout, 'latin1').includes(IAC)).toBe(false);
  });
});

describe('Telnet protocol on a raw socket', () => {
  it('IAC DO ECHO is refused with IAC WONT ECHO and the rest of the line is the command', async () => {
    const { port } = await webLb();
    const s = await openSession(port);
    s.write(Buffer.from([IAC, DO, 1, ...Buffer.from('version\r\n')]));
    const [reply] = await s.waitReplies(1);
    expect(reply).toBe(VERSION_REPLY);
    expect(negotiations(s.raw())).toEqual([[WONT, 1]]);
  });

  it('IAC WILL NAWS with its subnegotiation, and IAC NOP inside a word, are stripped, not treated as input', async () => {
    const { port } = await webLb();
    const s = await openSession(port);
    s.write(Buffer.from([IAC, WILL, 31, IAC, 0xfa, 31, 0, 80, 0, 24, IAC, 0xf0, ...Buffer.from('show info\r\n')]));
    const [info] = await s.waitReplies(1);
    expect(info).toMatch(/^Name: lb\n/);
    expect(negotiations(s.raw())).toEqual([[DONT, 31]]);
    s.write(Buffer.concat([Buffer.from('vers'), Buffer.from([IAC, 0xf1]), Buffer.from('ion\r\n')]));
    expect((await s.waitReplies(2))[1]).toBe(VERSION_REPLY);
    expect(s.replies().some((r) => r.startsWith('error:'))).toBe(false);
  });

  it('a CR LF client gets CR LF line ends and the prompt; "prompt" toggles it; CR NUL also ends a line', async () => {
    const { port } = await webLb();
    const s = await openSession(port, { eol: '\r\n' });
    expect(await s.command('version')).toBe(VERSION_REPLY);
    let raw = s.raw().toString('latin1');
    expect(raw).toBe(`${VERSION_REPLY.replace(/\n/g, '\r\n')}\r\n\r\nlb> `);
    expect(await s.command('prompt')).toBe('prompt off');
    s.write('version\r\0');
    await s.waitReplies(3);
    raw = s.raw().toString('latin1');
    expect(raw.endsWith(`${VERSION_REPLY.replace(/\n/g, '\r\n')}\r\n\r\n`)).toBe(true);
    expect(raw.replace(/\r\n/g, '')).not.toContain('\n');

    const lf = await openSession(port);
    expect(await lf.command('prompt')).toBe('prompt on');
    await lf.command('version');
    expect(lf.raw().toString('latin1').endsWith(`${VERSION_REPLY}\n\nlb> `)).toBe(true);
  });
});

describe('scripts sending bare LF', () => {
  it('echo show | nc -N 127.0.0.1 PORT: the table, a blank line, no prompt, and the connection closes', async (ctx) => {
    needTool(ctx, 'nc', 'netcat-openbsd');
    const { port } = await webLb();
    const r = await runToEnd('sh', ['-c', `echo show | nc -N 127.0.0.1 ${port}`], { ms: 5000 });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^listener web 127\.0\.0\.1:\d+ /);
    expect(r.stdout.endsWith('\n\n')).toBe(true);
    expect(r.stdout).not.toMatch(/(^|\n)lb> /);
    expect(r.stdout).not.toContain('\r');
    expect(parseShow(r.stdout).get('web')!.map((row) => row.state)).toEqual(['ENA', 'ENA']);
  });

  it('nc -N with several commands gets every reply, in order', async (ctx) => {
    needTool(ctx, 'nc', 'netcat-openbsd');
    const { port } = await webLb();
    const r = await runToEnd('nc', ['-N', '127.0.0.1', String(port)], { input: 'version\nbogus\nmrtg-bytes web 0 0\nshow stat\n', ms: 5000 });
    expect(r.code).toBe(0);
    const replies = splitReplies(Buffer.from(r.stdout, 'latin1'));
    expect(replies).toHaveLength(4);
    expect(replies[0]).toBe(VERSION_REPLY);
    expect(replies[1]).toMatch(ERROR_LINE);
    expect(replies[2]!.split('\n')).toHaveLength(4);
    expect(replies[3]).toMatch(/^# pxname,svname,/);
  });

  it('socat over TCP and over the Unix socket', async (ctx) => {
    needTool(ctx, 'socat');
    const scratch = scope.scratch();
    const sock = path.join(scratch.path, 'lb.sock');
    const { port } = await webLb({ socket: sock });
    const tcp = await runToEnd('socat', ['-', `TCP:127.0.0.1:${port}`], { input: 'show stat\n', ms: 5000 });
    expect(tcp.code).toBe(0);
    expect(tcp.stdout).toMatch(/^# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,/);
    expect(tcp.stdout.endsWith('\n\n')).toBe(true);
    const unix = await runToEnd('socat', ['-', `UNIX-CONNECT:${sock}`], { input: 'disable web 0 1\nshow\n', ms: 5000 });
    expect(unix.code).toBe(0);
    const replies = splitReplies(Buffer.from(unix.stdout, 'latin1'));
    expect(replies[0]).toBe('channel 1 disabled');
    expect(parseShow(replies[1]!).get('web')!.map((row) => row.state)).toEqual(['ENA', 'DIS']);
  });
});

describe('0xFF bytes inside a line', () => {
  // A data byte 0xFF travels as IAC IAC (RFC 854); a lone IAC starts a command.
  const LINES = [
    Buffer.from('show \xff\xff\n', 'latin1'),
    Buffer.from('maxc 0 \xff\xff\n', 'latin1'),
    Buffer.from('use x\xff\xffy\n', 'latin1'),
    Buffer.from('mrtg-bytes web \xff\xff 0\n', 'latin1'),
    Buffer.from('\xff\xff\xff\xff\n', 'latin1'),
    Buffer.from('show \x1b[2J\x07\n', 'latin1'),
  ];

  it('each such line gets one error reply and the session goes on', async () => {
    const { port } = await webLb();
    const s = await openSession(port);
    for (const line of LINES) {
      const n = s.replies().length;
      s.write(line);
      s.write('version\n');
      const replies = await s.waitReplies(n + 2);
      expect(replies[n], JSON.stringify(line.toString('latin1'))).toMatch(/^error: /);
      expect(replies[n]!.split('\n')).toHaveLength(1);
      expect(replies[n + 1]).toBe(VERSION_REPLY);
    }
  });

  it('replies carry no byte the client did not mean: only printable ASCII, CR and LF', async () => {
    const { port } = await webLb();
    const s = await openSession(port);
    for (const line of LINES) s.write(line);
    await s.waitReplies(LINES.length);
    const bad = [...s.raw()].filter((b) => !(b === 0x0a || b === 0x0d || (b >= 0x20 && b <= 0x7e)));
    expect(
      bad.map((b) => b.toString(16)),
      `reply bytes outside printable ASCII; replies: ${JSON.stringify(s.raw().toString('latin1'))}`,
    ).toEqual([]);
  });
});

describe('garbage', () => {
  it('a 10 KiB line without a newline: one error, then the session goes on', async () => {
    const { port } = await webLb();
    const s = await openSession(port);
    s.write('A'.repeat(10 * 1024));
    const [err] = await s.waitReplies(1);
    expect(err).toMatch(ERROR_LINE);
    expect(err).toMatch(/longer than 4096/);
    s.write('\nversion\n');
    const replies = await s.waitReplies(2);
    expect(replies).toEqual([err, VERSION_REPLY]);
  });

  it('a 10 KiB line that arrives whole, newline included, meets the same 4 KiB limit', async () => {
    const { port } = await webLb();
    const s = await openSession(port);
    s.write(`show ${'x'.repeat(10 * 1024)}\nversion\n`);
    const replies = await s.waitReplies(2);
    const first = replies[0]!;
    expect(first).toMatch(ERROR_LINE);
    expect(first.slice(0, 100), `a reply of ${first.length} bytes`).toMatch(/longer than 4096/);
    expect(first.length).toBeLessThan(200); // not the 10 KiB echoed back
    expect(replies[1]).toBe(VERSION_REPLY);
  });

  it('1 MiB of binary garbage: no crash, and lb still forwards traffic and answers on the control port', async () => {
    const { lb, port } = await webLb({ admin: false }); // garbage must not be able to change anything
    const s = await openSession(port);
    s.write(pseudoRandomBytes(1 << 20));
    s.write('\r\n\nversion\r\n');
    // Either the session survives and answers, or lb drops it (e.g. an endless IAC SB): both are fine.
    // Dropped shows as lb's FIN (`gone`): this client keeps its side open, so its socket stays open.
    await within(
      Promise.race([s.gone, s.waitRaw((b) => b.includes('This is lb'), 15_000, 'the version reply after the garbage')]),
      15_000,
      'lb to get through 1 MiB of garbage',
    );
    expect((await Promise.all([ask(lb.port(), 'one'), ask(lb.port(), 'two')])).map(backendOf).sort()).toEqual(['a', 'b']);
    expect(await ctl(port, 'version')).toBe(VERSION_REPLY);
    expect(parseShow(await ctl(port, 'show')).get('web')!.map((r) => r.state)).toEqual(['ENA', 'ENA']);
    await s.close();
  });

  it('5,000 pipelined version lines are all answered, in order, in bounded time, and the data path keeps working', async () => {
    const { lb, port } = await webLb();
    const s = await openSession(port);
    const started = Date.now();
    s.write('version\n'.repeat(5000) + 'mrtg-conns web\n');
    // Meanwhile, the data path answers.
    expect(backendOf(await ask(lb.port(), 'during the flood'))).toMatch(/^[ab]$/);
    const replies = await s.waitReplies(5001, 15_000);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(replies).toHaveLength(5001);
    expect(replies.slice(0, 5000).every((r) => r === VERSION_REPLY)).toBe(true);
    expect(replies[5000]!.split('\n')[0]).toBe('1'); // the one connection, counted after all the versions
    expect(s.raw().toString('latin1').endsWith('\n\n')).toBe(true);
  });
});

// These run lb as a process: a crash must show as a failed test, not as an exception in the test runner.
describe('many sessions', () => {
  async function cliWebLb(control: Record<string, unknown>) {
    const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
    const scratch = scope.scratch();
    const lbp = await startCliLb([scratch.write('lb.toml', webToml({ ...control }, [a.port, b.port]))]);
    expect(lbp.controlPort).toBeGreaterThan(0);
    return { lbp, port: lbp.controlPort, web: lbp.ports.web! };
  }

  function openMany(port: number, n: number): Promise<ControlSession[]> {
    return Promise.all(Array.from({ length: n }, () => openSession(port, { ms: 5000 })));
  }

  /** Resolves once `cond` holds, re-checked whenever any of the sessions receives data. */
  function whenData(sessions: ControlSession[], cond: () => boolean, ms: number, what: () => string): Promise<void> {
    return within(
      new Promise<void>((resolve) => {
        const check = (): void => {
          if (cond()) resolve();
        };
        for (const s of sessions) s.socket.on('data', check);
        check();
      }),
      ms,
      what(),
    );
  }

  it('300 idle sessions at once: the ones beyond 128 are refused with an error, lb keeps serving traffic', async () => {
    const { lbp, port, web } = await cliWebLb({});
    const sessions = await openMany(port, 300);
    // The refused ones get one error line and lb's FIN; the others stay open and silent.
    const refused = (): ControlSession[] => sessions.filter((s) => s.raw().length > 0);
    await whenData(sessions, () => refused().length >= 172, 5000, () => `172 refusals (got ${refused().length})`);
    expect(refused()).toHaveLength(172);
    for (const s of refused()) {
      const text = s.raw().toString('latin1');
      expect(text.split('\n')[0]).toMatch(ERROR_LINE);
      expect(text).toMatch(/too many control sessions/);
      await within(s.gone, 3000, 'a refused session to be closed');
    }
    expect((await Promise.all([ask(web, 'x'), ask(web, 'y')])).map(backendOf).sort()).toEqual(['a', 'b']);
    // Still full: one more is refused. Once three leave, a new one is served.
    const extra = await openSession(port);
    await within(extra.gone, 3000, 'the 301st session to be refused');
    expect(extra.raw().toString('latin1')).toMatch(/too many control sessions/);
    const idle = sessions.filter((s) => s.raw().length === 0);
    expect(idle).toHaveLength(128);
    for (const s of idle.slice(0, 3)) s.socket.end();
    await within(Promise.all(idle.slice(0, 3).map((s) => s.gone)), 3000, 'lb to close the sessions that left');
    const next = await openSession(port);
    expect(await next.command('version')).toBe(VERSION_REPLY);
    expectAlive(lbp);
  });

  it('a refused session that closes its side does not crash lb', async () => {
    const { lbp, port, web } = await cliWebLb({});
    const sessions = await openMany(port, 129);
    const refused = (): ControlSession[] => sessions.filter((s) => s.raw().length > 0);
    await whenData(sessions, () => refused().length >= 1, 5000, () => 'the 129th session to be refused');
    const [late] = refused();
    await within(late!.gone, 3000, 'lb to close the refused session');
    late!.socket.end(); // what any client does next (nc, telnet, a script): close its side too
    await within(late!.closed, 3000, 'the refused session to close');
    // A round trip on an accepted session shows whether lb is still there.
    const idle = sessions.filter((s) => s.raw().length === 0);
    const reply = await idle[0]!.command('version').catch(async (err: Error) => {
      const r = await within(lbp.exited, 2000, 'lb to exit').catch(() => null);
      throw r ? new Error(`lb exited (${r.code ?? r.signal}) after a refused client closed; its stderr:\n${r.stderr}`) : err;
    });
    expect(reply).toBe(VERSION_REPLY);
    // Let three accepted sessions go, so a fresh one is served.
    for (const s of idle.slice(0, 3)) s.socket.end();
    await within(Promise.all(idle.slice(0, 3).map((s) => s.gone)), 3000, 'lb to close the sessions that left');
    expectAlive(lbp);
    expect(await oneShot(port, 'version\n')).toBe(`${VERSION_REPLY}\n\n`);
    expect(backendOf(await ask(web, 'still relaying'))).toMatch(/^[ab]$/);
    expectAlive(lbp);
  });

  it('with idle_timeout "300ms" idle sessions are told and closed, and their slots are free again', async () => {
    const { lbp, port, web } = await cliWebLb({ idle_timeout: '300ms' });
    const sessions = await openMany(port, 300);
    // Every session ends within a bounded time: refused at once, or closed by the idle timeout.
    await within(Promise.all(sessions.map((s) => s.gone)), 5000, 'all 300 sessions to be closed by lb');
    const timedOut = sessions.filter((s) => /idle timeout/.test(s.raw().toString('latin1')));
    const refused = sessions.filter((s) => /too many control sessions/.test(s.raw().toString('latin1')));
    expect(timedOut.length + refused.length).toBe(300);
    expect(timedOut.length).toBeGreaterThan(0);
    // Not "at most 128 timed out": the 300 connect over some time, and on a loaded machine that can be
    // longer than the 300 ms after which the first ones are closed, freeing slots for later ones. The
    // bound on sessions at once is the test above (without an idle timeout).
    // The clients keep their side open (a careless script): lb must free the slots anyway.
    expectAlive(lbp);
    const burst = await openMany(port, 100);
    for (const s of burst) s.socket.end('version\n');
    await within(Promise.all(burst.map((s) => s.gone)), 5000, '100 new sessions to be answered');
    const answered = burst.filter((s) => splitReplies(s.raw())[0] === VERSION_REPLY);
    expect(answered, `first unanswered: ${JSON.stringify(burst.find((s) => !answered.includes(s))?.raw().toString('latin1'))}`).toHaveLength(100);
    expect(backendOf(await ask(web, 'z'))).toMatch(/^[ab]$/);
    expectAlive(lbp);
  });

  it('the idle-timeout notice is an error line with its code, ending with a blank line like every reply', async () => {
    const { port } = await webLb({ idle_timeout: '300ms' });
    const s = await openSession(port);
    await within(s.gone, 3000, 'the idle timeout');
    expect(s.raw().toString('latin1')).toMatch(/^error: idle timeout.* \[LB_[A-Z_]+\]\n\n$/);
  });
});
