// What the splice relay holds: a slow reader stalls its sender instead of growing memory, an idle
// connection holds no pipe, 10,000 connections leave no descriptor behind, and the addon runs in
// several worker threads at once (and lets a worker exit with connections open).

import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import net, { type Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { spliceStats } from '../../src/proxy/splice.ts';
import {
  closeAllBackends,
  connectClient,
  echoServer,
  fastSourceServer,
  HOST,
  track,
  until,
  within,
} from '../helpers/backends.ts';
import { spliceHarness, spliceSkipped, spliceTitleNote } from './splice-harness.ts';

afterEach(closeAllBackends);

const fdCount = (): number => readdirSync('/proc/self/fd').length;

describe.skipIf(spliceSkipped)(`splice relay: resources${spliceTitleNote}`, () => {
  it('a slow reader stalls the sender: bytes in flight and RSS stay bounded, then everything arrives', async () => {
    const TOTAL = 256 << 20;
    const backend = await fastSourceServer('source', TOTAL);
    const relay = await spliceHarness(backend.port);
    const rssBefore = process.memoryUsage.rss();
    const c = await connectClient(relay.port, { read: false });
    c.socket.pause();
    // Bounded: the sender must stop (stable for 300 ms) long before the total.
    let last = -1;
    let stableSince = Date.now();
    await until(
      () => {
        const now = backend.flushed();
        if (now !== last) {
          last = now;
          stableSince = Date.now();
        }
        return Date.now() - stableSince > 300;
      },
      10_000,
      'the sender to stall',
    );
    const inFlight = backend.flushed();
    expect(inFlight).toBeLessThan(32 << 20); // socket buffers on both sides and one pipe, not 256 MiB
    expect(relay.handles[0]!.rcvd()).toBeLessThan(32 << 20);
    expect(spliceStats()!.pipesInUse).toBe(1); // the stalled direction's pipe holds bytes
    expect(process.memoryUsage.rss() - rssBefore).toBeLessThan(64 << 20);

    const hash = (await import('node:crypto')).createHash('sha256');
    let got = 0;
    c.socket.on('data', (d: Buffer) => {
      got += d.length;
      hash.update(d);
    });
    c.socket.resume();
    await within(c.ended, 20_000, 'the whole stream');
    expect(got).toBe(TOTAL);
    expect(hash.digest('hex')).toBe(backend.sha256);
    c.socket.end();
    await relay.waitEnds(1);
    expect(relay.ends[0]).toMatchObject({ rcvd: TOTAL, end: 'backend-close' });
  });

  it('idle connections hold no pipe: pipes are taken only while bytes move', async () => {
    const backend = await echoServer('echo');
    const relay = await spliceHarness(backend.port);
    const N = 100;
    const clients = [];
    for (let i = 0; i < N; i++) {
      const c = await connectClient(relay.port);
      expect(await c.request(`c${i}`)).toBe(`c${i}`);
      clients.push(c);
    }
    await until(() => relay.handles.length === N, 3000, 'every hand-over');
    const s = spliceStats()!;
    expect(s.connections).toBe(N);
    expect(s.pipesInUse).toBe(0);
    // One connection at a time moved bytes: the pool served all of them with very few pipes.
    expect(s.pipesPooled).toBeLessThanOrEqual(4);
    for (const c of clients) c.socket.end();
    await relay.waitEnds(N);
  });

  it('10,000 connections opened and closed leave no descriptor behind', { timeout: 60_000 }, async () => {
    const backend = await echoServer('echo');
    const relay = await spliceHarness(backend.port);
    // Warm up once so the relay thread, its epoll and eventfd exist before counting.
    const first = await connectClient(relay.port);
    expect(await first.request('warm')).toBe('warm');
    await first.close();
    await relay.waitEnds(1);
    await until(() => backend.sockets.size === 0, 3000, 'the warm-up backend socket to close');
    const fdsBefore = fdCount();
    const pooledBefore = spliceStats()!.pipesPooled;

    const TOTAL = 10_000;
    const CONCURRENCY = 50;
    let started = 0;
    const one = async (): Promise<void> => {
      const s: Socket = net.connect({ host: HOST, port: relay.port, allowHalfOpen: true, noDelay: true });
      s.on('error', () => undefined);
      const closed = new Promise<void>((resolve) => s.once('close', () => resolve())); // not events.once: an error would reject it
      await within(once(s, 'connect'), 3000, 'a connect');
      s.end('x');
      const [echo] = (await within(once(s, 'data'), 3000, 'the echo')) as [Buffer];
      expect(echo.toString()).toBe('x');
      s.resume();
      await within(closed, 3000, 'the close');
    };
    const lane = async (): Promise<void> => {
      // Bounded by TOTAL.
      while (started < TOTAL) {
        started++;
        await one();
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, lane));
    await relay.waitEnds(TOTAL + 1, 20_000);
    await until(() => backend.sockets.size === 0, 5000, 'every backend socket to close');
    expect(relay.ends.filter((e) => e.end !== 'client-close')).toEqual([]);
    expect(relay.ends.slice(1).every((e) => e.sent === 1 && e.rcvd === 1)).toBe(true);
    const s = spliceStats()!;
    expect(s.connections).toBe(0);
    expect(s.pipesInUse).toBe(0);
    expect(s.pending).toBe(0);
    // Pooled pipes are the only descriptors allowed to have appeared (two each).
    await until(() => fdCount() === fdsBefore + 2 * (s.pipesPooled - pooledBefore), 3000, 'the descriptor count to settle');
  });

  it('runs in several worker threads at once, and a worker exits cleanly with spliced connections open', async () => {
    const backend = await echoServer('echo');
    const wrapper = new URL('../../src/proxy/splice.ts', import.meta.url).href;
    // Each worker runs its own relay (its own addon instance and thread) and answers with its port.
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const net = require('node:net');
      (async () => {
        const { spliceRelay, spliceAvailable } = await import(workerData.wrapper);
        if (!spliceAvailable().ok) throw new Error(JSON.stringify(spliceAvailable()));
        const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
          const backend = net.connect({ host: '127.0.0.1', port: workerData.backend, allowHalfOpen: true });
          backend.pause();
          backend.once('connect', () => spliceRelay(client, backend, { idleTimeoutMs: 0 }, (r) => parentPort.postMessage({ end: r })));
        });
        server.listen(0, '127.0.0.1', () => parentPort.postMessage({ port: server.address().port }));
      })().catch((e) => { throw e; });`;
    const workers = [0, 1].map(() => new Worker(code, { eval: true, workerData: { wrapper, backend: backend.port } }));
    for (const w of workers) track({ close: async () => void (await w.terminate()) });
    const ports = await Promise.all(
      workers.map((w) =>
        within(
          new Promise<number>((resolve, reject) => {
            w.on('message', (m: { port?: number }) => m.port !== undefined && resolve(m.port));
            w.once('error', reject);
          }),
          10_000,
          'a worker to listen',
        ),
      ),
    );
    const ends = workers.map((w) => new Promise((resolve) => w.on('message', (m: { end?: unknown }) => m.end && resolve(m.end))));
    const held = [];
    for (const port of ports) {
      const done = await connectClient(port);
      expect(await done.request('through a worker')).toBe('through a worker');
      done.socket.end();
      await within(done.ended, 3000, 'the end through a worker');
      const open = await connectClient(port); // stays open while its worker goes away
      expect(await open.request(`held ${port}`)).toBe(`held ${port}`);
      held.push(open);
    }
    expect(await within(Promise.all(ends), 3000, 'each worker to report its end')).toEqual([
      { sent: 16, rcvd: 16, end: 'client-close', errno: null },
      { sent: 16, rcvd: 16, end: 'client-close', errno: null },
    ]);
    // Main thread too, at the same time as the workers.
    const relay = await spliceHarness(backend.port);
    const mine = await connectClient(relay.port);
    expect(await mine.request('main')).toBe('main');
    // A worker going away closes what its relay held (the env cleanup joins its thread).
    for (const w of workers) expect(await within(w.terminate(), 5000, 'a worker to terminate')).toBe(1);
    for (const c of held) await within(Promise.race([c.ended, c.closed]), 3000, 'a held connection to be closed by its worker exit');
    expect(await mine.request('main still')).toBe('main still');
  });
});
