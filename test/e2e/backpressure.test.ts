// Backpressure: a slow reader on either side must slow the sender down, not make lb buffer the stream.
//
// Observable from outside the data-plane workers: the fast sender must stall well before it is done
// (after lb's one high-water mark per direction and the kernel's socket buffers; without backpressure lb
// would read the whole stream into memory and the sender would never stall), and once the reader wakes up every
// byte arrives intact.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { connectClient, fastSourceServer, slowReaderServer, until, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(cleanup);

const MiB = 1 << 20;

/** The most a kernel setting allows, from /proc (Linux), or `fallback`. */
function sysctlMax(file: string, fallback: number): number {
  try {
    return Number(readFileSync(file, 'utf8').trim().split(/\s+/).at(-1));
  } catch {
    return fallback;
  }
}

/**
 * What the sender may get through before stalling: the socket buffers on the way, each as large as the
 * kernel lets it grow (sender's send buffer, lb's receive buffer, the splice pipe, lb's send buffer, the
 * reader's receive buffer), and 4 MiB for lb's own high-water marks. From this machine's settings: with
 * tcp_rmem's max at 32 MiB (this CI machine) receive buffers alone may hold 64 MiB, and a fixed 40 MiB
 * bound failed once in a full run (the sender got exactly 40 MiB through a relay that did stall).
 */
const STALL_BOUND =
  2 * sysctlMax('/proc/sys/net/ipv4/tcp_rmem', 6 * MiB) + 2 * sysctlMax('/proc/sys/net/ipv4/tcp_wmem', 4 * MiB) + sysctlMax('/proc/sys/fs/pipe-max-size', MiB) + 4 * MiB;
/** Far more than the buffers hold: a relay without backpressure would read it all and never stall. */
const TOTAL = STALL_BOUND + 32 * MiB;

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

describe('backpressure', () => {
  it('a client that does not read: lb stops reading the fast backend instead of buffering the stream', async () => {
    const source = await fastSourceServer('fast', TOTAL);
    const lb = await startLb(webDoc([{ backends: [at(source.port)] }]));
    const c = await connectClient(lb.port(), { read: false });
    c.socket.pause();
    await until(() => lb.listener().state.groups[0]!.backends[0]!.total === 1, 3000, 'the relay to connect');
    const sentBeforeStall = await stalled(() => source.flushed());
    expect(sentBeforeStall).toBeLessThan(STALL_BOUND);

    // The reader wakes up: everything arrives, in order, and lb still never held much.
    const hash = createHash('sha256');
    let bytes = 0;
    c.socket.on('data', (d: Buffer) => {
      bytes += d.length;
      hash.update(d);
    });
    const done = new Promise<void>((r) => c.socket.once('end', () => r()));
    c.socket.resume();
    await within(done, 15_000, 'the download to finish');
    expect(bytes).toBe(TOTAL);
    expect(hash.digest('hex')).toBe(source.sha256);
  });

  it('a backend that does not read: lb stops reading the fast client', async () => {
    const slow = await slowReaderServer('slow');
    const lb = await startLb(webDoc([{ backends: [at(slow.port)] }]));
    const c = await connectClient(lb.port());
    await until(() => lb.listener().state.groups[0]!.backends[0]!.total === 1, 3000, 'the relay to connect');

    // The client writes TOTAL bytes as fast as its socket takes it.
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
    const sentBeforeStall = await stalled(flushed);
    expect(sentBeforeStall).toBeLessThan(STALL_BOUND);

    const [got] = slow.resumeAll();
    const result = await within(got!, 15_000, 'the upload to finish');
    expect(result.bytes).toBe(TOTAL);
    expect(result.sha256).toBe(hash.digest('hex'));
  });
});
