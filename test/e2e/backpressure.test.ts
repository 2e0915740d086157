// Backpressure: a slow reader on either side must slow the sender down, not make lb buffer the stream.
//
// Observable: lb's own user-space buffers for the relay — what it holds for the slow side
// (`writableLength` of the socket towards it) plus what it has read but not handed on (`readableLength` of
// the socket from the fast side). With backpressure this stays around one high-water mark per direction;
// without it, it grows towards the whole 64 MiB. Also the fast sender must stall well before it is done,
// and once the reader wakes up every byte arrives intact.

import { createHash, randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { Relay } from '../../src/proxy/relay.ts';
import { connectClient, fastSourceServer, slowReaderServer, until, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc, type InProcessLb } from '../helpers/lb.ts';

afterEach(cleanup);

const MiB = 1 << 20;
const TOTAL = 64 * MiB;
/** lb's user-space bytes for one relay direction must stay under this (a few high-water marks). */
const LB_BUFFER_BOUND = 1 * MiB;
/** The sender may only get through kernel socket buffers' worth before stalling (tcp_rmem/wmem max). */
const STALL_BOUND = 40 * MiB;

function relayOf(lb: InProcessLb): Relay {
  const live = [...lb.listener().state.live] as Relay[];
  if (live.length !== 1) throw new Error(`expected one relay, found ${live.length}`);
  return live[0]!;
}

/** Waits until `progress()` has not moved for `quietMs` (the sender is stalled); returns its value. */
async function stalled(progress: () => number, quietMs = 250, ms = 8000): Promise<number> {
  let last = -1;
  let since = Date.now();
  await until(
    () => {
      const p = progress();
      if (p !== last) {
        last = p;
        since = Date.now();
        return false;
      }
      return Date.now() - since >= quietMs;
    },
    ms,
    'the sender to stall',
  );
  return last;
}

/** Samples `f` every 10 ms for `ms` and returns the largest value seen. */
async function maxOver(f: () => number, ms: number): Promise<number> {
  let max = f();
  const end = Date.now() + ms;
  while (Date.now() < end) {
    await new Promise((r) => setTimeout(r, 10));
    max = Math.max(max, f());
  }
  return max;
}

describe('backpressure', () => {
  it('a client that does not read: lb stops reading the fast backend instead of buffering 64 MiB', async () => {
    const source = await fastSourceServer('fast', TOTAL);
    const lb = await startLb(webDoc([{ backends: [at(source.port)] }]));
    const c = await connectClient(lb.port(), { read: false });
    c.socket.pause();
    await until(() => lb.listener().state.live.size === 1 && relayOf(lb).connected, 3000, 'the relay to connect');
    const relay = relayOf(lb);
    const lbHeld = (): number => relay.client.writableLength + relay.backend!.readableLength;
    let maxHeld = 0;
    const sampler = setInterval(() => (maxHeld = Math.max(maxHeld, lbHeld())), 5);
    try {
      const sentBeforeStall = await stalled(() => source.flushed());
      maxHeld = Math.max(maxHeld, await maxOver(lbHeld, 300));
      expect(sentBeforeStall).toBeLessThan(STALL_BOUND);
      expect(maxHeld).toBeLessThan(LB_BUFFER_BOUND);
    } finally {
      clearInterval(sampler);
    }

    // The reader wakes up: everything arrives, in order, and lb still never held much.
    const hash = createHash('sha256');
    let bytes = 0;
    c.socket.on('data', (d: Buffer) => {
      bytes += d.length;
      hash.update(d);
      maxHeld = Math.max(maxHeld, lbHeld());
    });
    const done = new Promise<void>((r) => c.socket.once('end', () => r()));
    c.socket.resume();
    await within(done, 15_000, 'the 64 MiB download to finish');
    expect(bytes).toBe(TOTAL);
    expect(hash.digest('hex')).toBe(source.sha256);
    expect(maxHeld).toBeLessThan(LB_BUFFER_BOUND);
  });

  it('a backend that does not read: lb stops reading the fast client', async () => {
    const slow = await slowReaderServer('slow');
    const lb = await startLb(webDoc([{ backends: [at(slow.port)] }]));
    const c = await connectClient(lb.port());
    await until(() => lb.listener().state.live.size === 1 && relayOf(lb).connected, 3000, 'the relay to connect');
    const relay = relayOf(lb);
    const lbHeld = (): number => relay.backend!.writableLength + relay.client.readableLength;

    // The client writes 64 MiB as fast as its socket takes it.
    const block = randomBytes(64 * 1024);
    const hash = createHash('sha256');
    let queued = 0;
    const pump = (): void => {
      while (queued < TOTAL) {
        queued += block.length;
        hash.update(block);
        if (!c.socket.write(block)) {
          c.socket.once('drain', pump);
          return;
        }
      }
      c.socket.end();
    };
    pump();
    const flushed = (): number => c.socket.bytesWritten - c.socket.writableLength;
    let maxHeld = 0;
    const sampler = setInterval(() => (maxHeld = Math.max(maxHeld, lbHeld())), 5);
    try {
      const sentBeforeStall = await stalled(flushed);
      maxHeld = Math.max(maxHeld, await maxOver(lbHeld, 300));
      expect(sentBeforeStall).toBeLessThan(STALL_BOUND);
      expect(maxHeld).toBeLessThan(LB_BUFFER_BOUND);
    } finally {
      clearInterval(sampler);
    }

    const [got] = slow.resumeAll();
    const result = await within(got!, 15_000, 'the 64 MiB upload to finish');
    expect(result.bytes).toBe(TOTAL);
    expect(result.sha256).toBe(hash.digest('hex'));
  });
});
