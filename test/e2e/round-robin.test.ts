// rr over 3 real backends through an in-process lb: each new client goes to the next backend in turn.

import { afterEach, describe, expect, it } from 'vitest';
import { ask, backendOf, connectClient, echoServer } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(cleanup);

describe('round robin over 3 backends', () => {
  it('sequential clients go a, b, c, a, b, c ...', async () => {
    const [a, b, c] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true }), echoServer('c', { prefix: true })]);
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(a.port), at(b.port), at(c.port)] }]));
    const seen: string[] = [];
    for (let i = 0; i < 9; i++) seen.push(backendOf(await ask(lb.port(), `hello ${i}`)));
    expect(seen).toEqual(['a', 'b', 'c', 'a', 'b', 'c', 'a', 'b', 'c']);
    expect([a.accepted, b.accepted, c.accepted]).toEqual([3, 3, 3]);
    // One access-log line per finished connection, naming the backend it went to (workers log in batches
    // of their own, so the lines of two workers need not come in connection order: compare as a set).
    const conns = await lb.logs.waitFor('conn', { count: 9 }).then(() => lb.logs.all('conn'));
    expect(conns.map((l) => l.fields.backend).sort()).toEqual(seen.map((n) => at({ a: a.port, b: b.port, c: c.port }[n]!)).sort());
    expect(conns.every((l) => l.fields.end === 'client-close' && l.fields.group === '0')).toBe(true);
  });

  it('concurrent clients are spread evenly too', async () => {
    const [a, b, c] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true }), echoServer('c', { prefix: true })]);
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(a.port), at(b.port), at(c.port)] }]));
    const clients = await Promise.all(Array.from({ length: 12 }, () => connectClient(lb.port())));
    const answers = await Promise.all(clients.map((cl, i) => cl.request(`x${i}`)));
    const counts = { a: 0, b: 0, c: 0 } as Record<string, number>;
    for (const ans of answers) counts[backendOf(ans)]!++;
    expect(counts).toEqual({ a: 4, b: 4, c: 4 });
    expect(lb.listener().state.cur).toBe(12);
  });
});
