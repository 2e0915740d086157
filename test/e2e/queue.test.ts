// The FIFO queue (issue 5, tcpbalance): when every backend is merely full (maxc), clients wait in arrival
// order for a slot; every freed slot goes to the oldest waiter at once (as many waiters as slots, not one
// per event); a waiter that times out, leaves, or finds the queue full is closed and counted; without a
// queue section the behaviour stays balance's (closed at once). What a waiter sends meanwhile reaches the
// backend intact, half-close included.

import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { execute } from '../../src/control/commands.ts';
import { renderShow, renderStatCsv } from '../../src/stats/render.ts';
import { connectClient, sha256, sinkServer, until, within, type TestClient } from '../helpers/backends.ts';
import { closeHealthServers, parseStatCsv, serve, sleep, type Backend } from '../helpers/health.ts';
import { cleanup, startLb, webDoc, type InProcessLb } from '../helpers/lb.ts';

afterEach(async () => {
  await cleanup();
  await closeHealthServers();
});

/**
 * A backend that names what it serves: each connection's first chunk is recorded (in order of arrival),
 * answered with `served <chunk>` and, with `closeAfter`, closed. `release(i)` ends connection i.
 */
async function recorder(opts: { closeAfter?: boolean } = {}): Promise<Backend & { order: string[]; release(i: number): void }> {
  const order: string[] = [];
  const conns: import('node:net').Socket[] = [];
  const b = await serve('rec', (s) => {
    conns.push(s);
    s.once('data', (c: Buffer) => {
      const what = c.toString();
      order.push(what);
      if (opts.closeAfter) s.end(`served ${what}`);
      else s.write(`served ${what}`);
    });
    s.on('end', () => s.end());
  });
  return Object.assign(b, { order, release: (i: number) => conns[i]?.end() });
}

const one = (port: number, maxc: number) => ({ host: '127.0.0.1', port, maxc });

function queueLen(lb: InProcessLb): number {
  return lb.listener().state.queued;
}

/** Connects a client that says `name` and waits until lb has queued it (queue length grows to `n`). */
async function queued(lb: InProcessLb, name: string, n: number): Promise<TestClient> {
  const c = await connectClient(lb.port());
  c.socket.write(name);
  await until(() => queueLen(lb) === n, 2000, `${name} to be queued (queue length ${queueLen(lb)}, want ${n})`);
  return c;
}

/** A client that takes a slot and keeps it: connected through lb, its first message answered. */
async function holder(lb: InProcessLb, name: string): Promise<TestClient> {
  const c = await connectClient(lb.port());
  c.socket.write(name);
  await c.waitFor((r) => r.toString() === `served ${name}`, 2000, `${name} to be served`);
  return c;
}

/** lb closed the client: its FIN (or a reset) arrived. The test clients are half-open capable. */
const closedWithin = async (c: TestClient, ms: number, what: string): Promise<void> => {
  await within(Promise.race([c.ended, c.closed]), ms, what);
};

/** Like a real client: once the backend's answer ended, close our side too (so the slot frees). */
function closeWhenAnswered(c: TestClient): TestClient {
  void c.ended.then(() => c.socket.end());
  return c;
}

