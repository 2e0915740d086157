// maxc through a real lb: a backend at its connection limit overflows to the next backend of the group,
// then to the next group; a slot freed by a finished connection is used again.

import { afterEach, describe, expect, it } from 'vitest';
import { backendOf, connectClient, echoServer, type TestClient } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(cleanup);

describe('maxc overflow', () => {
  it('full backend → next backend → next group, and back when a slot frees', async () => {
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => echoServer(n, { prefix: true })));
    const lb = await startLb(
      webDoc([
        { policy: 'rr', backends: [{ host: '127.0.0.1', port: a!.port, maxc: 1 }, { host: '127.0.0.1', port: b!.port, maxc: 1 }] },
        { policy: 'rr', backends: [at(c!.port)] },
      ]),
    );
    const open: TestClient[] = [];
    const where: string[] = [];
    for (let i = 0; i < 4; i++) {
      const cl = await connectClient(lb.port());
      open.push(cl);
      where.push(backendOf(await cl.request(`hold ${i}`))); // each stays connected
    }
    expect(where).toEqual(['a', 'b', 'c', 'c']);
    const [sa, sb] = lb.listener().state.groups[0]!.backends;
    expect([sa!.cur, sb!.cur, lb.listener().state.groups[1]!.backends[0]!.cur]).toEqual([1, 1, 2]);

    // a's client leaves: once lb has seen it, a has a free slot again and group 0 is preferred.
    const mark = lb.logs.mark();
    await open[0]!.close();
    await lb.logs.waitFor({ event: 'conn', backend: at(a!.port) }, { from: mark });
    expect(sa!.cur).toBe(0);
    const next = await connectClient(lb.port());
    expect(backendOf(await next.request('again'))).toBe('a');
    const more = await connectClient(lb.port());
    expect(backendOf(await more.request('more'))).toBe('c');
    // The access log names the group each connection went to.
    await more.close();
    const line = await lb.logs.waitFor({ event: 'conn', backend: at(c!.port) }, { from: mark });
    expect(line.fields.group).toBe('1');
  });
});
