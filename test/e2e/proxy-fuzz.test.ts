// Generated PROXY headers against a running lb (accept_proxy + send_proxy): valid v1 and v2 headers,
// the same with bytes flipped, cut short, and random bytes, each sent in random pieces then a FIN. The
// pure parser, given each input whole, says what lb must do with it: a complete header → the backend
// gets lb's own header and exactly the bytes after the client's; anything else → closed, counted,
// nothing passed on. Runs the native path where the addon accepts (the addon peeks, the parser is fed
// each byte once), else Node's; CI runs it on both (.ci/run). A fixed seed: a failure replays.

import { once } from 'node:events';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HOST, sinkServer, until, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';
import { ProxyHeaderParser, encodeV1, encodeV2 } from '../../src/proxy/proxy-protocol.ts';
import { prng } from '../../bench/lib/prng.ts';

afterEach(cleanup);

function generate(rand: () => number, i: number): Buffer {
  const int = (n: number): number => Math.floor(rand() * n);
  const ip4 = (): string => `${int(256)}.${int(256)}.${int(256)}.${int(256)}`;
  const ip6 = (): string => `2001:db8:${int(65536).toString(16)}::${int(65536).toString(16)}`;
  const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256)));
  const v6 = rand() < 0.3;
  const addrs = { srcAddr: v6 ? ip6() : ip4(), srcPort: int(65536), dstAddr: v6 ? ip6() : ip4(), dstPort: int(65536) };
  const header = rand() < 0.5 ? encodeV1(addrs) : encodeV2(rand() < 0.1 ? null : addrs);
  const payload = Buffer.concat([Buffer.from(`#${i}#`), bytes(int(300))]);
  switch (int(5)) {
    case 0:
    case 1:
      return Buffer.concat([header, payload]);
    case 2: {
      const h = Buffer.from(header);
      for (let k = 1 + int(3); k > 0; k--) h[int(h.length)] = int(256);
      return Buffer.concat([h, payload]);
    }
    case 3:
      return header.subarray(0, int(header.length)); // cut short (maybe nothing at all)
    default:
      return bytes(1 + int(300));
  }
}

/** Sends `input` in 1-5 pieces, then a FIN; resolves when lb closed the connection (or reset it). */
async function send(port: number, input: Buffer, rand: () => number): Promise<void> {
  const socket = net.connect({ host: HOST, port, allowHalfOpen: true });
  socket.on('error', () => undefined);
  socket.on('data', () => undefined);
  // A rejected client may be reset by lb's close (its later pieces arrive unread): an error, then 'close'.
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.on('end', () => socket.end());
  await within(once(socket, 'connect'), 3000, 'a connect');
  const cuts = Array.from({ length: Math.floor(rand() * 5) }, () => Math.floor(rand() * (input.length + 1))).sort((a, b) => a - b);
  let from = 0;
  for (const cut of [...cuts, input.length]) {
    if (socket.destroyed) break;
    if (cut > from) socket.write(input.subarray(from, cut));
    from = Math.max(from, cut);
    await new Promise((r) => setImmediate(r));
  }
  if (!socket.destroyed) socket.end();
  await within(closed, 5000, 'lb to close the connection');
}

describe('PROXY headers, generated, against a running lb', () => {
  it('300 inputs in random pieces: each complete header passes exactly its trailing bytes on; every other input is closed and counted', async () => {
    const be = await sinkServer('be', { replyAfterEof: () => '' });
    const lb = await startLb(webDoc([{ send_proxy: 'v1', backends: [at(be.port)] }], { accept_proxy: true, accept_proxy_timeout: '2s' }));
    const rand = prng(0x5eed37);
    const inputs = Array.from({ length: 300 }, (_, i) => generate(rand, i));
    const expected = inputs.map((input) => new ProxyHeaderParser().push(input));
    const rests = expected.flatMap((s) => (s.state === 'done' ? [s.rest.toString('latin1')] : []));
    const rejected = expected.length - rests.length;
    expect(rests.length).toBeGreaterThan(50); // the generator makes both kinds
    expect(rejected).toBeGreaterThan(50);
    // Ten at a time, each in its own pieces.
    for (let i = 0; i < inputs.length; i += 10) {
      await Promise.all(inputs.slice(i, i + 10).map((input) => send(lb.port(), input, rand)));
    }
    const st = lb.listener().state;
    await until(() => st.cur === 0 && be.received.length === rests.length, 5000, `every connection to end (cur ${st.cur}, at the backend ${be.received.length} of ${rests.length})`);
    const got = await Promise.all(be.received.map((r) => within(r, 3000, 'a backend connection')));
    const passed = got.map((r) => {
      const step = new ProxyHeaderParser().push(r.data);
      if (step.state !== 'done') throw new Error(`the backend got no header of lb's: ${r.data.subarray(0, 60).toString('latin1')}`);
      return step.rest.toString('latin1');
    });
    expect(passed.sort()).toEqual(rests.sort());
    expect(st.proxyRejected).toBe(rejected);
    expect(lb.logs.all({ event: 'proxy-header-rejected' })).toHaveLength(rejected);
  });
});
