// Readiness for systemd (lb.service is Type=notify): READY=1 reaches $NOTIFY_SOCKET only once every
// listener and the control port are bound, and a listener that cannot bind ends lb without it, so that
// `systemctl start lb` fails instead of reporting a start followed by an exit. A python3 AF_UNIX datagram
// socket stands in for systemd's notify socket (Node cannot open one) and, like systemd, closes the fd
// that systemd-notify's barrier passes along, which is what lets systemd-notify return.

import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { notifyReady, type NotifyFailure } from '../../src/cli/notify.ts';
import { closeAllBackends, echoServer, HOST, until, within } from '../helpers/backends.ts';
import { scratchDir, type ScratchDir } from '../helpers/cli.ts';
import { LogCapture, ROOT } from '../helpers/lb.ts';

const RECEIVER = `
import array, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("bound", flush=True)
while True:
    msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)
    print(msg.decode(), flush=True)
`;

interface Child {
  proc: ChildProcess;
  lines: LogCapture;
  exited: Promise<number | null>;
}

const children: Child[] = [];
const dirs: ScratchDir[] = [];

/** Spawns a process whose stdout (or stderr) lines are captured; killed in afterEach. */
function start(cmd: string, args: string[], env: NodeJS.ProcessEnv, stream: 'stdout' | 'stderr'): Child {
  const proc = spawn(cmd, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines = new LogCapture();
  let buf = '';
  proc[stream]!.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const child = { proc, lines, exited };
  children.push(child);
  return child;
}

async function notifySocket(dir: ScratchDir): Promise<{ path: string; receiver: Child }> {
  const path = join(dir.path, 'notify.sock');
  const receiver = start('python3', ['-c', RECEIVER, path], process.env, 'stdout');
  await receiver.lines.waitForRaw(/^bound$/, 5000);
  return { path, receiver };
}

function config(dir: ScratchDir, listen: string, backend: number): string {
  return dir.write(
    'lb.toml',
    `[control]\nlisten = "127.0.0.1:0"\n\n[listeners.web]\nlisten = "${listen}"\n\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:${backend}"]\n`,
  );
}

afterEach(async () => {
  for (const c of children.splice(0)) {
    if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
    await within(c.exited, 5000, 'a test child to exit');
  }
  for (const d of dirs.splice(0)) d.remove();
  await closeAllBackends();
});

function scratch(): ScratchDir {
  const d = scratchDir();
  dirs.push(d);
  return d;
}

describe('systemd readiness', () => {
  it('sends READY=1 once the listener and the control port accept connections', async () => {
    const dir = scratch();
    const backend = await echoServer('b1');
    const { path, receiver } = await notifySocket(dir);
    const lb = start(process.execPath, ['src/cli/main.ts', 'run', config(dir, '127.0.0.1:0', backend.port)], { ...process.env, NOTIFY_SOCKET: path }, 'stderr');
    await receiver.lines.waitForRaw(/^READY=1$/, 10_000);
    // Ready means bound: the start-up line (printed after binding) is there, and both ports accept.
    const started = /listening on web=127\.0\.0\.1:(\d+)(?:; \d+ workers?)?; control 127\.0\.0\.1:(\d+)/.exec(lb.lines.text());
    expect(started, lb.lines.text()).not.toBeNull();
    for (const port of [Number(started![1]), Number(started![2])]) {
      const s = net.connect(port, HOST);
      await within(once(s, 'connect'), 3000, `a connect to ${port}`);
      s.destroy();
    }
    lb.proc.kill('SIGTERM');
    expect(await within(lb.exited, 10_000, 'lb to stop')).toBe(0);
  });

  it('around a SIGHUP reload: RELOADING=1 with MONOTONIC_USEC, then READY=1 again', async () => {
    const dir = scratch();
    const backend = await echoServer('b1');
    const { path, receiver } = await notifySocket(dir);
    const lb = start(process.execPath, ['src/cli/main.ts', 'run', config(dir, '127.0.0.1:0', backend.port)], { ...process.env, NOTIFY_SOCKET: path }, 'stderr');
    await receiver.lines.waitForRaw(/^READY=1$/, 10_000);
    const before = process.hrtime.bigint() / 1000n;
    lb.proc.kill('SIGHUP');
    await lb.lines.waitFor('reloaded', { ms: 10_000 });
    await until(() => receiver.lines.raw.filter((l) => l === 'READY=1').length === 2, 10_000, 'READY=1 after the reload');
    const msgs = receiver.lines.raw.filter((l) => l !== 'bound' && l !== 'BARRIER=1'); // systemd-notify's barrier
    expect(msgs.map((l) => l.replace(/^MONOTONIC_USEC=\d+$/, 'MONOTONIC_USEC=N'))).toEqual(['READY=1', 'RELOADING=1', 'MONOTONIC_USEC=N', 'READY=1']);
    // The time is CLOCK_MONOTONIC in microseconds, taken during the reload (this process reads the same clock).
    const usec = BigInt(msgs[2]!.split('=')[1]!);
    expect(usec >= before && usec <= process.hrtime.bigint() / 1000n).toBe(true);
    lb.proc.kill('SIGTERM');
    expect(await within(lb.exited, 10_000, 'lb to stop')).toBe(0);
  });

  it('exits without READY=1 when its listener cannot bind (the port is taken)', async () => {
    const dir = scratch();
    const taken = net.createServer();
    taken.listen(0, HOST);
    await within(once(taken, 'listening'), 3000, 'the port-taking server');
    try {
      const port = (taken.address() as net.AddressInfo).port;
      const { path, receiver } = await notifySocket(dir);
      const lb = start(process.execPath, ['src/cli/main.ts', 'run', config(dir, `127.0.0.1:${port}`, port)], { ...process.env, NOTIFY_SOCKET: path }, 'stderr');
      const code = await within(lb.exited, 10_000, 'lb to give up');
      expect(code, lb.lines.text()).toBe(69); // EX_UNAVAILABLE: systemd reports the start as failed
      receiver.proc.kill('SIGTERM');
      await within(receiver.exited, 5000, 'the notify receiver to stop');
      expect(receiver.lines.raw).toEqual(['bound']);
    } finally {
      await new Promise((resolve) => taken.close(resolve));
    }
  });

  it('does nothing without NOTIFY_SOCKET (not started by systemd)', async () => {
    const failures: NotifyFailure[] = [];
    expect(await notifyReady((f) => failures.push(f), { PATH: process.env.PATH })).toBe(false);
    expect(failures).toEqual([]);
  });

  it('reports one line with LB_NOTIFY_FAILED when the notification cannot be sent', async () => {
    const dir = scratch();
    const failures: NotifyFailure[] = [];
    // Nobody listens on the socket: systemd-notify fails.
    expect(await notifyReady((f) => failures.push(f), { PATH: process.env.PATH, NOTIFY_SOCKET: join(dir.path, 'none.sock') })).toBe(false);
    // No systemd-notify on PATH.
    expect(await notifyReady((f) => failures.push(f), { PATH: dir.path, NOTIFY_SOCKET: join(dir.path, 'none.sock') })).toBe(false);
    expect(failures.map((f) => f.code)).toEqual(['LB_NOTIFY_FAILED', 'LB_NOTIFY_FAILED']);
    expect(failures[1]!.error).toBe('systemd-notify is not installed');
    for (const f of failures) expect(f.text).toMatch(/^lb: could not tell systemd that lb is ready: [^\n]+ \[LB_NOTIFY_FAILED\]$/);
  });
});
