// Queued clients held by the addon (issue 35): a listener with a queue runs the native path, and its
// waiters are descriptors the addon watches (src/proxy/native-flow.ts, `wait()` in native/lb_splice.c),
// with no net.Socket and nothing read from them. What a waiter does while it waits decides its fate:
// a reset ends it at once; a close having sent nothing (a client that gave up) ends it too, even when
// the close came before lb queued it; a request then a half-close stays and is served. The queue's own
// behaviour (FIFO, timeouts, figures) is test/e2e/queue.test.ts and slot-release.test.ts, which run
// this path too.

import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connectClient, deadHost, until, within, type TestClient } from '../helpers/backends.ts';
import { closeHealthServers, serve, type Backend } from '../helpers/health.ts';
import { cleanup, startLb, webDoc, type InProcessLb } from '../helpers/lb.ts';
import { nativeAcceptSkipped } from '../helpers/native.ts';

afterEach(async () => {
  await cleanup();
  await closeHealthServers();
});

/** A backend that answers each connection's first chunk with `served <chunk>` and records it. */
async function recorder(): Promise<Backend & { order: string[] }> {
  const order: string[] = [];
  const b = await serve('rec', (s) => {
    s.once('data', (c: Buffer) => {
      order.push(c.toString());
      s.write(`served ${c.toString()}`);
    });
    s.on('end', () => s.end());
  });
  return Object.assign(b, { order });
}

/** lb with one backend of maxc 1, a queue, and a holder that has the slot. */
async function full(rec: Backend, workers: number): Promise<{ lb: InProcessLb; holder: TestClient }> {
  const lb = await startLb(webDoc([{ backends: [{ host: '127.0.0.1', port: rec.port, maxc: 1 }] }], { queue: { max: 100, timeout: '20s' } }, { workers }));
  expect(lb.rt.snapshot().listeners[0]!.path).toBe('native accept + connect + splice');
  const holder = await connectClient(lb.port());
  holder.socket.write('holder');
  await holder.waitFor((r) => r.toString() === 'served holder', 3000, 'the holder to be served');
  return { lb, holder };
}

const queued = (lb: InProcessLb): number => lb.listener().state.queued;
const queueFigures = (lb: InProcessLb) => lb.rt.snapshot().listeners[0]!.queue!;

/** A client that connects, says `first` (or nothing), and is the `n`th in the queue. */
async function waiter(lb: InProcessLb, n: number, first: string | null, half = false): Promise<TestClient> {
  const c = await connectClient(lb.port());
  if (first !== null) c.socket[half ? 'end' : 'write'](first);
  await until(() => queued(lb) === n, 3000, `waiter ${n} to be queued (queued ${queued(lb)})`);
  return c;
}

