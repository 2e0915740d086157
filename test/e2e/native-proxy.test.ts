// The PROXY protocol on the native path (issue 37): a listener with accept_proxy and groups with
// send_proxy run the addon's accept, connect and splice. The addon peeks at the client's first bytes for
// the header parser (nothing consumed until the header is complete: what follows it stays in the socket
// and is spliced), and writes send_proxy's header to the backend before any byte of the client's.
// The protocol's own behaviour (versions, malformed headers, timeouts, hashing, counters, the real
// peers) is test/e2e/proxy-protocol.test.ts and proxy-protocol-peers.test.ts, which run this path too.

import { once } from 'node:events';
import net, { type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HOST, connectClient, refusedPort, sha256, sinkServer, track, until, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';
import { nativeAcceptSkipped } from '../helpers/native.ts';
import { ProxyHeaderParser, encodeV1, encodeV2 } from '../../src/proxy/proxy-protocol.ts';

afterEach(cleanup);

const NATIVE = 'native accept + connect + splice';

/** Splits a backend's bytes into the header lb wrote and what followed it. */
function header(bytes: Buffer) {
  const step = new ProxyHeaderParser().push(bytes);
  if (step.state !== 'done') throw new Error(`no PROXY header in ${JSON.stringify(bytes.subarray(0, 80).toString('latin1'))}`);
  return step;
}

/** A raw client from `localAddress` to `host:port`, errors kept. */
async function rawClient(port: number, host = HOST, localAddress = HOST): Promise<{ socket: Socket; error: () => string | null; ended: Promise<void> }> {
  const socket = net.connect({ host, port, localAddress, allowHalfOpen: true });
  track({ close: async () => void socket.destroy() });
  let error: string | null = null;
  socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
  socket.on('data', () => undefined);
  const ended = new Promise<void>((resolve) => socket.once('end', () => resolve()));
  await within(once(socket, 'connect'), 3000, `a connect to ${host}:${port}`);
  return { socket, error: () => error, ended };
}

/** A backend that keeps each connection's bytes and closes once the client's FIN came. */
const sink = () => sinkServer('be', { replyAfterEof: () => '' });

/** The `i`-th connection's bytes at a sink backend, once it has that connection and its FIN. */
async function receivedAt(be: Awaited<ReturnType<typeof sinkServer>>, i: number, what: string) {
  await until(() => be.received.length > i, 3000, `${what} to connect`);
  return within(be.received[i]!, 5000, `${what} to get everything`);
}


describe.skipIf(nativeAcceptSkipped)('the PROXY protocol on the native path', () => {
  it('accept_proxy + send_proxy: the header and 1 MiB in one write reach the backend whole, behind lb\'s own header', async () => {
    const be = await sink();
    const lb = await startLb(webDoc([{ send_proxy: 'v2', backends: [at(be.port)] }], { accept_proxy: true }));
    expect(lb.rt.snapshot().listeners[0]!.path).toBe(NATIVE);
    const payload = Buffer.alloc(1 << 20);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + (i >> 11)) & 0xff;
    const c = await rawClient(lb.port());
    // One write: the header and the client's first bytes come in the same segments, before lb looked.
    c.socket.write(Buffer.concat([encodeV1({ srcAddr: '203.0.113.7', srcPort: 5555, dstAddr: '192.0.2.1', dstPort: 443 }), payload]));
    c.socket.end();
    const got = await receivedAt(be, 0, 'the backend');
    const h = header(got.data);
    expect(h.header.addresses).toEqual({ srcAddr: '203.0.113.7', srcPort: 5555, dstAddr: '192.0.2.1', dstPort: 443 });
    expect(h.rest.length).toBe(payload.length);
    expect(sha256(h.rest)).toBe(sha256(payload));
    const line = await lb.logs.waitFor({ event: 'conn', client: '203.0.113.7:5555' });
    expect(Number(line.fields['sent'])).toBe(payload.length); // the client's bytes, not its header
  });

  it('send_proxy on a wildcard listener: the destination is the address the client connected to', async () => {
    const be = await sink();
    const lb = await startLb({ ...webDoc([{ send_proxy: 'v1', backends: [at(be.port)] }]), listeners: { web: { listen: '0.0.0.0:0', groups: [{ send_proxy: 'v1', backends: [at(be.port)] }] } } });
    expect(lb.rt.snapshot().listeners[0]!.path).toBe(NATIVE);
    const c = await rawClient(lb.port(), '127.0.0.2', '127.0.0.3');
    const srcPort = c.socket.localPort; // read while connected: a closed socket has none
    c.socket.end('hello');
    const got = await receivedAt(be, 0, 'the backend');
    const h = header(got.data);
    expect(h.header.addresses).toEqual({ srcAddr: '127.0.0.3', srcPort, dstAddr: '127.0.0.2', dstPort: lb.port() });
    expect(h.rest.toString()).toBe('hello');
  });

  it('send_proxy after a failed connect: the next backend gets one header, then the client\'s bytes', async () => {
    const dead = await refusedPort();
    const be = await sink();
    const lb = await startLb(webDoc([{ send_proxy: 'v1', backends: [at(dead), at(be.port)] }], { accept_proxy: true }));
    const c = await rawClient(lb.port());
    c.socket.end(`${encodeV1({ srcAddr: '198.51.100.4', srcPort: 4444, dstAddr: '192.0.2.9', dstPort: 25 }).toString('latin1')}EHLO x\r\n`);
    const got = await receivedAt(be, 0, 'the second backend');
    const h = header(got.data);
    expect(h.header.addresses?.srcAddr).toBe('198.51.100.4');
    expect(h.rest.toString()).toBe('EHLO x\r\n');
    await lb.logs.waitFor({ event: 'connect-failed' });
  });

  it('a rejected header: the client sees an orderly close (FIN, no reset), counted, nothing reaches a backend', async () => {
    const be = await sink();
    const lb = await startLb(webDoc([{ backends: [at(be.port)] }], { accept_proxy: true }));
    const c = await rawClient(lb.port());
    c.socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'); // not half-closed: only lb's close ends it
    await within(c.ended, 3000, "lb's FIN");
    c.socket.end();
    await within(once(c.socket, 'close'), 3000, 'the close');
    expect(c.error()).toBeNull();
    await until(() => lb.listener().state.proxyRejected === 1, 2000, 'the rejection to be counted');
    expect((await lb.logs.waitFor({ event: 'proxy-header-rejected' })).fields['reason']).toMatch(/wrong signature/);
    expect(be.received).toHaveLength(0);
  });

  it('a client that closes or resets before its header is complete is rejected with the reason the Node path gives', async () => {
    const be = await sink();
    const lb = await startLb(webDoc([{ backends: [at(be.port)] }], { accept_proxy: true }));
    const silent = await rawClient(lb.port());
    silent.socket.end();
    await lb.logs.waitFor({ event: 'proxy-header-rejected', reason: 'no PROXY header (nothing received)' });
    const partial = await rawClient(lb.port());
    partial.socket.end('PROXY TCP4 203.0.113.7 19');
    await lb.logs.waitFor({ event: 'proxy-header-rejected', reason: 'truncated PROXY header (25 bytes received)' });
    const reset = await rawClient(lb.port());
    await new Promise<void>((resolve) => reset.socket.write('PROXY TCP4 ', () => resolve()));
    await until(() => lb.listener().state.total === 3, 3000, 'the third client to be accepted');
    reset.socket.resetAndDestroy();
    await lb.logs.waitFor({ event: 'proxy-header-rejected', reason: 'connection closed before a complete PROXY header' });
    await until(() => lb.listener().state.proxyRejected === 3 && lb.listener().state.cur === 0, 3000, 'all three counted and gone');
    expect(be.received).toHaveLength(0);
  });

  it('a queued accept_proxy client keeps its header source and its bytes, and is served in turn', async () => {
    const be = await sink();
    const lb = await startLb(
      webDoc([{ send_proxy: 'v2', backends: [{ host: '127.0.0.1', port: be.port, maxc: 1 }] }], { accept_proxy: true, queue: { max: 5, timeout: '5s' } }),
    );
    const first = await rawClient(lb.port());
    first.socket.write(Buffer.concat([encodeV2({ srcAddr: '203.0.113.1', srcPort: 1001, dstAddr: '192.0.2.1', dstPort: 80 }), Buffer.from('first')]));
    await until(() => be.received.length === 1, 3000, 'the first client at the backend');
    const second = await connectClient(lb.port());
    second.socket.write(Buffer.concat([encodeV2({ srcAddr: '203.0.113.2', srcPort: 1002, dstAddr: '192.0.2.1', dstPort: 80 }), Buffer.from('second')]));
    await until(() => lb.listener().state.queued === 1, 3000, 'the second client to queue');
    first.socket.end();
    second.socket.end();
    const a = await receivedAt(be, 0, 'the first client');
    const b = await receivedAt(be, 1, 'the second client');
    expect(header(a.data).rest.toString()).toBe('first');
    const h = header(b.data);
    expect(h.header.addresses).toEqual({ srcAddr: '203.0.113.2', srcPort: 1002, dstAddr: '192.0.2.1', dstPort: 80 });
    expect(h.rest.toString()).toBe('second');
  });

  it('at maxconn the listener pauses like any native one: the next client waits in the backlog, none is refused', async () => {
    // On the Node path such a listener could not pause: the client beyond the limit was closed at once.
    const be = await sink();
    const lb = await startLb(webDoc([{ send_proxy: 'v1', backends: [at(be.port)] }], { accept_proxy: true }, { maxconn: 1 }));
    expect(lb.rt.snapshot().listeners[0]!.path).toBe(NATIVE);
    const first = await rawClient(lb.port());
    first.socket.write(`${encodeV1({ srcAddr: '203.0.113.1', srcPort: 1, dstAddr: '192.0.2.1', dstPort: 80 }).toString('latin1')}one`);
    await until(() => be.received.length === 1, 3000, 'the first client at the backend');
    const second = await rawClient(lb.port()); // its handshake completes in the kernel's backlog
    second.socket.end(`${encodeV1({ srcAddr: '203.0.113.2', srcPort: 2, dstAddr: '192.0.2.1', dstPort: 80 }).toString('latin1')}two`);
    await until(() => (lb.rt.snapshot().conns.reached ?? 0) >= 1, 3000, 'lb to reach maxconn');
    expect(lb.rt.snapshot().conns).toMatchObject({ cur: 1, refused: 0 });
    expect(be.received).toHaveLength(1);
    first.socket.end();
    const got = await receivedAt(be, 1, 'the second client');
    expect(header(got.data).header.addresses?.srcAddr).toBe('203.0.113.2');
    expect(header(got.data).rest.toString()).toBe('two');
    expect(second.error()).toBeNull();
    expect(lb.rt.snapshot().conns.refused).toBe(0);
  });

  it('a header then a reset at once (a proxy in front whose client gave up) is a reset, not a bad header', async () => {
    // Seen behind haproxy: it connects, sends its header and resets when its own client leaves. The bytes
    // are in lb's socket before the reset, as a read on the Node path found them: they are looked at first.
    const be = await sink();
    const lb = await startLb(webDoc([{ send_proxy: 'v1', backends: [at(be.port)] }], { accept_proxy: true }));
    const N = 20;
    for (let i = 0; i < N; i++) {
      const c = await rawClient(lb.port());
      await new Promise<void>((resolve) => c.socket.write(encodeV2({ srcAddr: '203.0.113.5', srcPort: 1000 + i, dstAddr: '192.0.2.1', dstPort: 80 }), () => resolve()));
      c.socket.resetAndDestroy();
    }
    const st = lb.listener().state;
    await until(() => st.total === N && st.cur === 0, 5000, `every client to be taken and gone (total ${st.total}, cur ${st.cur})`);
    expect(st.proxyRejected).toBe(0);
    expect(lb.logs.all({ event: 'proxy-header-rejected' })).toHaveLength(0);
  });

  it('a reload that turns accept_proxy on and off keeps the listening socket and reads headers from then on', async () => {
    const be = await sink();
    const doc = (acceptProxy: boolean) => {
      const d = webDoc([{ backends: [at(be.port)] }], acceptProxy ? { accept_proxy: true } : {});
      (d['listeners'] as Record<string, Record<string, unknown>>)['web']!['listen'] = `127.0.0.1:${port}`;
      return d;
    };
    let port = 0;
    const lb = await startLb(webDoc([{ backends: [at(be.port)] }]));
    port = lb.port();
    const send = async (bytes: Buffer | string, i: number): Promise<Buffer> => {
      const c = await rawClient(port);
      c.socket.end(bytes);
      return (await receivedAt(be, i, `client ${i}`)).data;
    };
    expect((await send('plain', 0)).toString()).toBe('plain');
    await lb.apply(doc(true));
    expect(lb.port()).toBe(port);
    expect(lb.rt.snapshot().listeners[0]!.path).toBe(NATIVE);
    expect((await send(`${encodeV1({ srcAddr: '203.0.113.3', srcPort: 3, dstAddr: '192.0.2.1', dstPort: 80 }).toString('latin1')}proxied`, 1)).toString()).toBe('proxied');
    await lb.logs.waitFor({ event: 'conn', client: '203.0.113.3:3' });
    await lb.apply(doc(false));
    expect((await send('plain again', 2)).toString()).toBe('plain again');
    expect(lb.listener().state.proxyRejected).toBe(0);
  });
});
