// SIGTERM on the real CLI: stop accepting at once, let open connections finish (up to drain_timeout),
// then close what is left and exit 0.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ask, connectClient, echoServer, within } from '../helpers/backends.ts';
import { cleanup, spawnLb } from '../helpers/lb.ts';

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'lb-term-'));
});
afterEach(async () => {
  await cleanup();
  rmSync(dir, { recursive: true, force: true });
});

function config(drain: string, backend: number): string {
  const file = path.join(dir, 'lb.toml');
  writeFileSync(
    file,
    [
      '[global]',
      `drain_timeout = "${drain}"`,
      '[listeners.web]',
      'listen = "127.0.0.1:0"',
      '[[listeners.web.groups]]',
      `backends = ["127.0.0.1:${backend}"]`,
      '',
    ].join('\n'),
  );
  return file;
}

describe('SIGTERM', () => {
  it('stops accepting, lets the open connection complete, exits 0', async () => {
    const echo = await echoServer('e');
    const lb = await spawnLb(['run', config('10s', echo.port)]);
    const port = lb.ports.web!;
    const open = await connectClient(port);
    expect(await open.request('before')).toBe('before');

    lb.proc.kill('SIGTERM');
    await lb.logs.waitFor('stopping');
    // No new connections: the listening socket is closed (refused), well before the drain ends.
    await within(
      (async () => {
        for (;;) {
          const ok = await connectClient(port).then(
            async (c) => (await c.close(), true),
            () => false,
          );
          if (!ok) return;
          await new Promise((r) => setTimeout(r, 20));
        }
      })(),
      2000,
      'the listener to refuse new connections',
    );
    // The open one still relays, in both directions, and ends normally.
    expect(await open.request('during drain')).toBe('during drain');
    expect(lb.proc.exitCode).toBeNull();
    const t = Date.now();
    open.socket.end();
    await within(open.ended, 3000, 'the echo FIN');
    const { code, signal } = await within(lb.exited, 5000, 'lb to exit after the last connection');
    expect(Date.now() - t).toBeLessThan(3000); // did not sit out the 10 s drain
    expect({ code, signal }).toEqual({ code: 0, signal: null });
    const conn = lb.logs.all('conn');
    expect(conn).toHaveLength(1);
    expect(conn[0]!.fields.end).toBe('client-close');
    await lb.logs.waitForRaw(/^lb \S+ stopped$/, 1000);
  });

  it('with no open connection it exits 0 at once', async () => {
    const echo = await echoServer('e');
    const lb = await spawnLb(['run', config('10s', echo.port)]);
    // One relayed request first: lb has certainly finished starting up (see the next test for why).
    expect(await ask(lb.ports.web!, 'warm')).toBe('warm');
    const t = Date.now();
    lb.proc.kill('SIGTERM');
    expect(await within(lb.exited, 3000, 'lb to exit')).toEqual({ code: 0, signal: null });
    expect(Date.now() - t).toBeLessThan(2000);
  });

  it('a short drain_timeout closes the connection still open, then exits 0', async () => {
    const echo = await echoServer('e');
    const lb = await spawnLb(['run', config('300ms', echo.port)]);
    const open = await connectClient(lb.ports.web!);
    expect(await open.request('idle from now on')).toBe('idle from now on');
    const t = Date.now();
    lb.proc.kill('SIGTERM');
    await within(Promise.race([open.ended, open.closed]), 2000, 'lb to close the open connection after the drain timeout');
    const waited = Date.now() - t;
    expect(waited).toBeGreaterThanOrEqual(250);
    expect(await within(lb.exited, 3000, 'lb to exit')).toEqual({ code: 0, signal: null });
    expect(lb.logs.all('drain-timeout')).toHaveLength(1);
    expect(lb.logs.all('conn')[0]?.fields.end).toBe('shutdown');
  });

  it('SIGTERM sent the moment the start-up line appears is handled (graceful stop, exit 0)', async () => {
    // A supervisor may signal as soon as lb says it is listening. Four at once, each signalled
    // synchronously in the callback that delivers the line: a process that prints the line before
    // installing its handlers dies of the signal itself (exit by SIGTERM instead of code 0).
    const echo = await echoServer('e');
    const files = Array.from({ length: 4 }, (_, i) => {
      const f = path.join(dir, `lb${i}.toml`);
      writeFileSync(f, readFileSync(config('10s', echo.port)));
      return f;
    });
    const lbs = await Promise.all(files.map((f) => spawnLb(['run', f], { onReady: (p) => p.kill('SIGTERM') })));
    const exits = await Promise.all(lbs.map((lb) => within(lb.exited, 5000, 'lb to exit')));
    expect(exits.map((e) => `code=${e.code} signal=${e.signal}`)).toEqual(exits.map(() => 'code=0 signal=null'));
  });

  it('a second SIGTERM during the drain does not kill lb: the open connection still completes, exit 0', async () => {
    const echo = await echoServer('e');
    const lb = await spawnLb(['run', config('10s', echo.port)]);
    const open = await connectClient(lb.ports.web!);
    expect(await open.request('before')).toBe('before');
    lb.proc.kill('SIGTERM');
    await lb.logs.waitFor('stopping');
    lb.proc.kill('SIGTERM'); // impatient supervisor (or a second Ctrl-C)
    // A round trip through lb: had the second signal killed it, this connection would be gone.
    expect(await open.request('during drain')).toBe('during drain');
    expect(lb.proc.signalCode).toBeNull();
    open.socket.end();
    expect(await within(lb.exited, 5000, 'lb to exit')).toEqual({ code: 0, signal: null });
  });
});
