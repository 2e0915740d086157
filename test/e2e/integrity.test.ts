// Byte-exact relaying: 1 MiB of random bytes each way at the same time through lb, checked by sha256,
// and the byte counters agree with what was sent.

import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { connectClient, sha256, sinkServer, until, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(cleanup);

const MiB = 1 << 20;

describe('integrity', () => {
  it('1 MiB each way, concurrently, arrives byte-exact', async () => {
    const down = randomBytes(MiB); // backend → client
    const up = randomBytes(MiB); // client → backend
    const backend = await sinkServer('sink', { send: down, keep: false });
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }]));
    const c = await connectClient(lb.port());
    // Written in uneven pieces so chunk boundaries through lb differ from the writer's.
    for (let off = 0; off < up.length; ) {
      const n = Math.min(up.length - off, 1 + ((off * 7919) % 60_000));
      c.socket.write(up.subarray(off, off + n));
      off += n;
    }
    c.socket.end();
    await until(() => backend.received.length === 1, 3000, 'the backend connection');
    const atBackend = await within(backend.received[0]!, 10_000, 'the upload to reach the backend');
    await within(c.ended, 10_000, 'the download to reach the client');
    expect(atBackend.bytes).toBe(MiB);
    expect(atBackend.sha256).toBe(sha256(up));
    expect(c.received().length).toBe(MiB);
    expect(sha256(c.received())).toBe(sha256(down));

    const conn = await lb.logs.waitFor('conn');
    expect(conn.fields).toMatchObject({ sent: String(MiB), rcvd: String(MiB) });
    const st = lb.listener().state;
    expect([st.sent(), st.rcvd()]).toEqual([MiB, MiB]);
    expect([st.groups[0]!.backends[0]!.sent(), st.groups[0]!.backends[0]!.rcvd()]).toEqual([MiB, MiB]);
  });

  it('several concurrent connections do not mix their bytes', async () => {
    const payloads = Array.from({ length: 4 }, () => randomBytes(256 * 1024));
    const backend = await sinkServer('sink', { replyAfterEof: (req) => req });
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }]));
    const clients = await Promise.all(payloads.map(() => connectClient(lb.port())));
    clients.forEach((c, i) => c.socket.end(payloads[i]));
    await Promise.all(clients.map((c, i) => within(c.ended, 10_000, `client ${i} to get its bytes back`)));
    clients.forEach((c, i) => expect(sha256(c.received())).toBe(sha256(payloads[i]!)));
  });
});
