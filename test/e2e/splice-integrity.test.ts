// Bytes through the splice relay arrive intact, both ways at once, and the relay's counters agree with
// what the peers counted — read live, while the transfer runs, not only at the end.

import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net, { type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { closeAllBackends, connected, HOST, track, within } from '../helpers/backends.ts';
import { spliceHarness, spliceSkipped, spliceTitleNote } from './splice-harness.ts';

afterEach(closeAllBackends);

const POOL = randomBytes(4 << 20);

/** Chunk sizes from 1 byte to 256 KiB, in an order that depends on the stream (xorshift). */
function chunkSizes(seed: number): () => number {
  let x = seed || 1;
  const sizes = [1, 7, 512, 1460, 4096, 16_384, 65_536, 100_003, 262_144];
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return sizes[(x >>> 0) % sizes.length]!;
  };
}

interface Sender {
  /** Bytes handed to the socket so far. */
  written: number;
  done: Promise<string>; // sha256 of what was sent
}

/** Writes `total` bytes of POOL slices in mixed chunk sizes, with backpressure, then ends the socket. */
function send(socket: Socket, total: number, seed: number): Sender {
  const hash = createHash('sha256');
  const next = chunkSizes(seed);
  const s: Sender = { written: 0, done: Promise.resolve('') };
  s.done = (async () => {
    let off = seed * 4099;
    // Bounded: every pass writes at least one byte of a finite total.
    while (s.written < total) {
      const n = Math.min(next(), total - s.written);
      off = (off + 9973) % (POOL.length - n);
      const chunk = POOL.subarray(off, off + n);
      hash.update(chunk);
      s.written += n;
      if (!socket.write(chunk)) await within(once(socket, 'drain'), 10_000, 'drain');
    }
    socket.end();
    return hash.digest('hex');
  })();
  return s;
}

interface Receiver {
  bytes: number;
  done: Promise<string>;
}

function receive(socket: Socket): Receiver {
  const hash = createHash('sha256');
  const r: Receiver = { bytes: 0, done: Promise.resolve('') };
  r.done = new Promise((resolve, reject) => {
    socket.on('data', (c: Buffer) => {
      r.bytes += c.length;
      hash.update(c);
    });
    socket.on('end', () => resolve(hash.digest('hex')));
    socket.on('error', reject);
  });
  return r;
}

describe.skipIf(spliceSkipped)(`splice relay: integrity and counters${spliceTitleNote}`, () => {
  it('relays 1 GiB over 4 concurrent streams, both ways at once, with sha256 equal on each side', { timeout: 60_000 }, async () => {
    const STREAMS = 4;
    const EACH = 128 << 20; // per stream and direction: 4 x 2 x 128 MiB = 1 GiB through the relay
    const atBackend: { rx: Receiver; tx: Sender }[] = [];
    const backend = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => undefined);
      atBackend.push({ rx: receive(s), tx: send(s, EACH, 1000 + atBackend.length) });
    });
    backend.listen(0, HOST);
    await once(backend, 'listening');
    track({ close: () => new Promise<void>((r) => backend.close(() => r())) });
    const relay = await spliceHarness((backend.address() as net.AddressInfo).port);

    const clients: { rx: Receiver; tx: Sender }[] = [];
    for (let i = 0; i < STREAMS; i++) {
      const c = net.connect({ host: HOST, port: relay.port, allowHalfOpen: true });
      track({ close: async () => void c.destroy() });
      await connected(c, 3000, `client ${i}`);
      clients.push({ rx: receive(c), tx: send(c, EACH, i + 1) });
    }
    const all = Promise.all([...clients, ...atBackend].flatMap((p) => [p.rx.done, p.tx.done]));
    await within(relay.waitEnds(STREAMS, 55_000), 56_000, 'every stream to end');
    await within(all, 5000, 'every peer to finish');

    expect(atBackend).toHaveLength(STREAMS);
    // Backend connections are accepted in the client order (each client waits for its connect, and the
    // relay connects on accept), so the pairs line up: check by content rather than by order anyway.
    const sentByClients = new Set(await Promise.all(clients.map((c) => c.tx.done)));
    const gotAtBackend = new Set(await Promise.all(atBackend.map((b) => b.rx.done)));
    const sentByBackend = new Set(await Promise.all(atBackend.map((b) => b.tx.done)));
    const gotAtClients = new Set(await Promise.all(clients.map((c) => c.rx.done)));
    expect(sentByClients.size).toBe(STREAMS);
    expect(gotAtBackend).toEqual(sentByClients);
    expect(gotAtClients).toEqual(sentByBackend);
    for (const end of relay.ends) {
      expect(end.sent).toBe(EACH);
      expect(end.rcvd).toBe(EACH);
      expect(['client-close', 'backend-close']).toContain(end.end);
    }
  });

  it('counters read while a transfer runs lie between what one peer wrote and the other received', async () => {
    const TOTAL = 256 << 20;
    const peer: { rx: Receiver | null; tx: Sender | null } = { rx: null, tx: null };
    const backend = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => undefined);
      peer.rx = receive(s);
      peer.tx = send(s, TOTAL / 4, 77);
    });
    backend.listen(0, HOST);
    await once(backend, 'listening');
    track({ close: () => new Promise<void>((r) => backend.close(() => r())) });
    const relay = await spliceHarness((backend.address() as net.AddressInfo).port);
    const c = net.connect({ host: HOST, port: relay.port, allowHalfOpen: true });
    track({ close: async () => void c.destroy() });
    await connected(c, 3000, 'client');
    const atClient = receive(c);
    const tx = send(c, TOTAL, 5);

    let midway = 0;
    let lastSent = 0;
    let lastRcvd = 0;
    // Bounded by the transfer's end (and the test timeout); one sample per loop turn.
    for (let i = 0; i < 100_000 && relay.ends.length === 0; i++) {
      await new Promise((r) => setImmediate(r));
      const h = relay.handles[0];
      if (!h || !peer.rx || !peer.tx) continue;
      const backendGot = peer.rx.bytes;
      const clientGot = atClient.bytes;
      const sent = h.sent();
      const rcvd = h.rcvd();
      const clientWrote = tx.written;
      const backendWrote = peer.tx.written;
      // The relay reads a byte before its receiver gets it, and after its sender wrote it.
      expect(sent).toBeGreaterThanOrEqual(backendGot);
      expect(sent).toBeLessThanOrEqual(clientWrote);
      expect(rcvd).toBeGreaterThanOrEqual(clientGot);
      expect(rcvd).toBeLessThanOrEqual(backendWrote);
      expect(sent).toBeGreaterThanOrEqual(lastSent);
      expect(rcvd).toBeGreaterThanOrEqual(lastRcvd);
      lastSent = sent;
      lastRcvd = rcvd;
      if (sent > 0 && sent < TOTAL) midway++;
    }
    await relay.waitEnds(1, 15_000);
    await within(Promise.all([tx.done, atClient.done, peer.rx!.done, peer.tx!.done]), 5000, 'peers to finish');
    expect(midway).toBeGreaterThan(3);
    const [end] = relay.ends;
    expect(end!.sent).toBe(TOTAL);
    expect(end!.sent).toBe(peer.rx!.bytes);
    expect(end!.rcvd).toBe(TOTAL / 4);
    expect(end!.rcvd).toBe(atClient.bytes);
    expect(relay.handles[0]!.sent()).toBe(TOTAL);
  });
});
