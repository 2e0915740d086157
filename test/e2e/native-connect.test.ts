// The addon's own connect (issue 33): the backend socket is made, connected and relayed in C, with no
// net.Socket for it. A minimal harness (accept with pauseOnConnect as lb's listener does, then
// spliceConnect to each target in turn until one connects) checks what lb's relay builds on: bytes both
// ways, a refused and a timed-out connect that come back with their errno and leave the client to try the
// next backend with, a client that resets while its backend is connecting, an abort, and no descriptor
// left behind after many connections. lb's own use of it is covered by every relay e2e file (the default
// path), and by the failover test at the end through a real lb.

import { readdirSync } from 'node:fs';
import { once } from 'node:events';
import net, { type AddressInfo, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { nativeConnectAvailable, spliceConnect, spliceStats, type NativeTarget, type SpliceHandle, type SpliceResult } from '../../src/proxy/splice.ts';
import { closeAllBackends, connectClient, deadHost, echoServer, HOST, refusedPort, track, until, within, type TestClient } from '../helpers/backends.ts';
import { ctl, startCliLb, useControlScope, webToml } from '../helpers/control.ts';
import { cleanup } from '../helpers/lb.ts';

const scope = useControlScope();
afterEach(async () => {
  await cleanup();
  await closeAllBackends();
});

// Skipped only where the native connect cannot run and that is expected: no addon outside CI (no
// compiler at install), or a run that turns it off (LB_SPLICE=off, the JS relay's pass of CI;
// LB_NATIVE_CONNECT=off). Under CI without those switches a missing addon fails these tests instead.
const available = nativeConnectAvailable();
const skipped = !available.ok && (!process.env['CI'] || process.env['LB_SPLICE'] === 'off' || process.env['LB_NATIVE_CONNECT'] === 'off');
const CONNECTIONS = Number(process.env.LB_NATIVE_CONNECTIONS ?? 10_000);

interface Attempt {
  readonly target: number;
  result: SpliceResult | null;
  connected: boolean;
}

/** Accepts, then connects natively to `targets` in order until one connects; records every attempt. */
async function harness(targets: readonly Partial<NativeTarget>[]) {
  const attempts: Attempt[] = [];
  const handles: SpliceHandle[] = [];
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
  server.on('connection', (client: Socket) => {
    client.on('error', () => undefined);
    const tryNext = (i: number): void => {
      if (i >= targets.length) {
        client.destroy();
        return;
      }
      const attempt: Attempt = { target: i, result: null, connected: false };
      const t = { address: HOST, port: 9, source: null, connectTimeoutMs: 5000, idleTimeoutMs: 0, ...targets[i] };
      const h = spliceConnect(client, t, {
        nativeConnected: () => {
          attempt.connected = true;
          client.destroy(); // the addon's duplicate carries the connection now
        },
        nativeEnded: (_h, r) => {
          attempt.result = r;
          if (r.end === 'connect-failed') tryNext(i + 1);
        },
      });
      if (h === null || typeof h === 'string') throw new Error(`spliceConnect: ${String(h)}`);
      attempts.push(attempt);
      handles.push(h);
    };
    tryNext(0);
  });
  server.listen(0, HOST);
  await within(once(server, 'listening'), 3000, 'the harness to listen');
  return track({
    port: (server.address() as AddressInfo).port,
    attempts,
    handles,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const h of handles) h.abort();
      await within(closed, 3000, 'the harness to close');
      await until(() => handles.every((h) => h.ended), 3000, 'every native connection to end', 5);
    },
  });
}

const openFds = (): number => readdirSync('/proc/self/fd').length;