// Skipped only where the addon cannot accept and that is expected (test/helpers/native.ts): no addon
// outside CI, or a run that turns it off (CI's JS-relay pass). Under CI otherwise it fails instead.
describe.skipIf(nativeAcceptSkipped)('queued clients held by the addon', () => {
  it('a waiter that resets leaves the queue at once, counted once; the one behind it is served', async () => {
    const rec = await recorder();
    const { lb, holder } = await full(rec, 1);
    const w1 = await waiter(lb, 1, 'w1');
    const w2 = await waiter(lb, 2, 'w2');
    const resetAt = performance.now();
    w1.socket.resetAndDestroy();
    await until(() => queued(lb) === 1, 3000, `w1 to leave the queue (queued ${queued(lb)})`, 1);
    const ms = performance.now() - resetAt;
    // The addon sees the reset on the waiter's descriptor and JS drops it from the queue: a millisecond
    // or two here. The bound is generous (a shared 2-core machine); the note of issue 35 has the figures.
    expect(ms).toBeLessThan(1000);
    expect(queueFigures(lb)).toMatchObject({ cur: 1, abandoned: 1 });
    await holder.close();
    await w2.waitFor((r) => r.toString() === 'served w2', 3000, 'w2 to be served');
    expect(rec.order).toEqual(['holder', 'w2']);
    await lb.logs.waitFor((l) => l.event === 'conn' && l.fields.end === 'reset' && l.fields.backend === '-');
    expect(queueFigures(lb)).toMatchObject({ abandoned: 1, timeouts: 0 });
    await w2.close();
  });

  it('20 clients that close having sent nothing (often before lb has queued them) all leave; none reaches the backend', async () => {
    const rec = await recorder();
    const { lb, holder } = await full(rec, 2);
    // Each sends its FIN with the handshake's last ACK: it is often in before the addon accepts the client,
    // so before lb has decided to queue it; either way the client has left, and is counted as such.
    const closed = Array.from({ length: 20 }, () => {
      const s = net.connect({ port: lb.port(), host: '127.0.0.1', allowHalfOpen: true });
      s.on('error', () => undefined);
      s.resume();
      s.end();
      return new Promise<void>((resolve) => s.once('close', () => resolve()));
    });
    await until(() => queueFigures(lb).abandoned === 20, 5000, `every client to leave (abandoned ${queueFigures(lb).abandoned}, queued ${queued(lb)})`);
    expect(queued(lb)).toBe(0);
    await within(Promise.all(closed), 3000, 'lb to close every client that left');
    expect(rec.accepted).toBe(1); // the holder only
    await holder.close();
  });

  it('a waiter that sent its request and half-closed stays queued and gets its answer once served', async () => {
    const rec = await recorder();
    const { lb, holder } = await full(rec, 1);
    const w = await waiter(lb, 1, 'request', true);
    // A client that gave up behind it: once that one is gone, the FIN of the first has been looked at too
    // (the addon handles a descriptor's events in order, the first client's before the second's).
    const gaveUp = await waiter(lb, 2, null);
    gaveUp.socket.end();
    await until(() => queueFigures(lb).abandoned === 1, 3000, 'the second client to leave');
    expect(queued(lb)).toBe(1);
    await holder.close();
    await w.waitFor((r) => r.toString() === 'served request', 3000, 'the half-closed waiter to be served');
    await within(w.ended, 3000, 'the backend\'s FIN to reach the waiter');
    expect(rec.order).toEqual(['holder', 'request']);
  });

  it('a waiter served to a backend that never answers times out on time and goes back to its place, then is served', async () => {
    // The addon does not poll for commands on behalf of waiters (they may wait for minutes): the connect
    // command of a served waiter wakes its thread, else this connect's timeout would start only at the
    // next unrelated wake-up.
    const rec = await recorder();
    const dead = await deadHost();
    const { lb, holder } = await full(rec, 1);
    const w = await waiter(lb, 1, 'w');
    const failed = lb.logs.waitFor((l) => l.event === 'connect-failed', { ms: 5000 });
    const startedAt = performance.now();
    // A second backend with a free slot: the waiter is served to it, and its SYN is never answered.
    await lb.apply(
      webDoc([{ backends: [{ host: '127.0.0.1', port: rec.port, maxc: 1 }, { host: '127.0.0.1', port: dead.port, maxc: 1 }] }], {
        queue: { max: 100, timeout: '20s' },
        connect_timeout: '300ms',
      }),
    );
    const line = await failed;
    expect(line.fields).toMatchObject({ reason: 'ETIMEDOUT', backend: `127.0.0.1:${dead.port}` });
    expect(performance.now() - startedAt).toBeLessThan(3000); // 300 ms, generously
    await until(() => queued(lb) === 1, 3000, 'the waiter to be back in the queue');
    expect(queueFigures(lb)).toMatchObject({ abandoned: 0, timeouts: 0, rejected: 0 });
    await holder.close();
    await w.waitFor((r) => r.toString() === 'served w', 3000, 'the waiter to be served by the live backend');
    await w.close();
  });
});
