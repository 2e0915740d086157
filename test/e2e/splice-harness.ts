// A minimal relay for the splice tests: accepts on 127.0.0.1:0 with pauseOnConnect (as lb's listener
// does), connects to one backend, and hands both sockets to spliceRelay once the backend is connected.
// What lb adds around it (selection, queue, logs) is not under test here.

import { EventEmitter, once } from 'node:events';
import net, { type AddressInfo, type Socket } from 'node:net';
import { spliceAvailable, spliceRelay, type SpliceHandle, type SpliceResult } from '../../src/proxy/splice.ts';
import { HOST, track, until, within } from '../helpers/backends.ts';

export interface SpliceHarness {
  readonly port: number;
  /** Relays handed to the addon, in accept order. */
  readonly handles: SpliceHandle[];
  /** Ends reported, in the order they came. */
  readonly ends: SpliceResult[];
  /** Resolves when `n` ends have been reported in total (bounded). */
  waitEnds(n: number, ms?: number): Promise<void>;
  /** Resolves with the next end reported (bounded). */
  nextEnd(ms?: number): Promise<SpliceResult>;
  close(): Promise<void>;
}

export async function spliceHarness(backendPort: number, opts: { idleTimeoutMs?: number } = {}): Promise<SpliceHarness> {
  const handles: SpliceHandle[] = [];
  const ends: SpliceResult[] = [];
  const events = new EventEmitter();
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
  server.on('connection', (client: Socket) => {
    client.on('error', () => undefined);
    const backend = net.connect({ host: HOST, port: backendPort, allowHalfOpen: true, noDelay: true });
    backend.pause(); // not read before the hand-over
    backend.on('error', () => client.destroy());
    backend.once('connect', () => {
      const h = spliceRelay(client, backend, { idleTimeoutMs: opts.idleTimeoutMs ?? 0 }, (r) => {
        ends.push(r);
        events.emit('end', r);
      });
      handles.push(h);
    });
  });
  server.listen(0, HOST);
  await within(once(server, 'listening'), 3000, 'the splice harness to listen');
  const harness: SpliceHarness = {
    port: (server.address() as AddressInfo).port,
    handles,
    ends,
    waitEnds: (n, ms = 10_000) => until(() => ends.length >= n, ms, `${n} splice ends (have ${ends.length})`, 5),
    nextEnd: (ms = 5000) => within(once(events, 'end').then(([r]) => r as SpliceResult), ms, 'a splice end'),
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const h of handles) h.abort();
      await within(closed, 3000, 'the splice harness to close');
      await until(() => handles.every((h) => h.ended), 3000, 'every spliced connection to end', 5);
    },
  };
  return track(harness);
}

/**
 * The tests run only where the addon is: without it (no compiler at install) they are skipped with the
 * reason in their title, except under CI, where they run and fail (LB_SPLICE_UNAVAILABLE). A run with
 * LB_SPLICE=off (the JS relay's pass of the suite) skips them everywhere.
 */
const availability = spliceAvailable();
export const spliceSkipped = !availability.ok && (!process.env['CI'] || process.env['LB_SPLICE'] === 'off');
export const spliceTitleNote = availability.ok ? '' : ` (splice unavailable: ${availability.reason})`;
