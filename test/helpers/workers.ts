// Helpers for the tests of the worker-thread data plane and of the relay's defects: which worker served a
// connection (from its access-log id), backends that count what they see from their own side, and an
// in-process Runtime started from a real file (so `reload()` re-reads it) with the test hooks on.

import { writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { loadConfigFile } from '../../src/config/pipeline.ts';
import { createLogger } from '../../src/log.ts';
import { Runtime } from '../../src/runtime.ts';
import { connectClient, track, within } from './backends.ts';
import { serve, type Backend } from './health.ts';
import { LogCapture, type LogLine } from './lb.ts';

/**
 * The worker (counter region) that served a connection. Ids interleave by region:
 * id = n * workers + region + 1 (DataPlane.nextId).
 */
export function regionOf(id: number | string, workers = 2): number {
  return (Number(id) - 1) % workers;
}

/** The regions that served the given access-log lines. */
export function regionsOf(conns: readonly LogLine[], workers = 2): Set<number> {
  return new Set(conns.map((l) => regionOf(l.fields.id!, workers)));
}

export interface CountingBackend extends Backend {
  /**
   * Connections it is serving right now, as the backend counts them: from the first byte a client sent
   * until lb's FIN or the close.
   */
  open: number;
  /** The most it ever served at once. */
  most: number;
  /** Bytes it received, and wrote over the connections that have closed. */
  bytesIn: number;
  bytesOut: number;
}

/**
 * A backend that counts the connections it serves at once. A connection counts from its first byte, not
 * from the accept: lb may drop a connect it no longer needs (its client left), and the kernel then
 * still completes the handshake, so such a connection can sit in the accept queue beside the one that
 * took its slot, and one accept loop takes both; it never carries a byte. A connection stops counting
 * at lb's FIN (or the close): lb sends its FIN before it gives the slot back, so a connection served in
 * the freed slot is never counted while the one it replaced still is.
 */
export async function countingBackend(name: string, onSocket: (s: Socket, b: CountingBackend) => void, port = 0): Promise<CountingBackend> {
  let self: CountingBackend | null = null;
  const b = await serve(
    name,
    (s) => {
      const me = self!;
      let state: 'idle' | 'serving' | 'ended' = 'idle';
      const done = (): void => {
        if (state === 'serving') me.open--;
        state = 'ended';
      };
      s.on('data', (c: Buffer) => {
        me.bytesIn += c.length;
        if (state !== 'idle') return;
        state = 'serving';
        me.open++;
        if (me.open > me.most) me.most = me.open;
      });
      s.on('end', done);
      s.on('close', () => {
        done();
        me.bytesOut += s.bytesWritten;
      });
      onSocket(s, me);
    },
    port,
  );
  self = Object.assign(b, { open: 0, most: 0, bytesIn: 0, bytesOut: 0 });
  return self;
}

/** Connects, sends `msg`, waits for the backend's answer and FIN, closes; returns the answer. */
export async function oneRequest(port: number, msg: string, ms = 10_000): Promise<string> {
  const c = await connectClient(port);
  try {
    c.socket.write(msg);
    await within(c.ended, ms, `the answer to ${JSON.stringify(msg)} and its FIN`);
    c.socket.end();
    await within(c.closed, ms, 'the client to close');
    return c.text();
  } finally {
    await c.close();
  }
}

export interface FileLb {
  readonly rt: Runtime;
  readonly logs: LogCapture;
  readonly file: string;
  port(listener?: string): number;
  stop(drainMs?: number): Promise<void>;
}

/**
 * An in-process Runtime started from `file` (written with `text` first), so that `rt.reload()` re-reads
 * it. Registered for cleanup like every helper server (closeAllBackends, called by lb.ts's cleanup()).
 */
export async function startLbFromFile(file: string, text: string): Promise<FileLb> {
  writeFileSync(file, text);
  const r = await loadConfigFile(file, { resolve: 'error' });
  if (!r.ok) throw new Error(`config rejected: ${JSON.stringify(r.diagnostics, null, 2)}`);
  const logs = new LogCapture();
  const rt = new Runtime(r.table, { configFile: file, log: createLogger(r.table.global.logFormat, (line) => logs.push(line)) });
  let stopping: Promise<void> | null = null;
  const lb: FileLb & { close(): Promise<void> } = track({
    rt,
    logs,
    file,
    port: (name = 'web') => {
      const p = rt.port(name);
      if (!p) throw new Error(`no bound listener "${name}"`);
      return p;
    },
    stop: (drainMs = 0) => (stopping ??= within(rt.shutdown(drainMs), 8000, 'the in-process lb to shut down')),
    close: (): Promise<void> => lb.stop(0),
  });
  await within(rt.start(), 10_000, 'the in-process lb to start');
  return lb;
}
