// How spliced connections end: half-close passed on per direction, a reset passed on as a reset, idle
// timeout, abort(), and a client that leaves while its backend is still writing. Each ends exactly once
// and leaves no pipe held.

import { once } from 'node:events';
import net, { type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { spliceStats } from '../../src/proxy/splice.ts';
import {
  answerAfterEofServer,
  closeAllBackends,
  connectClient,
  echoServer,
  HOST,
  nextConnection,
  resetServer,
  sinkServer,
  track,
  until,
  within,
} from '../helpers/backends.ts';
import { spliceHarness, spliceSkipped, spliceTitleNote } from './splice-harness.ts';

afterEach(closeAllBackends);

/** Resolves with the error that closed `socket` (null for an orderly close). */
function closedWith(socket: Socket): Promise<NodeJS.ErrnoException | null> {
  let error: NodeJS.ErrnoException | null = null;
  socket.on('error', (e: NodeJS.ErrnoException) => (error = e));
  return within(
    new Promise((resolve) => socket.once('close', () => resolve(error))),
    3000,
    'the socket to close',
  );
}

async function noPipeHeld(): Promise<void> {
  await until(() => spliceStats()!.pipesInUse === 0 && spliceStats()!.connections === 0, 3000, 'the relay to hold no pipe');
}

describe.skipIf(spliceSkipped)(`splice relay: how connections end${spliceTitleNote}`, () => {
  it('client half-close: the request, then the client FIN, reaches the backend; its reply still comes back', async () => {
    const backend = await answerAfterEofServer('after-eof');
    const relay = await spliceHarness(backend.port);
    const c = await connectClient(relay.port);
    c.socket.end('GET /\r\n');
    await within(c.ended, 3000, "the backend's reply and FIN");
    expect(c.text()).toBe('got 7 bytes: GET /\r\n');
    const [end] = (await relay.waitEnds(1), relay.ends);
    expect(end).toEqual({ sent: 7, rcvd: 20, end: 'client-close', errno: null });
    await noPipeHeld();
  });

  it('backend half-close: after the backend FIN the client can go on sending, and all of it arrives', async () => {
    const backend = await sinkServer('hello-then-fin', { send: Buffer.from('hello') });
    const relay = await spliceHarness(backend.port);
    const c = await connectClient(relay.port);
    await within(c.ended, 3000, "the backend's FIN");
    expect(c.text()).toBe('hello');
    const more = Buffer.alloc(3 << 20, 'x');
    c.socket.write(more);
    c.socket.end('!');
    const got = await within(backend.received[0]!, 5000, 'the client bytes at the backend');
    expect(got.bytes).toBe(more.length + 1);
    await relay.waitEnds(1);
    expect(relay.ends[0]).toEqual({ sent: more.length + 1, rcvd: 5, end: 'backend-close', errno: null });
    await noPipeHeld();
  });

  it('backend reset: the client is reset (ECONNRESET), not closed with a FIN', async () => {
    const backend = await resetServer('rst', 'data');
    const relay = await spliceHarness(backend.port);
    const c = await connectClient(relay.port);
    const closed = closedWith(c.socket);
    c.socket.write('trigger the reset');
    expect((await closed)?.code).toBe('ECONNRESET');
    await relay.waitEnds(1);
    expect(relay.ends[0]).toMatchObject({ end: 'reset', errno: 'ECONNRESET', sent: 17 });
    await noPipeHeld();
  });

  it('a backend reset while nothing moves either way (no read or write pending) still resets the client', async () => {
    const backend = await echoServer('echo');
    const relay = await spliceHarness(backend.port);
    const accepted = nextConnection(backend);
    const c = await connectClient(relay.port);
    const server = await accepted;
    await until(() => relay.handles.length === 1, 3000, 'the hand-over');
    const closed = closedWith(c.socket);
    server.resetAndDestroy();
    expect((await closed)?.code).toBe('ECONNRESET');
    await relay.waitEnds(1);
    expect(relay.ends[0]).toEqual({ sent: 0, rcvd: 0, end: 'reset', errno: 'ECONNRESET' });
  });

  it('a backend that half-closed and then resets ends the relay at once, the client idle meanwhile', async () => {
    const backend = await echoServer('echo');
    const relay = await spliceHarness(backend.port);
    const accepted = nextConnection(backend);
    const c = await connectClient(relay.port);
    const server = await accepted;
    server.end();
    await within(c.ended, 3000, "the backend's FIN");
    // Nothing is read from the backend any more (its EOF was seen) and nothing is written to it: only
    // the socket's error tells the relay.
    server.resetAndDestroy();
    await relay.waitEnds(1, 2000);
    expect(relay.ends[0]).toMatchObject({ sent: 0, rcvd: 0, end: 'backend-close' });
    await noPipeHeld();
  });

  it('client reset: the backend is reset (ECONNRESET)', async () => {
    const backend = await echoServer('echo');
    const relay = await spliceHarness(backend.port);
    const accepted = nextConnection(backend);
    const c = await connectClient(relay.port);
    const server = await accepted;
    expect(await c.request('ping')).toBe('ping');
    server.removeAllListeners('end'); // the echo would half-close back: see what the relay does instead
    const closed = closedWith(server);
    c.socket.resetAndDestroy();
    expect((await closed)?.code).toBe('ECONNRESET');
    await relay.waitEnds(1);
    expect(relay.ends[0]).toMatchObject({ end: 'reset', sent: 4, rcvd: 4 });
    await noPipeHeld();
  });

  it('a client that sends a request and closes at once while the backend writes 1 MiB: one end, nothing held', async () => {
    const MIB = Buffer.alloc(1 << 20, 'b');
    const backend = await echoServer('writer');
    backend.server.removeAllListeners('connection');
    const serverClosed: Promise<unknown>[] = [];
    backend.server.on('connection', (s: Socket) => {
      s.on('error', () => undefined);
      // Not events.once: it rejects on the EPIPE this writer may get, before anyone awaits it.
      serverClosed.push(new Promise<void>((resolve) => s.once('close', () => resolve())));
      s.once('data', () => s.end(MIB));
    });
    const relay = await spliceHarness(backend.port);
    for (let i = 0; i < 20; i++) {
      const c = net.connect({ host: HOST, port: relay.port });
      c.on('error', () => undefined);
      track({ close: async () => void c.destroy() });
      await once(c, 'connect');
      c.end('GET /big\r\n');
      c.destroy(); // closes without reading: its kernel answers the backend's bytes with a reset
    }
    await relay.waitEnds(20);
    expect(relay.ends.every((e) => e.sent === 10 && e.rcvd <= MIB.length)).toBe(true);
    expect(new Set(relay.ends.map((e) => e.end))).toEqual(new Set(['client-close']));
    await within(Promise.all(serverClosed), 3000, 'every backend connection to close');
    await noPipeHeld();
    expect(spliceStats()!.pending).toBe(0);
  });

  it('idle timeout: both sides are closed once nothing moved for the timeout, and activity postpones it', async () => {
    const backend = await echoServer('echo');
    const relay = await spliceHarness(backend.port, { idleTimeoutMs: 300 });
    const c = await connectClient(relay.port);
    const started = Date.now();
    // Traffic every 100 ms for 600 ms keeps it open past the timeout.
    for (let i = 0; i < 6; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 100));
      expect(await c.request(`tick${i}`)).toBe(`tick${i}`);
    }
    const quietFrom = Date.now();
    expect(relay.ends).toHaveLength(0);
    await within(Promise.race([c.ended, c.closed]), 3000, 'the idle client to be closed');
    const idleFor = Date.now() - quietFrom;
    await relay.waitEnds(1);
    expect(relay.ends[0]!.end).toBe('idle-timeout');
    expect(Date.now() - started).toBeGreaterThan(750);
    expect(idleFor).toBeGreaterThanOrEqual(250);
    expect(idleFor).toBeLessThan(1500);
    expect(relay.ends[0]!.sent).toBe('tick0tick1tick2tick3tick4tick5'.length);
  });

  it('abort(): a running transfer is cut, both peers see the close, the end says aborted', async () => {
    const backend = await echoServer('echo');
    const relay = await spliceHarness(backend.port);
    const accepted = nextConnection(backend);
    const c = await connectClient(relay.port);
    const server = await accepted;
    // Not events.once: an abort may reset the backend side, and its 'error' would reject that promise.
    const serverClosed = new Promise<void>((resolve) => server.once('close', () => resolve()));
    expect(await c.request('before')).toBe('before');
    relay.handles[0]!.abort();
    await within(Promise.race([c.ended, c.closed]), 3000, 'the client to be closed');
    await within(serverClosed, 3000, 'the backend side to be closed');
    await relay.waitEnds(1);
    expect(relay.ends[0]).toEqual({ sent: 6, rcvd: 6, end: 'aborted', errno: null });
    relay.handles[0]!.abort(); // after the end: nothing happens
    expect(relay.handles[0]!.ended).toBe(true);
    expect(relay.handles[0]!.sent()).toBe(6);
    await noPipeHeld();
  });
});
