// Per-backend and per-listener counters after known traffic (cur, total, attempts, failures, sent = client
// → backend, rcvd = backend → client), and their monotonicity across a routing-table swap.

import { afterEach, describe, expect, it } from 'vitest';
import type { BackendState, ListenerState } from '../../src/balance/state.ts';
import { connectClient, echoServer, refusedPort, sinkServer, until, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(cleanup);

const snap = (c: BackendState | ListenerState) => ({ cur: c.cur, total: c.total, sent: c.sent(), rcvd: c.rcvd() });
const snapB = (b: BackendState) => ({ ...snap(b), attempts: b.attempts, failures: b.failures });

describe('counters', () => {
  it('count connections, failures and bytes per backend and per listener', async () => {
    // The sink answers "ok:<n>" after the client's FIN: known byte counts both ways.
    const reply = (req: Buffer): string => `ok:${req.length}`;
    const a = await sinkServer('a', { replyAfterEof: reply });
    const b = await sinkServer('b', { replyAfterEof: reply });
    const dead = await refusedPort();
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(a.port), at(dead), at(b.port)] }]));
    const send = async (n: number): Promise<string> => {
      const c = await connectClient(lb.port());
      c.socket.end(Buffer.alloc(n, 'x'));
      await within(c.ended, 3000, 'the answer');
      // The client may see the end a moment before lb's relay has finished: one at a time (max 1) means
      // the next client connects only once lb counts this one closed.
      await until(() => lb.listener().state.cur === 0, 2000, 'the relay to finish in lb');
      return c.text();
    };
    expect(await send(100)).toBe('ok:100'); // → a
    expect(await send(2000)).toBe('ok:2000'); // → dead (refused) → b
    expect(await send(30)).toBe('ok:30'); // → a (dead is ejected)
    await lb.logs.waitFor('conn', { count: 3 });

    const st = lb.listener().state;
    const [sa, sd, sb] = st.groups[0]!.backends as [BackendState, BackendState, BackendState];
    expect(snapB(sa)).toEqual({ cur: 0, total: 2, sent: 130, rcvd: 6 + 5, attempts: 2, failures: 0 });
    expect(snapB(sd)).toEqual({ cur: 0, total: 0, sent: 0, rcvd: 0, attempts: 1, failures: 1 });
    expect(snapB(sb)).toEqual({ cur: 0, total: 1, sent: 2000, rcvd: 7, attempts: 1, failures: 0 });
    expect(snap(st)).toEqual({ cur: 0, total: 3, sent: 2130, rcvd: 18 });
    expect(st.max).toBe(1);
    expect(st.noBackend).toBe(0);
  });

  it('count bytes of connections still open (cur) as they flow', async () => {
    const echo = await echoServer('e');
    const lb = await startLb(webDoc([{ backends: [at(echo.port)] }]));
    const c1 = await connectClient(lb.port());
    const c2 = await connectClient(lb.port());
    await c1.request('12345');
    await c2.request('abc');
    const st = lb.listener().state;
    const be = st.groups[0]!.backends[0]!;
    await until(() => be.cur === 2, 2000, 'both relays to count as open');
    // Workers publish the bytes of open connections a few times a second.
    await until(() => snap(be).sent === 8 && snap(st).rcvd === 8, 2000, 'the bytes in flight to be published');
    expect(snap(be)).toEqual({ cur: 2, total: 2, sent: 8, rcvd: 8 });
    expect(snap(st)).toEqual({ cur: 2, total: 2, sent: 8, rcvd: 8 });
    expect(st.max).toBe(2);
    await c1.close();
    await lb.logs.waitFor('conn');
    expect(snap(be)).toEqual({ cur: 1, total: 2, sent: 8, rcvd: 8 });
  });

  it('stay monotonic across a table swap: kept backends keep their counts, new ones start at zero', async () => {
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => echoServer(n)));
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(a!.port), at(b!.port)] }]));
    const talk = async (): Promise<void> => {
      const cl = await connectClient(lb.port());
      await cl.request('0123456789');
      await cl.close();
    };
    for (let i = 0; i < 4; i++) await talk();
    await lb.logs.waitFor('conn', { count: 4 });
    const st = lb.listener().state;
    const before = { listener: snap(st), a: snapB(st.groups[0]!.backends[0]!), b: snapB(st.groups[0]!.backends[1]!) };
    expect(before.listener).toEqual({ cur: 0, total: 4, sent: 40, rcvd: 40 });
    expect(before.a).toMatchObject({ total: 2, sent: 20, rcvd: 20 });

    // New table: order changed, c added, and a connection open across the swap.
    const open = await connectClient(lb.port());
    await open.request('live!'); // → a (5th client, rr)
    await lb.apply(webDoc([{ policy: 'rr', backends: [at(c!.port), at(b!.port), at(a!.port)] }]));
    const after = lb.listener().state;
    const [nc, nb, na] = after.groups[0]!.backends as [BackendState, BackendState, BackendState];
    expect(snap(after).total).toBe(5);
    await until(() => na.sent() === 25, 2000, 'the open connection\'s bytes to be published');
    expect(snapB(na)).toMatchObject({ total: 3, sent: 25, rcvd: 25, cur: 1 });
    expect(snapB(nb)).toEqual(before.b);
    expect(snapB(nc)).toEqual({ cur: 0, total: 0, sent: 0, rcvd: 0, attempts: 0, failures: 0 });

    // More traffic after the swap; the relay from before the swap finishes into the same counters.
    for (let i = 0; i < 3; i++) await talk();
    await open.request('more');
    await open.close();
    await lb.logs.waitFor('conn', { count: 8 });
    expect(snap(after)).toEqual({ cur: 0, total: 8, sent: 40 + 5 + 4 + 30, rcvd: 40 + 5 + 4 + 30 });
    expect(snap(na).sent).toBeGreaterThanOrEqual(29);
    expect(snap(nc).total).toBeGreaterThanOrEqual(1);
    const sum = (k: 'sent' | 'rcvd') => [na, nb, nc].reduce((n, s) => n + s[k](), 0);
    expect(sum('sent')).toBe(after.sent());
    expect(sum('rcvd')).toBe(after.rcvd());
  });

  it('the access-log line carries the same numbers, in text and in JSON', async () => {
    const backend = await sinkServer('s', { replyAfterEof: () => 'x'.repeat(42) });
    for (const format of ['text', 'json'] as const) {
      const lb = await startLb(webDoc([{ backends: [at(backend.port)] }], {}, { log_format: format }));
      const c = await connectClient(lb.port());
      const clientPort = c.socket.localPort;
      c.socket.end('y'.repeat(17));
      await within(c.ended, 3000, 'the answer');
      const line = await lb.logs.waitFor('conn');
      expect(line.raw.startsWith('{')).toBe(format === 'json');
      expect(line.level).toBe('info');
      expect(line.fields).toMatchObject({
        listener: 'web',
        backend: at(backend.port),
        group: '0',
        sent: '17',
        rcvd: '42',
        end: 'client-close',
      });
      expect(line.fields.client).toBe(`127.0.0.1:${clientPort}`);
      expect(Number(line.fields.ms)).toBeGreaterThanOrEqual(0);
      await lb.stop();
    }
  });
});