describe('queue', () => {
  it('waiters are served in arrival order (FIFO) when the only slot frees', async () => {
    const rec = await recorder({ closeAfter: true });
    const lb = await startLb(webDoc([{ backends: [one(rec.port, 1)] }], { queue: { max: 10, timeout: '5s' } }));
    const h = await connectClient(lb.port()); // holds the slot: says nothing, so the backend keeps it open
    await until(() => rec.current === 1, 2000, 'the holder to reach the backend');
    const w: TestClient[] = [];
    for (const name of ['w1', 'w2', 'w3']) w.push(closeWhenAnswered(await queued(lb, name, w.length + 1)));
    expect(lb.rt.snapshot().listeners[0]!.queue).toMatchObject({ cur: 3, max: 3, limit: 10, timeouts: 0 });
    await sleep(100);
    expect(rec.accepted).toBe(1); // nobody got past the full backend
    await h.close();
    for (const [i, c] of w.entries()) await c.waitFor((r) => r.toString() === `served w${i + 1}`, 3000, `w${i + 1} served`);
    expect(rec.order).toEqual(['w1', 'w2', 'w3']);
    expect(lb.listener().state.groups[0]!.backends[0]!.max).toBe(1); // maxc 1 held throughout
    await until(() => queueLen(lb) === 0, 1000, 'the queue to empty');
    // The access log has how long each waited.
    await until(() => lb.logs.all((l) => l.event === 'conn' && l.fields.queued_ms !== undefined).length === 3, 2000, '3 conn lines with queued_ms');
    const waits = lb.logs.all((l) => l.event === 'conn' && l.fields.queued_ms !== undefined).map((l) => Number(l.fields.queued_ms));
    for (const ms of waits) expect(ms).toBeGreaterThanOrEqual(0);
  });

  it('two slots freeing serve two waiters at once (maxc 2, hold 2, queue 4)', async () => {
    const rec = await recorder();
    const lb = await startLb(webDoc([{ backends: [one(rec.port, 2)] }], { queue: { max: 10, timeout: '5s' } }));
    const h1 = await holder(lb, 'h1');
    const h2 = await holder(lb, 'h2');
    const w: TestClient[] = [];
    for (const name of ['w1', 'w2', 'w3', 'w4']) w.push(await queued(lb, name, w.length + 1));
    await Promise.all([h1.close(), h2.close()]);
    // w1 and w2 both get a slot, without either of them finishing first.
    await Promise.all([
      w[0]!.waitFor((r) => r.toString() === 'served w1', 2000, 'w1 served'),
      w[1]!.waitFor((r) => r.toString() === 'served w2', 2000, 'w2 served'),
    ]);
    await sleep(100);
    expect(queueLen(lb)).toBe(2);
    expect(w[2]!.text()).toBe('');
    expect(w[3]!.text()).toBe('');
    expect(rec.current).toBe(2);
    // Served at once (possibly by both workers): their first bytes may reach the backend in either order.
    expect(rec.order.slice(0, 2)).toEqual(['h1', 'h2']);
    expect(rec.order.slice(2).sort()).toEqual(['w1', 'w2']);
  });

  it('one event freeing several slots (maxc raised 1 → 4) serves that many waiters at once, oldest first', async () => {
    const rec = await recorder();
    const lb = await startLb(webDoc([{ backends: [one(rec.port, 1)] }], { queue: { max: 10, timeout: '5s' } }));
    await holder(lb, 'h');
    const w: TestClient[] = [];
    for (const name of ['w1', 'w2', 'w3', 'w4']) w.push(await queued(lb, name, w.length + 1));
    const reply = await execute(lb.rt, { listener: 'web', group: 0, level: 'admin', prompt: false }, 'maxc web 0 0 4');
    expect(reply.error).toBeUndefined();
    await Promise.all(w.slice(0, 3).map((c, i) => c.waitFor((r) => r.toString() === `served w${i + 1}`, 2000, `w${i + 1} served`)));
    await sleep(100);
    expect(queueLen(lb)).toBe(1);
    expect(w[3]!.text()).toBe('');
    // The three oldest got the three slots (served at once, possibly by both workers, so their first
    // bytes may reach the backend in any order); the youngest still waits.
    expect(rec.order[0]).toBe('h');
    expect(rec.order.slice(1).sort()).toEqual(['w1', 'w2', 'w3']);
  });

  it('a waiter is served as soon as a down backend comes up (health change), not only when a slot frees', async () => {
    const rec = await recorder({ closeAfter: true });
    const spare = await serve('spare', (s) => {
      s.once('data', (c: Buffer) => s.end(`spare served ${c.toString()}`));
    });
    const sparePort = spare.port;
    await spare.close(); // down for now: its checks fail
    const lb = await startLb(
      webDoc(
        [
          {
            policy: 'first',
            backends: [one(rec.port, 1), { host: '127.0.0.1', port: sparePort }],
            health: { interval: '100ms', timeout: '80ms', rise: 1, fall: 1 },
          },
        ],
        { queue: { max: 10, timeout: '5s' } },
      ),
    );
    await until(() => lb.rt.snapshot().listeners[0]!.groups[0]!.backends[1]!.status === 'dis', 1500, 'spare to be dis');
    const h = await connectClient(lb.port());
    await until(() => rec.current === 1, 2000, 'the holder to reach the backend');
    const w = await queued(lb, 'w', 1);
    // spare comes back: one passing check brings it up and the waiter goes there at once.
    await serve('spare', (s) => {
      s.once('data', (c: Buffer) => s.end(`spare served ${c.toString()}`));
    }, sparePort);
    await w.waitFor((r) => r.toString() === 'spare served w', 1500, 'the waiter to be served by spare');
    expect(queueLen(lb)).toBe(0);
    await h.close();
  });

  it('queue timeout: the waiter is closed after queue.timeout and counted (show, show stat, log)', async () => {
    const rec = await recorder();
    const lb = await startLb(webDoc([{ backends: [one(rec.port, 1)] }], { queue: { max: 10, timeout: '300ms' } }));
    await holder(lb, 'h');
    const t0 = Date.now();
    const w = await queued(lb, 'w', 1);
    await closedWithin(w, 2000, 'the waiter to be closed by the queue timeout');
    const waited = Date.now() - t0;
    expect(waited).toBeGreaterThanOrEqual(250);
    expect(waited).toBeLessThan(1000);
    expect(w.text()).toBe('');
    expect(rec.accepted).toBe(1);
    const q = lb.rt.snapshot().listeners[0]!.queue!;
    expect(q).toMatchObject({ cur: 0, max: 1, limit: 10, timeouts: 1, abandoned: 0, rejected: 0 });
    const line = await lb.logs.waitFor('queue-timeout');
    expect(line.fields).toMatchObject({ listener: 'web' });
    const fe = parseStatCsv(renderStatCsv(lb.rt.snapshot())).find((r) => r.svname === 'FRONTEND')!;
    expect([fe.qcur, fe.qmax, fe.qlimit, fe.lb_qtimeouts]).toEqual(['0', '1', '10', '1']);
    expect(renderShow(lb.rt.snapshot())).toContain('queue 0/10 (max 1, timeouts 1, left 0, full 0)');
  });

  it('a waiter that disconnects leaves the queue (counted) and the next waiter gets the slot', async () => {
    const rec = await recorder({ closeAfter: true });
    const lb = await startLb(webDoc([{ backends: [one(rec.port, 1)] }], { queue: { max: 10, timeout: '5s' } }));
    const h = await connectClient(lb.port());
    await until(() => rec.current === 1, 2000, 'the holder to reach the backend');
    // w1 says nothing and gives up; w2 is waiting behind it with a request.
    const w1 = await connectClient(lb.port());
    await until(() => queueLen(lb) === 1, 2000, 'w1 to be queued');
    const w2 = closeWhenAnswered(await queued(lb, 'w2', 2));
    w1.socket.end();
    await until(() => queueLen(lb) === 1, 2000, 'w1 to leave the queue');
    await closedWithin(w1, 2000, 'w1 to be closed');
    expect(lb.rt.snapshot().listeners[0]!.queue).toMatchObject({ cur: 1, abandoned: 1, timeouts: 0 });
    await h.close();
    await w2.waitFor((r) => r.toString() === 'served w2', 2000, 'w2 served');
    expect(rec.order).toEqual(['w2']);
    expect(rec.accepted).toBe(2); // the holder and w2: w1 never reached the backend
  });

  it('a waiter that resets leaves the queue and is counted once', async () => {
    const rec = await recorder({ closeAfter: true });
    const lb = await startLb(webDoc([{ backends: [one(rec.port, 1)] }], { queue: { max: 10, timeout: '5s' } }));
    const h = await connectClient(lb.port());
    await until(() => rec.current === 1, 2000, 'the holder to reach the backend');
    const w1 = await queued(lb, 'w1', 1);
    const w2 = await queued(lb, 'w2', 2);
    w1.socket.resetAndDestroy();
    await until(() => queueLen(lb) === 1, 2000, 'w1 to leave the queue');
    await sleep(50);
    expect(lb.rt.snapshot().listeners[0]!.queue).toMatchObject({ cur: 1, abandoned: 1 });
    await h.close();
    await w2.waitFor((r) => r.toString() === 'served w2', 2000, 'w2 served');
    expect(rec.order).toEqual(['w2']);
  });

  it('a full queue closes the newcomer at once (counted), the waiters stay', async () => {
    const rec = await recorder();
    const lb = await startLb(webDoc([{ backends: [one(rec.port, 1)] }], { queue: { max: 2, timeout: '5s' } }));
    await holder(lb, 'h');
    await queued(lb, 'w1', 1);
    await queued(lb, 'w2', 2);
    const t0 = Date.now();
    const late = await connectClient(lb.port());
    await closedWithin(late, 1000, 'the newcomer to be closed');
    expect(Date.now() - t0).toBeLessThan(300);
    expect(queueLen(lb)).toBe(2);
    expect(lb.rt.snapshot().listeners[0]!.queue).toMatchObject({ cur: 2, max: 2, limit: 2, rejected: 1, timeouts: 0 });
    const line = await lb.logs.waitFor('queue-full');
    expect(line.fields).toMatchObject({ listener: 'web' });
  });

  it('without a queue section a client is closed at once when every backend is full (balance)', async () => {
    const rec = await recorder();
    const lb = await startLb(webDoc([{ backends: [one(rec.port, 1)] }]));
    await holder(lb, 'h');
    const t0 = Date.now();
    const c = await connectClient(lb.port());
    await closedWithin(c, 1000, 'the client to be closed');
    expect(Date.now() - t0).toBeLessThan(300);
    expect(queueLen(lb)).toBe(0);
    expect(lb.rt.snapshot().listeners[0]!.queue).toBeNull();
    expect(lb.listener().state.noBackend).toBe(1);
    await lb.logs.waitFor('no-backend');
  });

  it('every backend down (not full) is not a reason to queue: closed at once even with a queue', async () => {
    const rec = await recorder();
    const lb = await startLb(
      webDoc([{ backends: [{ host: '127.0.0.1', port: rec.port, maxc: 1, enabled: false }] }], { queue: { max: 10, timeout: '5s' } }),
    );
    const c = await connectClient(lb.port());
    await closedWithin(c, 1000, 'the client to be closed');
    expect(lb.rt.snapshot().listeners[0]!.queue).toMatchObject({ cur: 0, max: 0 });
  });

  it('a queued client that writes its request and half-closes gets the reply once served', async () => {
    const sink = await sinkServer('after-eof', { replyAfterEof: (req) => `got ${req.length}: ${req.toString()}` });
    const lb = await startLb(webDoc([{ backends: [one(sink.port, 1)] }], { queue: { max: 10, timeout: '5s' } }));
    const h = await connectClient(lb.port());
    await until(() => sink.accepted === 1, 2000, 'the holder to reach the backend');
    const w = await connectClient(lb.port());
    w.socket.write('GET /queued HTTP/1.0\r\n\r\n');
    w.socket.end(); // printf req | nc -N
    await until(() => queueLen(lb) === 1, 2000, 'w to be queued');
    await sleep(100); // its FIN arrives while it waits: it must stay queued (it sent a request)
    expect(queueLen(lb)).toBe(1);
    expect(lb.rt.snapshot().listeners[0]!.queue!.abandoned).toBe(0);
    await h.close();
    await w.waitFor((r) => r.toString() === 'got 24: GET /queued HTTP/1.0\r\n\r\n', 3000, 'the reply to the queued request');
    await within(w.ended, 2000, 'the reply to end');
    const got = await within(sink.received[1]!, 2000, 'the backend to see the request and its FIN');
    expect(got.data.toString()).toBe('GET /queued HTTP/1.0\r\n\r\n');
  });

  it('a queued client sending more than the queued-bytes bound (200 KB, then FIN) reaches the backend intact', async () => {
    const sink = await sinkServer('sink', { replyAfterEof: (req) => sha256(req) });
    const lb = await startLb(webDoc([{ backends: [one(sink.port, 1)] }], { queue: { max: 10, timeout: '5s' } }));
    const h = await connectClient(lb.port());
    await until(() => sink.accepted === 1, 2000, 'the holder to reach the backend');
    const w = await connectClient(lb.port());
    const payload = randomBytes(200 * 1024);
    w.socket.write(payload.subarray(0, 1000));
    await until(() => queueLen(lb) === 1, 2000, 'w to be queued');
    w.socket.write(payload.subarray(1000));
    w.socket.end();
    await sleep(150);
    expect(queueLen(lb)).toBe(1);
    await h.close();
    await w.waitFor((r) => r.length === 64, 5000, 'the sha256 reply');
    expect(w.text()).toBe(sha256(payload));
    const got = await within(sink.received[1]!, 2000, 'what the backend received');
    expect(got.bytes).toBe(payload.length);
    expect(got.sha256).toBe(sha256(payload));
  });
});