describe.skipIf(skipped)(`native connect${available.ok ? '' : ` (unavailable: ${available.reason})`}`, () => {
  it('connects and relays both ways; the end is the client\'s close, with the bytes', async () => {
    const echo = await echoServer();
    const before = spliceStats()?.connects ?? 0;
    const h = await harness([{ port: echo.port }]);
    const c = await connectClient(h.port);
    expect(await c.request('ping')).toBe('ping');
    c.socket.end();
    await within(c.ended, 3000, 'the echo to half-close back');
    await until(() => h.attempts[0]?.result !== null, 3000, 'the end');
    expect(h.attempts[0]).toMatchObject({ connected: true, result: { end: 'client-close', sent: 4, rcvd: 4, errno: null } });
    expect(spliceStats()!.connects).toBe(before + 1);
  });

  it('a refused connect comes back with ECONNREFUSED, and the same client is served by the next backend', async () => {
    const echo = await echoServer();
    const h = await harness([{ port: await refusedPort() }, { port: echo.port }]);
    const c = await connectClient(h.port);
    expect(await c.request('after a refusal')).toBe('after a refusal');
    expect(h.attempts.map((a) => [a.connected, a.result?.end ?? null, a.result?.errno ?? null])).toEqual([
      [false, 'connect-failed', 'ECONNREFUSED'],
      [true, null, null],
    ]);
  });

  it('a connect that times out comes back with ETIMEDOUT after its timeout, and the next backend serves', async () => {
    const echo = await echoServer();
    const dead = await deadHost();
    try {
      const h = await harness([{ port: dead.port, connectTimeoutMs: 300 }, { port: echo.port }]);
      const c = await connectClient(h.port);
      const t0 = Date.now();
      expect(await c.request('after a timeout', 5000)).toBe('after a timeout');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
      expect(h.attempts[0]!.result).toMatchObject({ end: 'connect-failed', errno: 'ETIMEDOUT' });
    } finally {
      await dead.close();
    }
  });

  // A connect in flight (to a host that never answers) ended from either side: the client's reset, or abort().
  it.each([
    {
      what: 'a client that resets while its backend is connecting ends it at once as a reset',
      end: (c: TestClient): void => void c.socket.resetAndDestroy(),
      result: { end: 'reset', errno: 'ECONNRESET' },
    },
    { what: 'abort() while connecting ends it as aborted', end: (_c: TestClient, h: SpliceHandle): void => h.abort(), result: { end: 'aborted' } },
  ])('$what', async ({ end, result }) => {
    const dead = await deadHost();
    try {
      const h = await harness([{ port: dead.port, connectTimeoutMs: 30_000 }]);
      const c = await connectClient(h.port);
      await until(() => h.attempts.length === 1, 3000, 'the connect to start');
      end(c, h.handles[0]!);
      await until(() => h.attempts[0]!.result !== null, 3000, 'the attempt to end');
      expect(h.attempts[0]!.result).toMatchObject(result);
      await c.close();
    } finally {
      await dead.close();
    }
  });

  it(`${CONNECTIONS} connections, 50 at a time, leave no descriptor behind`, async () => {
    const echo = await echoServer();
    const h = await harness([{ port: echo.port }]);
    const one = async (): Promise<void> => {
      const s = net.connect({ port: h.port, host: HOST });
      s.on('error', () => undefined);
      s.resume(); // reads the echo and its FIN, so that 'close' comes
      await once(s, 'connect');
      s.end('x');
      await new Promise<void>((resolve) => s.once('close', () => resolve()));
    };
    await one(); // warm: the addon's thread, its epoll and eventfd, a pooled pipe
    await until(() => h.attempts.every((a) => a.result !== null), 3000, 'the warm-up to end');
    await until(() => spliceStats()!.connections === 0, 3000, 'no connection left');
    const fds = openFds();
    let next = 0;
    await within(
      Promise.all(
        Array.from({ length: 50 }, async () => {
          while (next < CONNECTIONS) {
            next++;
            await one();
          }
        }),
      ),
      120_000,
      `${CONNECTIONS} connections`,
    );
    await until(() => h.attempts.length === CONNECTIONS + 1 && h.attempts.every((a) => a.result !== null), 10_000, 'every connection to end');
    await until(() => spliceStats()!.connections === 0, 3000, 'no connection left');
    // Pooled pipes may differ by a few; the 2 descriptors per connection must all be gone.
    await until(() => openFds() <= fds + 2 * 8, 3000, `descriptors back to ${fds} (+ a few pooled pipes; have ${openFds()})`);
    expect(h.attempts.filter((a) => !a.connected)).toEqual([]);
  }, 180_000);

  it('through lb: show info names the path, and a refused then a timed-out backend fail over to the live one', async () => {
    const echo = await echoServer();
    const dead = await deadHost();
    try {
      const refused = await refusedPort();
      const toml = webToml({}, [refused, dead.port, echo.port]).replace('policy = "rr"', 'policy = "first"').replace('[listeners.web]\n', '[listeners.web]\nconnect_timeout = "300ms"\n');
      const lbp = await startCliLb([scope.scratch().write('lb.toml', toml)]);
      expect(await ctl(lbp.controlPort, 'show info')).toMatch(/^Path\.web: native accept \+ connect \+ splice$/m);
      const c = await connectClient(lbp.ports['web']!);
      expect(await c.request('through lb', 5000)).toBe('through lb');
      const errors = await ctl(lbp.controlPort, 'show errors');
      expect(errors).toMatch(new RegExp(`127\\.0\\.0\\.1:${refused}.*ECONNREFUSED`));
      expect(errors).toMatch(new RegExp(`127\\.0\\.0\\.1:${dead.port}.*ETIMEDOUT`));
      await c.close();
    } finally {
      await dead.close();
    }
  });
});
