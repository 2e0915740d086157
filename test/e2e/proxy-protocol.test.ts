// The PROXY protocol on real sockets: accept_proxy reads the client's header before choosing a backend
// (its source is the client for hashing, logs and send_proxy), send_proxy writes one before any client
// byte (JS relay and splice), check_send_proxy makes health checks pass a backend that demands one, and
// malformed headers are closed and counted without holding up the listener.

import { once } from 'node:events';
import net, { type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HOST, connectClient, sha256, track, until, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc, type InProcessLb } from '../helpers/lb.ts';
import { renderStatCsv } from '../../src/stats/render.ts';
import { ProxyHeaderParser, encodeV1, encodeV2, type ProxyHeader } from '../../src/proxy/proxy-protocol.ts';

afterEach(cleanup);

/** A backend that records every connection's bytes, and (with `echo`) echoes what follows a first line. */
interface Recorder {
  readonly port: number;
  readonly conns: { bytes: Buffer; ended: boolean; socket: Socket }[];
  /** Resolves with the `n`-th connection's bytes once `cond` holds for them. */
  waitFor(n: number, cond: (b: Buffer) => boolean, what: string, ms?: number): Promise<Buffer>;
  close(): Promise<void>;
}

async function recorder(opts: { replyAfter?: (bytes: Buffer) => string | null } = {}): Promise<Recorder> {
  const conns: Recorder['conns'] = [];
  const waiters = new Set<() => void>();
  const sockets = new Set<Socket>();
  const server: Server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    const c = { bytes: Buffer.alloc(0), ended: false, socket };
    conns.push(c);
    let replied = false;
    socket.on('data', (d: Buffer) => {
      c.bytes = Buffer.concat([c.bytes, d]);
      const reply = !replied && opts.replyAfter ? opts.replyAfter(c.bytes) : null;
      if (reply !== null) {
        replied = true;
        socket.end(reply);
      }
      for (const w of [...waiters]) w();
    });
    socket.on('end', () => {
      c.ended = true;
      if (!replied) socket.end();
      for (const w of [...waiters]) w();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  server.listen(0, HOST);
  await within(once(server, 'listening'), 3000, 'the recorder to listen');
  const port = (server.address() as AddressInfo).port;
  return track<Recorder>({
    port,
    conns,
    waitFor(n, cond, what, ms = 3000) {
      let check = (): void => undefined;
      const p = new Promise<Buffer>((resolve) => {
        check = (): void => {
          const c = conns[n];
          if (c && cond(c.bytes)) resolve(c.bytes);
        };
        waiters.add(check);
        check();
      });
      return within(p, ms, what).finally(() => waiters.delete(check));
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
}

/** Connects from `localAddress` (any of 127.0.0.0/8), sends `data`, half-closes; resolves with the socket's local port. */
async function sendFrom(port: number, data: Buffer | string, localAddress = HOST): Promise<{ localPort: number; closed: Promise<void> }> {
  const socket = net.connect({ host: HOST, port, localAddress, allowHalfOpen: true });
  track({ close: async () => void socket.destroy() });
  await within(once(socket, 'connect'), 3000, `a connect from ${localAddress}`);
  socket.on('error', () => undefined);
  socket.on('data', () => undefined);
  const closed = within(once(socket, 'close').then(() => undefined), 5000, 'the client socket to close');
  socket.end(data);
  return { localPort: socket.localPort!, closed };
}

function parseHeader(bytes: Buffer): { header: ProxyHeader; rest: Buffer } {
  const step = new ProxyHeaderParser().push(bytes);
  if (step.state !== 'done') throw new Error(`no PROXY header in ${JSON.stringify(bytes.subarray(0, 64).toString('latin1'))}: ${JSON.stringify(step)}`);
  return step;
}

const v1 = (src: string, sport: number, dst = '192.0.2.1', dport = 443): string => `PROXY TCP4 ${src} ${dst} ${sport} ${dport}\r\n`;

describe('accept_proxy', () => {
  it("reads a v1 or v2 header, uses its source as the client, and passes only the client's bytes on", async () => {
    const be = await recorder();
    const lb = await startLb(webDoc([{ backends: [at(be.port)] }], { accept_proxy: true }));
    await sendFrom(lb.port(), `${v1('203.0.113.7', 5555)}hello`);
    expect((await be.waitFor(0, (b) => b.toString() === 'hello', 'hello at the backend')).toString()).toBe('hello');
    const v2 = encodeV2({ srcAddr: '2001:db8::7', srcPort: 6666, dstAddr: '2001:db8::1', dstPort: 443 });
    await sendFrom(lb.port(), Buffer.concat([v2, Buffer.from('world')]));
    expect((await be.waitFor(1, (b) => b.toString() === 'world', 'world at the backend')).toString()).toBe('world');
    await lb.logs.waitFor({ event: 'conn', client: '203.0.113.7:5555' });
    await lb.logs.waitFor({ event: 'conn', client: '[2001:db8::7]:6666' });
  });

  it('a header split over many writes, then data in a later write', async () => {
    const be = await recorder();
    const lb = await startLb(webDoc([{ backends: [at(be.port)] }], { accept_proxy: true }));
    const socket = net.connect({ host: HOST, port: lb.port(), allowHalfOpen: true });
    track({ close: async () => void socket.destroy() });
    socket.on('error', () => undefined);
    await within(once(socket, 'connect'), 3000, 'connect');
    const header = encodeV2({ srcAddr: '198.51.100.9', srcPort: 4000, dstAddr: '192.0.2.1', dstPort: 25 });
    for (let i = 0; i < header.length; i += 5) {
      socket.write(header.subarray(i, i + 5));
      await new Promise((r) => setImmediate(r));
    }
    socket.end('after');
    expect((await be.waitFor(0, (b) => b.toString() === 'after', 'the bytes after the header')).toString()).toBe('after');
    await lb.logs.waitFor({ event: 'conn', client: '198.51.100.9:4000' });
  });

  it('hashes by the header source, not the connection source', async () => {
    const a = await recorder();
    const b = await recorder();
    const lb = await startLb(webDoc([{ policy: 'hash', backends: [at(a.port), at(b.port)] }], { accept_proxy: true }));
    const sources = Array.from({ length: 16 }, (_, i) => `198.51.100.${i + 1}`);
    const total = (): number => a.conns.length + b.conns.length;
    /** Which backend the next connection with this header source reaches: 0 (a) or 1 (b). */
    const route = async (src: string, sport: number): Promise<number> => {
      const [na, n] = [a.conns.length, total()];
      await sendFrom(lb.port(), `${v1(src, sport)}x`);
      await until(() => total() > n, 3000, 'the connection to reach a backend');
      return a.conns.length > na ? 0 : 1;
    };
    for (const src of sources) {
      const first = await route(src, 1000);
      expect(await route(src, 2000), `header source ${src} goes to the same backend again`).toBe(first);
    }
    // Every connection came from 127.0.0.1: only hashing by the header's source spreads them.
    expect(a.conns.length).toBeGreaterThan(0);
    expect(b.conns.length).toBeGreaterThan(0);
  });

  it.each([
    ['truncated (FIN in the middle of a v1 line)', Buffer.from('PROXY TCP4 203.0.113.7 19'), /truncated PROXY header \(25 bytes received\)/],
    ['truncated (FIN in the middle of a v2 address block)', encodeV2({ srcAddr: '203.0.113.7', srcPort: 1, dstAddr: '192.0.2.1', dstPort: 2 }).subarray(0, 20), /truncated/],
    ['oversized (no CRLF within 107 bytes)', Buffer.from(`PROXY UNKNOWN ${'f'.repeat(150)}\r\n`), /no CRLF within 107/],
    ['a wrong signature (plain HTTP)', Buffer.from('GET / HTTP/1.0\r\n\r\n'), /wrong signature/],
    ['a wrong v2 signature', Buffer.from('0d0a0d0a000d0a515549540b2111000c', 'hex'), /wrong v2 signature/],
    ['a wrong family', Buffer.from('0d0a0d0a000d0a515549540a2141000c', 'hex'), /unknown address family 4/],
    ['a v1 line without CRLF', Buffer.from('PROXY TCP4 203.0.113.7 192.0.2.1 1 2\nhello'), /bare LF/],
    ['an oversized v2 declared length', Buffer.from('0d0a0d0a000d0a515549540a2111ffff', 'hex'), /above the 2048-byte limit/],
  ])('closes and counts %s, and the listener goes on', async (_what, bad, why) => {
    const be = await recorder();
    const lb = await startLb(webDoc([{ backends: [at(be.port)] }], { accept_proxy: true }));
    const { closed } = await sendFrom(lb.port(), bad);
    await closed;
    const line = await lb.logs.waitFor({ event: 'proxy-header-rejected' });
    expect(line.fields['reason']).toMatch(why);
    expect(line.fields['code']).toBe('LB_PROXY_HEADER');
    await lb.logs.waitFor({ event: 'conn', end: 'bad-proxy-header' });
    await until(() => lb.listener().state.proxyRejected === 1, 2000, 'the rejection to be counted');
    // Nothing reached a backend, and the next (valid) client is served.
    await sendFrom(lb.port(), `${v1('203.0.113.8', 7)}ok`);
    expect((await be.waitFor(0, (b) => b.toString() === 'ok', 'the valid client at the backend')).toString()).toBe('ok');
    expect(be.conns).toHaveLength(1);
    expect(lb.listener().state.proxyRejected).toBe(1);
  });

  it('closes and counts a client that sends nothing within accept_proxy_timeout, without holding up others', async () => {
    const be = await recorder();
    const lb = await startLb(webDoc([{ backends: [at(be.port)] }], { accept_proxy: true, accept_proxy_timeout: '300ms' }));
    const silent = await connectClient(lb.port());
    const partial = await connectClient(lb.port());
    partial.socket.write('PROXY TCP4 1.2');
    // Meanwhile a valid client goes through at once.
    await sendFrom(lb.port(), `${v1('203.0.113.9', 9)}fast`);
    await be.waitFor(0, (b) => b.toString() === 'fast', 'the valid client', 250);
    const t0 = Date.now();
    // lb closes them (their FIN arrives: these clients keep their own side open).
    await within(silent.ended, 2000, 'the silent client to be closed');
    await within(partial.ended, 2000, 'the slow client to be closed');
    expect(Date.now() - t0).toBeLessThan(1500);
    await until(() => lb.listener().state.proxyRejected === 2, 2000, 'both to be counted');
    await lb.logs.waitFor({ event: 'proxy-header-rejected' }, { count: 2 });
    const reasons = lb.logs.all({ event: 'proxy-header-rejected' }).map((l) => l.fields['reason']);
    expect(reasons.sort()).toEqual([
      'no PROXY header (nothing received) within accept_proxy_timeout (300 ms)',
      'truncated PROXY header (14 bytes received) within accept_proxy_timeout (300 ms)',
    ]);
  });

  for (const splice of ['auto', 'off'] as const) {
    it(`a client that resets right after its header never leaves a relay behind (splice ${splice})`, async () => {
      // Seen behind haproxy, which resets its server side when its own client leaves early: the reset came
      // while lb was connecting to the backend, and a connect completing in the same poll as the reset
      // started a relay for a client already gone; it held its slot and the backend connection for good.
      // The backend answers at once and closes (as nginx's `return` does), so the connect completes fast.
      const be = await recorder({ replyAfter: () => 'answer\n' });
      const lb = await startLb(
        webDoc([{ send_proxy: 'v1', backends: [at(be.port)] }], { accept_proxy: true }, { workers: 1, splice }),
      );
      const state = lb.listener().state;
      const header = encodeV2({ srcAddr: '198.51.100.20', srcPort: 4000, dstAddr: '192.0.2.1', dstPort: 80 });
      const N = 60;
      for (let i = 0; i < N; i++) {
        const socket = net.connect({ host: HOST, port: lb.port() });
        socket.on('error', () => undefined);
        await within(once(socket, 'connect'), 3000, `client ${i} to connect`);
        // The header and then, as soon as it left, a reset: the reset reaches lb while it connects.
        await new Promise<void>((resolve) => socket.write(header, () => resolve()));
        await new Promise((r) => setImmediate(r));
        socket.resetAndDestroy();
      }
      await until(() => state.total === N, 5000, `lb to take all ${N} clients (${state.total})`);
      const be0 = state.groups[0]!.backends[0]!;
      await until(
        () => state.cur === 0 && be0.cur === 0,
        5000,
        `every relay to end (listener cur ${state.cur}, backend cur ${be0.cur})`,
      );
      await until(() => be.conns.every((c) => c.socket.closed), 5000, 'the backend to see every connection closed');
    });
  }

  it('show stat and show json carry the count', async () => {
    const be = await recorder();
    const lb = await startLb(webDoc([{ backends: [at(be.port)] }], { accept_proxy: true }));
    await (await sendFrom(lb.port(), 'nope\r\n')).closed;
    await until(() => lb.listener().state.proxyRejected === 1, 2000, 'the rejection to be counted');
    const snap = lb.rt.snapshot();
    expect(snap.listeners[0]!.proxyRejected).toBe(1);
    const csv = renderStatCsv(snap).split('\n');
    const cols = csv[0]!.slice(2).split(',');
    const fe = csv.find((l) => l.startsWith('web,FRONTEND,'))!.split(',');
    expect(fe[cols.indexOf('lb_proxy_rejected')]).toBe('1');
  });
});

describe('send_proxy', () => {
  for (const splice of ['off', 'auto'] as const) {
    it(`writes a v1 or v2 header with the client's real address before its bytes (splice ${splice})`, async () => {
      const be1 = await recorder();
      const be2 = await recorder();
      const lb = await startLb(
        webDoc([{ send_proxy: 'v1', backends: [at(be1.port), { host: '127.0.0.1', port: be2.port, send_proxy: 'v2' }] }], {}, { splice }),
      );
      // (CI builds the addon; LB_SPLICE=off turns it off for a whole run.)
      if (process.env['LB_SPLICE'] !== 'off') expect(lb.rt.snapshot().splice).toMatch(splice === 'auto' ? /^on/ : /^off/);
      const payload = Buffer.alloc(256 * 1024, 7);
      payload.write('first bytes');
      const sent: { from: string; port: number }[] = [];
      for (const from of ['127.0.0.2', '127.0.0.3']) {
        const { localPort, closed } = await sendFrom(lb.port(), payload, from);
        sent.push({ from, port: localPort });
        await closed;
      }
      const seen = [await be1.waitFor(0, (b) => b.length > payload.length, 'backend 1'), await be2.waitFor(0, (b) => b.length > payload.length, 'backend 2')];
      const [h1, h2] = seen.map(parseHeader);
      expect(h1!.header.version).toBe('v1');
      expect(h2!.header.version).toBe('v2');
      expect(h1!.header.addresses).toEqual({ srcAddr: '127.0.0.2', srcPort: sent[0]!.port, dstAddr: '127.0.0.1', dstPort: lb.port() });
      expect(h2!.header.addresses).toEqual({ srcAddr: '127.0.0.3', srcPort: sent[1]!.port, dstAddr: '127.0.0.1', dstPort: lb.port() });
      expect(sha256(h1!.rest)).toBe(sha256(payload));
      expect(sha256(h2!.rest)).toBe(sha256(payload));
    });
  }

  it('forwards the accepted header source (and its destination), and a backend may turn it off', async () => {
    const withHeader = await recorder();
    const without = await recorder();
    const lb = await startLb(
      webDoc(
        [{ send_proxy: 'v2', backends: [at(withHeader.port), { host: '127.0.0.1', port: without.port, send_proxy: 'off' }] }],
        { accept_proxy: true },
      ),
    );
    // Round robin sends one client to each backend, whichever goes first.
    await sendFrom(lb.port(), `${v1('203.0.113.7', 5555, '192.0.2.44', 993)}from 203.0.113.7`);
    await sendFrom(lb.port(), `${v1('203.0.113.8', 5556, '192.0.2.44', 993)}from 203.0.113.8`);
    const got = parseHeader(await withHeader.waitFor(0, (b) => b.includes('from 203.0.113.'), 'the v2 header and bytes'));
    const src = got.rest.toString().slice('from '.length);
    expect(got.header.version).toBe('v2');
    expect(got.header.addresses).toEqual({ srcAddr: src, srcPort: src.endsWith('.7') ? 5555 : 5556, dstAddr: '192.0.2.44', dstPort: 993 });
    // send_proxy = "off" on this backend: the client's own header is never passed on either.
    const plain = (await without.waitFor(0, (b) => b.includes('from 203.0.113.'), 'plain bytes')).toString();
    expect(plain).toMatch(/^from 203\.0\.113\.[78]$/);
    expect(plain).not.toBe(got.rest.toString());
  });

  it('writes the header before bytes a queued client sent while waiting', async () => {
    const be = await recorder();
    const lb = await startLb(
      webDoc([{ send_proxy: 'v1', backends: [{ host: '127.0.0.1', port: be.port, maxc: 1 }] }], { queue: { max: 5, timeout: '5s' } }),
    );
    const first = await connectClient(lb.port());
    first.socket.write('first');
    await be.waitFor(0, (b) => b.toString().endsWith('first'), 'the first client');
    const second = await connectClient(lb.port());
    second.socket.write('queued bytes');
    await until(() => lb.listener().state.queued === 1, 2000, 'the second client to queue');
    await first.close();
    const bytes = await be.waitFor(1, (b) => b.toString().endsWith('queued bytes'), 'the queued client');
    const h = parseHeader(bytes);
    expect(h.header.addresses?.srcPort).toBe(second.socket.localPort);
    expect(h.rest.toString()).toBe('queued bytes');
  });
});

describe('check_send_proxy', () => {
  /** Answers "+OK" only to a connection that starts with a valid PROXY header; closes others at once. */
  async function strictBackend(): Promise<Recorder> {
    return recorder({
      replyAfter: (bytes) => {
        const step = new ProxyHeaderParser().push(bytes);
        if (step.state === 'error') return '-ERR no PROXY header\r\n';
        return step.state === 'done' && step.rest.toString().includes('PING') ? '+OK\r\n' : null;
      },
    });
  }

  async function checkedLb(backendPort: number, group: Record<string, unknown>): Promise<InProcessLb> {
    return startLb(
      webDoc([{ ...group, health: { interval: '100ms', timeout: '500ms', rise: 1, fall: 1, send: 'PING\r\n', expect: '+OK' }, backends: [at(backendPort)] }]),
    );
  }

  it('health checks start with a header (v1 with their own addresses, v2 LOCAL), so a strict backend is up', async () => {
    for (const version of ['v1', 'v2'] as const) {
      const be = await strictBackend();
      const lb = await checkedLb(be.port, { send_proxy: version });
      const st = lb.listener().state.groups[0]!.backends[0]!;
      await until(() => st.check.lastStatus === 'L7OK', 3000, 'a passed check');
      expect(st.checkUp).toBe(true);
      const h = parseHeader(be.conns[0]!.bytes);
      if (version === 'v1') {
        expect(h.header.addresses?.srcAddr).toBe('127.0.0.1');
        expect(h.header.addresses?.dstPort).toBe(be.port);
      } else {
        expect(h.header.addresses).toBeNull(); // LOCAL: the receiver keeps the real addresses
      }
      expect(h.rest.toString()).toBe('PING\r\n');
      await lb.stop();
    }
  });

  it('check_send_proxy = false: the same backend fails its checks', async () => {
    const be = await strictBackend();
    const lb = await checkedLb(be.port, { send_proxy: 'v1', check_send_proxy: false });
    const down = await lb.logs.waitFor({ event: 'health', to: 'DOWN' }, { ms: 3000 });
    expect(down.fields['status']).toBe('L7RSP');
  });
});
